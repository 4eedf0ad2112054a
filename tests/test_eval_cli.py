"""``gpt-tickets eval``, its Python API and the ``evaluate`` module, on tiny GPT-2s saved to disk, offline.

The processes launched here (bad inputs, the 2-process run) start together in one module fixture: each costs
seconds of imports, and the machine has two cores to overlap them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, ViTConfig

from gpt_tickets.cli import main
from gpt_tickets.config import ConfigError, DataConfig, RunConfig
from gpt_tickets.data import load_files, load_pretrained_tokenizer, load_text_splits, tokenize_stream, train_tokenizer
from gpt_tickets.eval.models import TextSource, evaluate_models, evaluate_texts
from gpt_tickets.eval.perplexity import METRIC_PATH, perplexity, perplexity_reference
from gpt_tickets.models.families import prunable_weights
from gpt_tickets.sparsity.apply import MaskedParameters
from gpt_tickets.sparsity.masks import Mask
from gpt_tickets.sparsity.select import magnitude_prune
from gpt_tickets.tickets.export import ticket_config, write_weights
from gpt_tickets.tickets.format import TICKET_CONFIG_FILE
from tests.test_load_ticket import BAD_TICKETS, ENORMOUS_CONFIGS, NEEDS_THE_WEIGHTS

CONTEXT = 64


def _write_jsonl(path: Path, texts: list[str]) -> None:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("eval")


@pytest.fixture(scope="module")
def paths(tmp: Path) -> dict[str, str]:
    """A dense model, a ticket-like folder pruned from it, a non-causal model, and texts: .txt, .jsonl, a dataset."""
    train, validation = load_text_splits(DataConfig())
    tokenizer = train_tokenizer(train, 300)
    eos = tokenizer.eos_token_id
    config = GPT2Config(
        n_layer=2, n_embd=32, n_head=2, n_positions=CONTEXT, vocab_size=300, bos_token_id=eos, eos_token_id=eos
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    model.save_pretrained(tmp / "dense")
    tokenizer.save_pretrained(tmp / "dense")
    mask = Mask.ones_like(model, prunable_weights(model, ["attention", "mlp"]))
    mask = magnitude_prune(dict(model.named_parameters()), mask, 0.6, "global")
    MaskedParameters(model, mask).zero_weights()
    write_weights(model, mask, tmp / "ticket", "dense")
    tokenizer.save_pretrained(tmp / "ticket")
    (tmp / "ticket" / TICKET_CONFIG_FILE).write_text(
        json.dumps(ticket_config(RunConfig(), mask, "gpt2", "dense").to_dict())
    )
    shutil.copytree(tmp / "ticket", tmp / "bad_ticket")
    config = json.loads((tmp / "bad_ticket" / "config.json").read_text())
    (tmp / "bad_ticket" / "config.json").write_text(json.dumps({**config, "n_layer": 3}))
    ViTConfig().save_pretrained(tmp / "vit")

    text = "\n\n".join(validation)[:4000]
    (tmp / "eval.txt").write_text(text)
    _write_jsonl(tmp / "eval.jsonl", [text[:2000], "", text[2000:]])
    (tmp / "dataset").mkdir()
    _write_jsonl(tmp / "dataset" / "validation.jsonl", [text])
    (tmp / "empty.txt").write_text("")
    (tmp / "short.txt").write_text("a")
    names = {"text": "eval.txt", "jsonl": "eval.jsonl", "empty": "empty.txt", "short": "short.txt"}
    names |= {
        "missing": "no-such-model",
        **{name: name for name in ("dense", "ticket", "bad_ticket", "vit", "dataset")},
    }
    return {key: str(tmp / name) for key, name in names.items()}


# One clear line, exit code 2, no traceback: (argv template, fragment the error line must hold).
BAD_INPUTS = {
    "missing_model": (["--model", "{missing}", "--files", "{text}"], "model '{missing}' cannot be loaded"),
    "not_causal_lm": (["--model", "{vit}", "--files", "{text}"], "is a 'vit' model, not a causal LM"),
    "damaged_ticket": (
        ["--model", "{dense}", "{bad_ticket}", "--files", "{text}"],
        "model '{bad_ticket}' is refused: config.json declares num_hidden_layers=3, model.safetensors holds the "
        "weights of 2 layers",
    ),
    "missing_dataset": (
        ["--model", "{dense}", "--dataset", "no-such-org/no-such-dataset", "--dataset-config", "raw"],
        "cannot load dataset 'no-such-org/no-such-dataset' (config 'raw', split 'test')",
    ),
    "empty_text": (["--model", "{dense}", "--files", "{empty}"], "contains no text"),
    "one_token": (["--model", "{dense}", "--files", "{short}"], "has 1 tokens; perplexity needs at least 2"),
    "stride_above_max_length": (
        ["--model", "{dense}", "--files", "{text}", "--max-length", "16", "--stride", "17"],
        "stride=17 is not allowed; it must be in 1..max_length=16",
    ),
    "stride_zero": (["--model", "{dense}", "--files", "{text}", "--stride", "0"], "stride=0 is not allowed"),
    "stride_negative": (["--model", "{dense}", "--files", "{text}", "--stride", "-4"], "stride=-4 is not allowed"),
    "max_length_above_context": (
        ["--model", "{dense}", "--files", "{text}", "--max-length", "65"],
        f"max_length=65 exceeds the context of model '{{dense}}'; choose 2..{CONTEXT} tokens",
    ),
}
TWO_PROCESS_ARGS = ["--model", "{dense}", "{ticket}", "--files", "{text}", "--stride", "48", "--batch-size", "3"]


def _fill(args: list[str], paths: dict[str, str]) -> list[str]:
    return [arg.format_map(paths) for arg in args]


@pytest.fixture(scope="module")
def launched(paths: dict[str, str]) -> dict[str, subprocess.CompletedProcess[str]]:
    """Every subprocess of this module, started together and waited for."""
    cli = [sys.executable, "-m", "gpt_tickets.cli", "eval"]
    # torch.distributed.run, not `accelerate launch --cpu --num_processes 2` (which silently runs one process).
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]
    two = [*torchrun, "tests.cli_in_process_group", "eval", "--json", *_fill(TWO_PROCESS_ARGS, paths)]
    commands = {"two_processes": two}
    commands |= {name: cli + _fill(args, paths) for name, (args, _) in BAD_INPUTS.items()}
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "env": env}
    # Own process groups: a hung launcher is ended together with its workers.
    procs = {name: subprocess.Popen(cmd, start_new_session=True, **pipes) for name, cmd in commands.items()}
    done = {}
    for name, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return done


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["eval", *argv]) == 0
    return capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------- results


def test_json_equals_the_function_and_the_reference(paths: dict[str, str], capsys: pytest.CaptureFixture) -> None:
    out = json.loads(_run(["--model", paths["dense"], "--files", paths["text"], "--stride", "48", "--json"], capsys))
    (result,) = out["results"]
    assert out["num_processes"] == result["num_processes"] == 1
    assert out["dataset"]["files"] == [paths["text"]]
    assert (result["max_length"], result["stride"], result["batch_size"], result["sparsity"]) == (CONTEXT, 48, 8, None)

    model = GPT2LMHeadModel.from_pretrained(paths["dense"])
    tokenizer = load_pretrained_tokenizer(paths["dense"])
    ids = tokenize_stream(load_files([paths["text"]]), tokenizer)
    reference = perplexity_reference(model, ids, CONTEXT, 48)
    assert result["scored_tokens"] == reference.scored_tokens == ids.numel() - 1
    assert result["perplexity"] == pytest.approx(reference.perplexity, rel=1e-5)
    assert result["nll"] == pytest.approx(reference.nll, rel=1e-5)
    assert result["perplexity"] == perplexity(model, ids, CONTEXT, 48).perplexity  # the very same computation


def test_table_shows_each_model_and_the_ticket_sparsity(paths: dict[str, str], capsys: pytest.CaptureFixture) -> None:
    out = _run(["--model", paths["dense"], paths["ticket"], "--files", paths["text"]], capsys)
    sparsity = json.loads(Path(paths["ticket"], TICKET_CONFIG_FILE).read_text())["sparsity"]
    assert out.startswith(f"perplexity on {paths['text']}, 1 process(es), ")
    assert f"{torch.get_num_threads()} thread" in out.splitlines()[0]  # the intra-op threads, logged
    lines = out.splitlines()
    header = [cell.strip() for cell in lines[2].strip("|").split("|")]
    assert header == [
        "model", "perplexity", "mean NLL", "scored tokens", "tokens/s", "max length", "stride",
        "sparsity", "attention", "MLP",
    ]  # fmt: skip
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[4:6])}
    assert rows[paths["dense"]][5:] == [str(CONTEXT), str(CONTEXT), "-", "-", "-"]
    expected = [f"{sparsity[k]:.1%}" for k in ("overall", "attention", "mlp")]
    assert rows[paths["ticket"]][7:] == expected and 0.55 < sparsity["overall"] < 0.65
    assert rows[paths["ticket"]][1] != rows[paths["dense"]][1]  # pruning changed the model


def test_sources_agree_and_api_matches_cli(paths: dict[str, str], capsys: pytest.CaptureFixture) -> None:
    """The same text as .txt, as .jsonl rows (joined back with blank lines) and as a dataset split."""
    common = ["--model", paths["ticket"], "--max-length", "32", "--stride", "16", "--json"]
    from_txt = json.loads(_run([*common, "--files", paths["text"]], capsys))["results"][0]
    text = Path(paths["text"]).read_text()
    from_jsonl = json.loads(_run([*common, "--files", paths["jsonl"]], capsys))["results"][0]
    from_split = json.loads(_run([*common, "--dataset", paths["dataset"], "--split", "validation"], capsys))
    assert from_split["dataset"]["dataset"] == paths["dataset"]
    api = evaluate_models([paths["ticket"]], TextSource(files=[paths["text"]]), 32, 16)[0]
    in_memory = evaluate_texts(paths["ticket"], [text], max_length=32, stride=16)
    assert from_txt["perplexity"] == from_split["results"][0]["perplexity"] == api.perplexity == in_memory.perplexity
    # the jsonl holds the text split in two around an empty row: its rows are joined with blank lines, empty row kept
    rows = [json.loads(line)["text"] for line in Path(paths["jsonl"]).read_text().splitlines()]
    joined = evaluate_texts(paths["ticket"], ["\n\n".join(rows)], max_length=32, stride=16)
    assert rows[1] == "" and "\n\n".join(rows) != text
    assert (from_jsonl["perplexity"], from_jsonl["scored_tokens"]) == (joined.perplexity, joined.scored_tokens)
    assert from_jsonl["scored_tokens"] > from_txt["scored_tokens"] == api.scored_tokens


def test_save_dir_writes_evaluate_json(paths: dict[str, str], tmp: Path, capsys: pytest.CaptureFixture) -> None:
    save_dir = tmp / "saved"
    argv = ["--model", paths["dense"], "--files", paths["text"], "--json", "--save-dir", str(save_dir)]
    printed = json.loads(_run(argv, capsys))
    (saved_file,) = save_dir.glob("perplexity-*.json")
    saved = json.loads(saved_file.read_text())
    assert saved["results"] == printed["results"] and saved["dataset"] == printed["dataset"]
    assert saved["_evaluate_version"] and saved["_timestamp"]  # what evaluate.save adds


def test_evaluate_module_loads_offline_and_matches(paths: dict[str, str]) -> None:
    import evaluate

    assert os.environ["HF_EVALUATE_OFFLINE"] == "1"
    metric = evaluate.load(METRIC_PATH)
    texts = Path(paths["text"]).read_text().split("\n\n")
    got = metric.compute(predictions=texts, model_id=paths["ticket"], max_length=48, stride=24, batch_size=5)
    want = evaluate_texts(paths["ticket"], texts, max_length=48, stride=24)
    assert got["perplexity"] == pytest.approx(want.perplexity, rel=1e-6)
    assert (got["scored_tokens"], got["max_length"], got["stride"]) == (want.scored_tokens, 48, 24)
    assert want.sparsity is not None and got["sparsity"] == want.sparsity
    # evaluate imported a copy from its modules cache, not the package file: the copy reached gpt_tickets by name
    assert not Path(sys.modules[type(metric).__module__].__file__).is_relative_to(Path(METRIC_PATH))


def test_api_refuses_bad_input_with_config_error(paths: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="batch_size=0"):
        evaluate_texts(paths["dense"], ["some text"], batch_size=0)
    for neither_or_both in (TextSource, lambda: TextSource(dataset="wikitext", files=["a.txt"])):
        with pytest.raises(ConfigError, match="exactly one text source"):
            neither_or_both()
    # a folder whose tokenizer (300 ids) does not belong to its weights (100 ids): refused, not an IndexError
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=1, n_positions=16, vocab_size=100)).save_pretrained(tmp_path)
    load_pretrained_tokenizer(paths["dense"]).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="beyond the model's vocabulary of 100"):
        evaluate_texts(str(tmp_path), [Path(paths["text"]).read_text()])


# ----------------------------------------------------------------------------------------------- processes


def test_two_processes_equal_one(
    paths: dict[str, str], launched: dict[str, subprocess.CompletedProcess[str]], capsys: pytest.CaptureFixture
) -> None:
    run = launched["two_processes"]
    assert run.returncode == 0, run.stderr[-3000:]
    # Each worker ended the process group its command started, before interpreter exit (gloo aborts otherwise).
    assert run.stderr.count("process group after main: ended") == 2, run.stderr[-3000:]
    two = json.loads(run.stdout)  # only the main process printed: a second JSON document would not parse
    one = json.loads(_run(["--json", *_fill(TWO_PROCESS_ARGS, paths)], capsys))
    assert two["num_processes"] == 2 and one["num_processes"] == 1
    for a, b in zip(two["results"], one["results"], strict=True):
        assert a["num_processes"] == 2
        assert a["scored_tokens"] == b["scored_tokens"]
        assert abs(a["perplexity"] - b["perplexity"]) <= 1e-5 * b["perplexity"]


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line(
    case: str, paths: dict[str, str], launched: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    run = launched[case]
    expected = BAD_INPUTS[case][1].format_map(paths)
    assert run.returncode == 2, run.stderr[-3000:]
    assert "Traceback" not in run.stderr and run.stdout == ""
    errors = [line for line in run.stderr.splitlines() if line.startswith("gpt-tickets: error: ")]
    assert len(errors) == 1 and run.stderr.rstrip().endswith(errors[0])  # the message is the last line, whole
    assert expected in errors[0]


# ----------------------------------------------------------------------------------------------------- tickets


def _eval_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    """(the error line, all of stderr) of a refused eval: exit code 2, nothing on stdout, the error line last."""
    assert main(["eval", *argv]) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("gpt-tickets: error: ")]
    assert captured.out == "" and "Traceback" not in captured.err
    assert len(errors) == 1 and captured.err.rstrip().endswith(errors[0])
    return errors[0], captured.err


@pytest.fixture
def micro_ticket(micro_run: Path, tmp_path: Path) -> Path:
    """A private copy of the micro run's ticket (dense and compact weights, its tokenizer), free to damage."""
    return Path(shutil.copytree(micro_run / "ticket", tmp_path / "ticket"))


@pytest.mark.parametrize("case, damage, message", BAD_TICKETS, ids=[b[0] for b in BAD_TICKETS])
def test_eval_refuses_every_ticket_load_ticket_refuses(
    micro_ticket: Path, paths: dict[str, str], capsys: pytest.CaptureFixture, case: str, damage, message: str
) -> None:
    damage(micro_ticket)
    error, stderr = _eval_error(["--model", str(micro_ticket), "--files", paths["text"]], capsys)
    assert error.startswith(f"gpt-tickets: error: model {str(micro_ticket)!r} is refused: ") and message in error
    if case not in NEEDS_THE_WEIGHTS:
        assert stderr == error + "\n"  # refused from the headers: no weights were loaded (no progress bar)


def test_eval_scores_the_intact_micro_ticket(
    micro_ticket: Path, paths: dict[str, str], capsys: pytest.CaptureFixture
) -> None:
    (result,) = json.loads(_run(["--model", str(micro_ticket), "--files", paths["text"], "--json"], capsys))["results"]
    assert result["sparsity"] == json.loads((micro_ticket / TICKET_CONFIG_FILE).read_text())["sparsity"]


@pytest.mark.parametrize("case", sorted(ENORMOUS_CONFIGS))
def test_eval_refuses_an_enormous_config_in_well_under_a_second(
    micro_ticket: Path, paths: dict[str, str], capsys: pytest.CaptureFixture, case: str
) -> None:
    changes, message = ENORMOUS_CONFIGS[case]
    config = json.loads((micro_ticket / "config.json").read_text())
    (micro_ticket / "config.json").write_text(json.dumps({**config, **changes}))
    start = time.perf_counter()
    error, _ = _eval_error(["--model", str(micro_ticket), "--files", paths["text"]], capsys)
    assert time.perf_counter() - start < 1.0 and message in error


@pytest.mark.parametrize("kind", ["dense", "ticket"])
def test_eval_refuses_a_shard_index_that_points_outside_the_folder(
    kind: str, paths: dict[str, str], micro_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    source = Path(paths["dense"]) if kind == "dense" else micro_run / "ticket"
    folder = Path(shutil.copytree(source, tmp_path / "model"))
    (folder / "model.safetensors").rename(tmp_path / "outside.safetensors")
    index = {"metadata": {}, "weight_map": {"transformer.wte.weight": "../outside.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    error, _ = _eval_error(["--model", str(folder), "--files", paths["text"]], capsys)
    assert "names the shard '../outside.safetensors', which is not a plain file name" in error
