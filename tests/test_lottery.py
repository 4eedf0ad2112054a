"""The whole ticket loop on a micro config: invariants of masks, rewinding, saving and export."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from gpt_tickets import lottery
from gpt_tickets.config import load_config
from gpt_tickets.data import load_text_splits, tokenize_stream
from gpt_tickets.errors import ConfigError
from gpt_tickets.eval.perplexity import perplexity
from gpt_tickets.sparsity.masks import Mask
from gpt_tickets.tickets.encoding import load_packed_masks
from gpt_tickets.train.trainer import Trainer

from .conftest import error_lines, table_rows


@pytest.fixture
def observed(monkeypatch):
    """Wrap Trainer.train to record, per call, the weights it starts from and those at every step."""
    calls = []
    original = Trainer.train

    def train(self, masked, on_step=None, desc="train", start_step=0, **data_and_schedule):
        plain = self.accelerator.unwrap_model(self.model)
        call = {
            "desc": desc,
            "start": {n: p.detach().clone() for n, p in plain.named_parameters()},
            "leaks": 0,
            "at_step": {},
        }
        calls.append(call)

        def watch(step, loss):
            call["leaks"] += sum(int(p[m == 0].count_nonzero()) for p, m in masked.pairs)
            call["at_step"][step] = {n: p.detach().clone() for n, p in plain.named_parameters()}
            optimizer = self.optimizer.optimizer
            for p, m in masked.pairs:  # Adam moments of pruned weights stay exactly zero
                state = optimizer.state[p]
                call["leaks"] += int(state["exp_avg"][m == 0].count_nonzero())
                call["leaks"] += int(state["exp_avg_sq"][m == 0].count_nonzero())
            if on_step is not None:
                on_step(step, loss)

        call["outcome"] = original(self, masked, on_step=watch, desc=desc, start_step=start_step, **data_and_schedule)
        return call["outcome"]

    monkeypatch.setattr(Trainer, "train", train)
    return calls


def test_micro_run_invariants(micro, observed):
    cfg = load_config(None, micro)
    summary = lottery.find_ticket(cfg)
    run = lottery.RunDir(cfg.output_dir)

    # sparsity per round is exactly 1-(1-p)^r (p = 0.5 on an even count: no rounding)
    assert [r.sparsity for r in summary.rounds] == [0.0, 0.5, 0.75]
    assert summary.complete and [b.branch for b in summary.branches] == ["random_reinit", "random_prune"]
    assert [c["desc"] for c in observed] == [
        "round 0",
        "round 1",
        "round 2",
        "branch random_reinit round_2-seed_1",
        "branch random_prune round_2-seed_1",
    ]

    # pruned weights never become non-zero, and Adam keeps no moments for them
    assert all(c["leaks"] == 0 for c in observed)
    for r in (1, 2):
        mask = Mask.load(run.round(r) / "mask.safetensors")
        assert 1 - mask.num_remaining() / mask.numel() == summary.rounds[r].sparsity

    # the rewind point is the step-k weights of dense training, bitwise
    rewind = load_file(str(run.rewind))
    step_k = observed[0]["at_step"][cfg.prune.rewind_step]
    assert all(torch.equal(rewind[n], step_k[n]) for n in rewind)

    # every later round starts from them (all parameters, not only the prunable ones), bitwise
    for r in (1, 2):
        assert all(torch.equal(observed[r]["start"][n], rewind[n]) for n in rewind)

    # the ticket: plain transformers loads it, zeros exactly where the masks are 0, same perplexity as reported
    model = AutoModelForCausalLM.from_pretrained(run.ticket)
    tokenizer = AutoTokenizer.from_pretrained(run.ticket)
    saved_masks = load_packed_masks(run.ticket / "ticket_masks.safetensors")
    final_mask = Mask.load(run.round(2) / "mask.safetensors")
    assert set(saved_masks) == set(final_mask)
    saved_weights = load_file(str(run.ticket / "model.safetensors"))
    for name, m in saved_masks.items():
        assert torch.equal(m, final_mask[name])
        assert not model.get_parameter(name)[~m].any()
        assert not saved_weights[name][~m].any()
        assert model.get_parameter(name)[m].count_nonzero() == m.sum()  # survivors are really trained values
    _, val_texts = load_text_splits(cfg.data)
    ids = tokenize_stream(val_texts, tokenizer)[: cfg.data.max_validation_tokens]
    ppl = perplexity(model, ids, max_length=cfg.data.block_size, batch_size=cfg.eval.batch_size)
    assert ppl.perplexity == pytest.approx(summary.rounds[-1].val_perplexity, rel=1e-5)

    ticket_cfg = json.loads((run.ticket / "ticket_config.json").read_text())
    assert ticket_cfg["sparsity"]["overall"] == 0.75 and ticket_cfg["rounds"] == 2
    assert ["2", "imp", "75.0%"] == table_rows((run.ticket / "README.md").read_text())[3][:3]
    results = json.loads(run.results.read_text())
    assert results["complete"] and len(results["rounds"]) == 3


def test_same_config_same_results_and_resume_skips_finished_rounds(micro, observed):
    cfg = load_config(None, micro)
    first = lottery.find_ticket(cfg)
    again = lottery.find_ticket(cfg)  # every phase's output exists: nothing is retrained
    assert again == first and len(observed) == 5

    other = load_config(None, [*micro[:-1], micro[-1] + "-fresh"])
    fresh = lottery.find_ticket(other)

    def strip(summary):
        return [{k: v for k, v in r.to_dict().items() if k != "wall_seconds"} for r in summary.phases]

    assert strip(fresh) == strip(first)

    changed = load_config(None, [*micro, "--prune.fraction", "0.3"])
    with pytest.raises(ConfigError, match="holds a run of a different config"):
        lottery.find_ticket(changed)


def test_a_directory_belongs_to_its_config_from_the_first_write(micro):
    cfg = load_config(None, micro)
    first = lottery.RunDir(cfg.output_dir)
    first.claim(cfg)  # e.g. a run killed before round 0 ended: only config.yaml is written
    first.unlock()
    for change in (["--prune.fraction", "0.3"], ["--seed", "1"]):
        with pytest.raises(ConfigError, match="holds a run of a different config"):
            lottery.RunDir(cfg.output_dir).claim(load_config(None, [*micro, *change]))
    again = lottery.RunDir(cfg.output_dir)
    again.claim(cfg)  # the same config resumes
    again.unlock()


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "gpt_tickets.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_cli_micro_end_to_end(micro, tmp_path):
    result = run_cli("find", *micro)
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout)
    assert [row[:3] for row in rows[1:]] == [
        ["0", "dense", "0.0%"],
        ["1", "imp", "50.0%"],
        ["2", "imp", "75.0%"],
        ["2", "random_reinit (seed 1)", "75.0%"],
        ["2", "random_prune (seed 1)", "75.0%"],
    ]
    assert (tmp_path / "run" / "ticket" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prune.roudns", "3"], "unknown config key prune.roudns; did you mean prune.rounds?"),
        (["--prune.fraction", "1.5"], "prune.fraction=1.5 must be in (0, 1)"),
        (["--prune.rounds", "0"], "prune.rounds=0 must be >= 1"),
        (["--prune.rewind_step", "99"], "prune.rewind_step=99 is beyond train.steps=8"),
        (
            ["--data.source", "files", "--data.train_files", "[missing.txt]", "--data.validation_files", "[v.txt]"],
            "data file 'missing.txt' does not exist",
        ),
        (
            ["--model.init", "pretrained", "--model.name_or_path", "no-such-org/no-such-model"],
            "model.name_or_path='no-such-org/no-such-model' cannot be loaded",
        ),
        (["--config", "nope.yaml"], "config file 'nope.yaml' does not exist"),
        (["--data.block_size", "64"], "data.block_size=64 exceeds the model's context of 32 tokens"),
        (["--model.config", "{n_layers: 2}"], "unknown key model.config.n_layers for model_type gpt2; did you mean"),
        (["--model.model_type", "gtp2"], "model.model_type='gtp2' is not a transformers model type; did you mean"),
        (["--controls", "[random_pruning]"], "unknown branch 'random_pruning'; did you mean random_prune? allowed:"),
        (["--model.config", "{n_layer: 2, n_embd: 30, n_head: 4, n_positions: 32}"], "must be divisible by num_heads"),
        (["--model.config", "{n_layer: 2, n_embd: 32, n_head: 0, n_positions: 32}"], "transformers cannot build it"),
        (["--train.batch_size", "100000"], "fewer than one global batch of train.batch_size=100000"),
        (["--seed", "18446744073709551616"], "seed=18446744073709551616 is not allowed; choose 0..4294967295"),
        (["--train.lr", "inf"], "train.lr=inf must be a finite number > 0"),
        (["--train.max_grad_norm", "0"], "train.max_grad_norm=0.0 must be a finite number > 0, or null"),
        (["--config", "bomb.yaml"], "config file 'bomb.yaml' uses the YAML alias *a; run configs do not allow"),
        (["--config", "truncated.yaml"], "config file 'truncated.yaml' is not valid YAML"),
        (["--output_dir", "a_file"], "output_dir 'a_file' is a file; choose a directory"),
    ],
)
def test_cli_bad_input_one_line_exit_2_nothing_written(micro, tmp_path, args, message):
    (tmp_path / "bomb.yaml").write_text("a: &a [1, 1, 1]\nb: &b [*a, *a, *a]\nc: [*b, *b, *b]\n")
    (tmp_path / "truncated.yaml").write_text("prune:\n  rounds: [1,\n")
    (tmp_path / "a_file").write_text("not a directory")
    result = run_cli("find", *micro, *args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(error_lines(result.stderr)) == 1
    assert not (tmp_path / "run").exists()


def test_pretrained_init_rewinds_to_the_pretrained_weights(micro, tmp_path):
    """init=pretrained from a local folder (as a Hub id would be cached): k=0 rewinds to those very weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from gpt_tickets.data import train_tokenizer

    _, val_texts = load_text_splits(load_config(None).data)
    tokenizer = train_tokenizer(val_texts, 300)
    torch.manual_seed(1)
    base = GPT2LMHeadModel(
        GPT2Config(
            n_layer=2,
            n_embd=32,
            n_head=2,
            n_positions=32,
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")

    cfg = load_config(
        None,
        [
            *micro,
            "--model.init",
            "pretrained",
            "--model.name_or_path",
            str(tmp_path / "base"),
            "--prune.rewind_step",
            "0",
            "--prune.rounds",
            "1",
            "--controls",
            "[]",
        ],
    )
    summary = lottery.find_ticket(cfg)
    rewind = load_file(str(lottery.RunDir(cfg.output_dir).rewind))
    assert all(torch.equal(rewind[n], p) for n, p in base.named_parameters())
    ticket = lottery.RunDir(cfg.output_dir).ticket
    assert json.loads((ticket / "ticket_config.json").read_text())["base_model"] == str(tmp_path / "base")
    assert "base_model:" not in (ticket / "README.md").read_text()  # the card's base_model is for Hub ids only
    assert summary.rounds[1].sparsity == 0.5


def test_accelerate_launch_runs_the_same_code_without_any_accelerate_config(micro, tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "find_ticket.py"
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf-home")}  # no accelerate config file can be found there
    result = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", str(script), *micro],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert ["2", "imp", "75.0%"] in [row[:3] for row in table_rows(result.stdout)]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["complete"]


def test_tensorboard_tracking_logs_loss_lr_sparsity_and_perplexity(micro, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = load_config(None, [*micro, "--track.log_with", "[tensorboard]", "--track.log_every", "2"])
    summary = lottery.find_ticket(cfg)
    accumulator = EventAccumulator(str(tmp_path / "run" / cfg.track.project_name))  # hparams go to a subfolder
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    assert {"train/loss", "train/lr", "round/sparsity", "round/val_perplexity"} <= tags
    logged = [e.value for e in accumulator.Scalars("round/val_perplexity")]
    expected = [r.val_perplexity for r in summary.phases]
    assert logged == pytest.approx(expected, rel=1e-6)
    assert len(accumulator.Scalars("train/loss")) == len(summary.phases) * cfg.train.steps // 2


def test_bf16_mixed_precision_keeps_masks_exact(micro, tmp_path):
    result = run_cli("find", *micro, "--train.mixed_precision", "bf16")  # a subprocess: its own Accelerator state
    assert result.returncode == 0, result.stderr
    run = lottery.RunDir(tmp_path / "run")
    masks = load_packed_masks(run.ticket / "ticket_masks.safetensors")
    for path in (run.ticket / "model.safetensors", run.round(2) / "trained.safetensors"):
        saved = load_file(str(path))
        assert all(not saved[name][~m].any() and saved[name][m].count_nonzero() == m.sum() for name, m in masks.items())
    assert json.loads(run.results.read_text())["rounds"][2]["sparsity"] == 0.75


def test_a_redirected_run_log_has_no_bars_and_no_harmless_warnings(micro, tmp_path):
    """stderr is a file here, as in a cluster job's log: one result line per phase on stdout, nothing on stderr."""
    result = run_cli("find", *micro, "--train.checkpoint_every", "4")  # checkpoints: accelerate's tied-weight warning
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no progress bars, no "Removed shared tensor", no "loss_type=None"
    phases = [line for line in result.stdout.splitlines() if "val perplexity" in line]
    assert [line.split(":")[0] for line in phases] == [
        "round 0",
        "round 1",
        "round 2",
        "branch random_reinit round_2-seed_1",
        "branch random_prune round_2-seed_1",
    ]
