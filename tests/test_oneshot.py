"""One-shot baselines (oneshot_magnitude, wanda): Wanda's score by hand, the one-shot selection at each round's
count per pool, evaluation without training, fine-tuning segments, controls at several rounds, bad input."""

import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

from gpt_tickets.cli import main
from gpt_tickets.config import ConfigError, load_config
from gpt_tickets.config.schema import PruneConfig
from gpt_tickets.eval.perplexity import perplexity
from gpt_tickets.lottery import RunDir, find_ticket, run_branch
from gpt_tickets.lottery.branches import FinishedRound, get_branch
from gpt_tickets.lottery.branches.oneshot import oneshot_mask
from gpt_tickets.lottery.branches.runner import control_params
from gpt_tickets.lottery.context import RunContext, accelerator_for, first_blocks
from gpt_tickets.lottery.results import BranchResult, RunResults
from gpt_tickets.models.params import load_parameters
from gpt_tickets.sparsity.calibration import input_norms
from gpt_tickets.sparsity.masks import Mask
from gpt_tickets.sparsity.report import weight_group
from gpt_tickets.sparsity.scores import magnitude, wanda
from gpt_tickets.sparsity.select import group_pools, prune, prune_pools, prune_rows
from gpt_tickets.train.trainer import Trainer

from .conftest import MICRO, error_lines
from .test_branches import tree

WANDA_KEY = "finetune_0-calibration_blocks_128"  # after round_<r>-seed_<s>-: the defaults
WANDA_ROW_KEY = "finetune_0-compare_row-calibration_blocks_128"
MASK = "mask.safetensors"

# ------------------------------------------------------------------------------------ Wanda's score by hand


class TwoLayouts(nn.Module):
    """Token ids -> known feature rows -> an nn.Linear ([out, in]) and a Conv1D ([in, out]) reading the same input."""

    def __init__(self, rows: torch.Tensor) -> None:
        super().__init__()
        self.embed = nn.Embedding.from_pretrained(rows)
        self.linear = nn.Linear(2, 3, bias=False)
        self.conv = Conv1D(3, 2)

    def forward(self, input_ids: torch.Tensor, **_: object) -> torch.Tensor:
        x = self.embed(input_ids)
        return self.linear(x) + self.conv(x)


def test_wanda_scores_equal_a_hand_computation_on_a_linear_and_a_conv1d():
    """Tokens 0..3 carry features (1, 2), (2, 3), (2, 6), (4, 0): over all four, ||X_0|| = sqrt(1+4+4+16) = 5 and
    ||X_1|| = sqrt(4+9+36+0) = 7, accumulated over two forward passes of one block each."""
    model = TwoLayouts(torch.tensor([[1.0, 2.0], [2.0, 3.0], [2.0, 6.0], [4.0, 0.0]])).train()
    norms = input_norms(model, ["linear.weight", "conv.weight"], torch.tensor([[0, 1], [2, 3]]), batch_size=1)
    assert torch.equal(norms["linear.weight"], torch.tensor([[5.0, 7.0]]))  # [1, in]: input features are columns
    assert torch.equal(norms["conv.weight"], torch.tensor([[5.0], [7.0]]))  # [in, 1]: input features are rows
    score = wanda(norms)
    linear = torch.tensor([[1.0, -2.0], [0.5, 3.0], [-4.0, 0.0]])
    assert torch.equal(score("linear.weight", linear), torch.tensor([[5.0, 14.0], [2.5, 21.0], [20.0, 0.0]]))
    conv = linear.T.contiguous()  # the same matrix in Conv1D's layout scores the same, transposed
    assert torch.equal(score("conv.weight", conv), torch.tensor([[5.0, 2.5, 20.0], [14.0, 21.0, 0.0]]))
    assert model.training and not model.linear._forward_hooks and not model.conv._forward_hooks


def test_calibration_removes_its_hooks_when_the_pass_fails():
    model = TwoLayouts(torch.ones(4, 2))
    with pytest.raises(IndexError):
        input_norms(model, ["linear.weight", "conv.weight"], torch.tensor([[0, 9]]), batch_size=1)  # id 9: no row
    assert not model.linear._forward_hooks and not model.conv._forward_hooks
    with pytest.raises(ValueError, match="embed.weight belongs to a Embedding"):
        input_norms(model, ["linear.weight", "embed.weight"], torch.tensor([[0, 1]]), batch_size=1)
    assert not model.linear._forward_hooks


def test_calibration_blocks_are_round_0s_first_batches(micro):
    """``first_blocks`` is the start of the data stream a round's trainer draws its first batches from."""
    cfg = load_config(None, micro)
    blocks = torch.arange(40 * 4).view(40, 4)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, n_positions=4, vocab_size=200))
    trainer = Trainer(accelerator_for(cfg), model, blocks, cfg.train, seed=7)
    batches = trainer._batches(0)
    first = torch.cat([next(batches) for _ in range(3)])  # three batches of train.batch_size = 4
    assert torch.equal(first_blocks(blocks, 7, 12), first)
    assert not torch.equal(first_blocks(blocks, 8, 12), first)


# ------------------------------------------------------------------------------ the one-shot selection


def finished_round(run: Path, r: int) -> FinishedRound:
    return FinishedRound(RunDir(run), r, AutoModelForCausalLM.from_pretrained(run / "ticket"))


def full(mask: Mask) -> Mask:
    return Mask({n: torch.ones_like(m) for n, m in mask.items()})


def pruned_count(mask: Mask, names) -> int:
    return sum(mask[n].numel() - int(mask[n].sum()) for n in names)


@pytest.mark.parametrize("r", [1, 2])
def test_oneshot_magnitude_is_the_global_selection_on_the_dense_weights_at_round_r(micro_run, r):
    source = finished_round(micro_run, r)
    branch = get_branch("oneshot_magnitude")
    weights, mask = branch.start(source, branch.Params(round=r, seed=1))
    dense = load_file(str(micro_run / "round_0" / "trained.safetensors"))
    assert weights.keys() == dense.keys() and all(torch.equal(weights[n], dense[n]) for n in dense)
    ticket = source.mask()
    fraction = pruned_count(ticket, ticket) / ticket.numel()
    expected = prune(dense, full(ticket), fraction, "global")
    assert mask.keys() == ticket.keys() and all(torch.equal(mask[n], expected[n]) for n in ticket)
    assert mask.num_remaining() == ticket.num_remaining()  # exactly round r's count
    if r == 2:  # iterative and one-shot pruning keep different weights at the same count
        assert any(not torch.equal(mask[n], ticket[n]) for n in ticket)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_one_shot_keeps_each_pools_count_under_group_fractions(micro_run, scope):
    """A round-2 mask from two iterative selections with attention at p = 0.3 and the rest at 0.5: the one-shot mask
    keeps each pool's count (the attention group, the MLP group; per matrix under scope layer)."""
    prune_cfg = PruneConfig(fraction=0.5, scope=scope, group_fractions={"attention": 0.3})
    dense = load_file(str(micro_run / "round_0" / "trained.safetensors"))
    mask = full(Mask.load(micro_run / "round_0" / MASK))
    noisy = {n: w + 0.05 * torch.randn(w.shape, generator=torch.Generator().manual_seed(1)) for n, w in dense.items()}
    for _ in range(2):
        pools = group_pools(mask, "gpt2", prune_cfg.fraction, scope, prune_cfg.group_fractions)
        mask = prune_pools(noisy, mask, pools)
    one_shot = oneshot_mask(dense, mask, "gpt2", prune_cfg, magnitude)
    pools = group_pools(mask, "gpt2", 0.5, scope, prune_cfg.group_fractions)
    assert len(pools) == (2 if scope == "global" else len(mask))
    for pool in pools:
        assert pruned_count(one_shot, pool.names) == pruned_count(mask, pool.names)
    share = {  # the groups at their own sparsity: 1 - 0.7^2 = 51% and 1 - 0.5^2 = 75%
        group: pruned_count(one_shot, names) / sum(mask[n].numel() for n in names)
        for group in ("attention", "mlp")
        if (names := [n for n in mask if weight_group("gpt2", n) == group])
    }
    assert share["attention"] == pytest.approx(0.51, abs=1e-3) and share["mlp"] == pytest.approx(0.75, abs=1e-3)
    assert any(not torch.equal(one_shot[n], mask[n]) for n in mask)


def lowest_per_row_by_hand(scores: torch.Tensor, dim: int, count: int) -> torch.Tensor:
    """What ``compare: row`` specifies, by a plain sort of each row's (score, input index) pairs: output unit u
    prunes count // units of its lowest, one more when u < count % units."""
    rows = scores.movedim(dim, -1)  # [output units, inputs]
    keep = torch.ones(rows.shape, dtype=torch.bool)
    base, extra = divmod(count, rows.shape[0])
    for u, row in enumerate(rows.tolist()):
        for _, i in sorted((s, i) for i, s in enumerate(row))[: base + (u < extra)]:
            keep[u, i] = False
    return keep.movedim(-1, dim)


def pruned_per_row(mask: torch.Tensor, dim: int) -> list[int]:
    """Each output unit's pruned inputs (``dim``: the input dimension)."""
    return (~mask).sum(dim).tolist()


def evenly(count: int, units: int) -> list[int]:
    base, extra = divmod(count, units)
    return [base + 1] * extra + [base] * (units - extra)


ROW_LAYOUTS = {  # model_type, a weight name of that layout, its input dimension
    "linear": ("llama", "model.layers.0.mlp.up_proj.weight", 1),  # nn.Linear [out, in]: a row is a row
    "conv1d": ("gpt2", "transformer.h.0.mlp.c_fc.weight", 0),  # Conv1D [in, out]: a row is a column
}


@pytest.mark.parametrize("count", [0, 1, 7, 12, 29, 40])
@pytest.mark.parametrize("layout", sorted(ROW_LAYOUTS))
def test_row_selection_prunes_each_units_lowest_scores_evenly(layout, count):
    """Five output units of eight inputs, scores of few distinct values (many ties, which go to the lower index)."""
    model_type, name, dim = ROW_LAYOUTS[layout]
    shape = (5, 8) if dim == 1 else (8, 5)
    weight = torch.randint(-3, 4, shape, generator=torch.Generator().manual_seed(count)).float()
    mask = prune_rows({name: weight}, {name: count}, model_type, magnitude)[name]
    assert torch.equal(mask, lowest_per_row_by_hand(weight.abs(), dim, count))
    assert pruned_per_row(mask, dim) == evenly(count, 5) and mask.device.type == "cpu"
    with pytest.raises(ValueError, match="has negative values"):
        prune_rows({name: weight}, {name: max(count, 1)}, model_type, lambda n, w: w.float())
    with pytest.raises(ValueError, match="count 41 for .* is not allowed; choose 0..40"):
        prune_rows({name: weight}, {name: 41}, model_type, magnitude)


def test_row_comparison_keeps_every_matrixs_count_spread_over_its_rows(micro_run):
    """Round 2's mask with one matrix made whole again: that one stays whole, every other prunes its own count."""
    dense = load_file(str(micro_run / "round_0" / "trained.safetensors"))
    ticket = RunDir(micro_run).round_mask(2)
    whole = next(iter(ticket))
    ticket[whole] = torch.ones_like(ticket[whole])
    cfg = RunDir(micro_run).stored_config()
    rows = oneshot_mask(dense, ticket, "gpt2", cfg.prune, magnitude, compare="row")
    assert list(rows) == list(ticket) and torch.equal(rows[whole], ticket[whole])
    for name, m in ticket.items():
        count = pruned_count(ticket, [name])
        assert pruned_count(rows, [name]) == count and pruned_per_row(rows[name], 0) == evenly(count, m.shape[1])
        assert torch.equal(rows[name], lowest_per_row_by_hand(dense[name].abs(), 0, count))
    pooled = oneshot_mask(dense, ticket, "gpt2", cfg.prune, magnitude)
    named = oneshot_mask(dense, ticket, "gpt2", cfg.prune, magnitude, compare="pool")
    assert all(torch.equal(pooled[n], named[n]) for n in ticket)
    assert any(not torch.equal(rows[n], pooled[n]) for n in ticket)


# ------------------------------------------------------------------------------------- branches on a run


@pytest.fixture(scope="module")
def oneshot_run(micro_run, tmp_path_factory):
    """A copy of the micro run (2 rounds) with oneshot_magnitude (finetune 0 and 2) from round 2 and wanda from every
    round; and the run's validation ids and training blocks, as RunContext builds them."""
    run = tmp_path_factory.mktemp("oneshot") / "run"
    shutil.copytree(micro_run, run)
    cfg = RunDir(run).stored_config()
    with RunContext(cfg, accelerator_for(cfg), claim=False) as ctx:
        val_ids, train_blocks = ctx.val_ids, ctx.train_blocks
    results = {
        "magnitude": run_branch(run, "oneshot_magnitude"),  # default seeds: the first only, since nothing is drawn
        "finetune": run_branch(run, "oneshot_magnitude", seeds=[1], finetune=2),
        "wanda": run_branch(run, "wanda", round="all"),
        "wanda_row": run_branch(run, "wanda", compare="row"),
    }
    return run, cfg, val_ids, train_blocks, results


def dense_under(run: Path, mask: Mask) -> nn.Module:
    model = AutoModelForCausalLM.from_pretrained(run / "ticket")
    load_parameters(model, load_file(str(run / "round_0" / "trained.safetensors")))
    with torch.no_grad():
        for name, m in mask.items():
            model.get_parameter(name).mul_(m)
    return model


def test_without_finetuning_the_pruned_dense_model_is_evaluated_as_it_is(oneshot_run):
    run, cfg, val_ids, _, results = oneshot_run
    [result] = results["magnitude"]
    folder = RunDir(run).branch("oneshot_magnitude", "round_2-seed_1-finetune_0")
    assert BranchResult.load(folder / "result.json") == result
    assert sorted(p.name for p in folder.iterdir()) == ["mask.safetensors", "result.json"]
    assert result.train_steps == 0 and result.evaluations == [] and result.round == 2
    assert result.params == {"round": 2, "seed": 1, "finetune": 0}
    mask = Mask.load(folder / MASK)
    round_2 = RunResults.load(run / "results.json").rounds[2]
    assert result.sparsity == round_2.sparsity and mask.num_remaining() == RunDir(run).round_mask(2).num_remaining()
    model = dense_under(run, mask)
    by_hand = perplexity(model, val_ids, cfg.data.block_size, cfg.eval.stride, batch_size=cfg.eval.batch_size)
    assert result.val_perplexity == by_hand.perplexity and result.val_nll == by_hand.nll
    assert math.isfinite(result.final_train_loss)
    assert not (run / "checkpoints").exists()


def test_finetuning_trains_segments_from_the_one_shot_mask_each_evaluated(oneshot_run):
    run, _, _, _, results = oneshot_run
    [result] = results["finetune"]
    folder = RunDir(run).branch("oneshot_magnitude", "round_2-seed_1-finetune_2")
    assert result.train_steps == 16 and [e["steps"] for e in result.evaluations] == [8, 16]
    one_shot = Mask.load(RunDir(run).branch("oneshot_magnitude", "round_2-seed_1-finetune_0") / MASK)
    for j in range(2):
        mask = Mask.load(folder / f"segment_{j}" / MASK)
        assert all(torch.equal(mask[n], one_shot[n]) for n in one_shot)
    trained = load_file(str(folder / "segment_1" / "trained.safetensors"))
    assert all(int(trained[n][~m].count_nonzero()) == 0 for n, m in one_shot.items())  # masked weights exactly 0
    assert result.val_perplexity < results["magnitude"][0].val_perplexity  # fine-tuning helps the pruned model


def test_wanda_runs_from_every_pruned_round_with_its_counts_and_calibration(oneshot_run):
    run, cfg, _, train_blocks, results = oneshot_run
    rounds = RunResults.load(run / "results.json").rounds
    assert [(w.round, w.sparsity) for w in results["wanda"]] == [(1, rounds[1].sparsity), (2, rounds[2].sparsity)]
    magnitude_mask = Mask.load(RunDir(run).branch("oneshot_magnitude", "round_2-seed_1-finetune_0") / MASK)
    for result in results["wanda"]:
        folder = RunDir(run).branch("wanda", f"round_{result.round}-seed_1-{WANDA_KEY}")
        mask = Mask.load(folder / MASK)
        ticket = RunDir(run).round_mask(result.round)
        model = dense_under(run, full(ticket))
        blocks = first_blocks(train_blocks, cfg.seed, 128)
        score = wanda(input_norms(model, list(ticket), blocks, cfg.eval.batch_size))
        dense = {n: model.get_parameter(n) for n in ticket}
        expected = prune(dense, full(ticket), pruned_count(ticket, ticket) / ticket.numel(), "global", score)
        assert all(torch.equal(mask[n], expected[n]) for n in ticket)
        assert mask.num_remaining() == ticket.num_remaining() and result.train_steps == 0
    assert any(not torch.equal(mask[n], magnitude_mask[n]) for n in mask)  # round 2: another score, another mask


def test_wanda_by_row_prunes_each_output_units_lowest_wanda_scores(oneshot_run):
    run, cfg, _, train_blocks, results = oneshot_run
    [result] = results["wanda_row"]
    assert result.params == {"round": 2, "seed": 1, "finetune": 0, "compare": "row", "calibration_blocks": 128}
    mask = Mask.load(RunDir(run).branch("wanda", f"round_2-seed_1-{WANDA_ROW_KEY}") / MASK)
    ticket = RunDir(run).round_mask(2)
    model = dense_under(run, full(ticket))
    score = wanda(input_norms(model, list(ticket), first_blocks(train_blocks, cfg.seed, 128), cfg.eval.batch_size))
    for name in ticket:
        scores = score(name, model.get_parameter(name))
        assert torch.equal(mask[name], lowest_per_row_by_hand(scores, 0, pruned_count(ticket, [name])))
    assert result.sparsity == results["wanda"][1].sparsity


def test_a_finished_one_shot_branch_is_read_back(oneshot_run, monkeypatch):
    run, _, _, _, results = oneshot_run
    monkeypatch.setattr(RunContext, "__init__", lambda *a, **k: pytest.fail("a finished branch must be read back"))
    assert run_branch(run, "wanda", round=[1, 2]) == results["wanda"]
    assert run_branch(run, "oneshot_magnitude", round=2, seeds=[1]) == results["magnitude"]


def test_labels_name_the_seed_only_where_it_changes_the_result(oneshot_run):
    run, _, _, _, results = oneshot_run
    [as_is], [tuned] = results["magnitude"], results["finetune"]
    assert (as_is.seeded, tuned.seeded) == (False, True)
    assert as_is.label().startswith("oneshot_magnitude (finetune 0") and "seed" not in as_is.label()
    assert tuned.label().startswith("oneshot_magnitude (seed 1, finetune 2")
    assert all("seed" not in w.label() for w in results["wanda"])
    folder = RunDir(run).branch("oneshot_magnitude", "round_2-seed_1-finetune_0")
    assert BranchResult.load(folder / "result.json").seeded is False  # recorded, not guessed at report time
    older = {k: v for k, v in as_is.to_dict().items() if k != "seeded"}  # a result written before it was recorded
    assert BranchResult.from_dict(older).label().startswith("oneshot_magnitude (seed 1, finetune 0")


# ----------------------------------------------------------------------------------- controls at rounds


def test_controls_at_several_rounds_and_unseeded_branches_at_one_seed(tmp_path):
    controls = (
        "[{wanda: {rounds: all}}, {oneshot_magnitude: {rounds: [1], finetune: 1}}, oneshot_magnitude, random_prune]"
    )
    cfg = load_config(None, [*MICRO, "--output_dir", str(tmp_path / "run"), "--controls", controls,
                             "--control_seeds", "[1, 2]"])  # fmt: skip
    listed = [(b.name, p.key()) for b, p in control_params(cfg)]
    assert listed == [
        ("wanda", "round_1-seed_1-finetune_0-calibration_blocks_128"),
        ("wanda", "round_2-seed_1-finetune_0-calibration_blocks_128"),
        ("oneshot_magnitude", "round_1-seed_1-finetune_1"),  # fine-tuning draws a data order: every seed
        ("oneshot_magnitude", "round_1-seed_2-finetune_1"),
        ("oneshot_magnitude", "round_2-seed_1-finetune_0"),
        ("random_prune", "round_2-seed_1"),
        ("random_prune", "round_2-seed_2"),
    ]
    assert not (tmp_path / "run").exists()


def test_find_runs_one_shot_controls_from_every_round_with_group_fractions(tmp_path):
    """End to end: controls from every round, each pool (attention at p = 0.3, MLP at 0.5) at its round's count."""
    overrides = ["--prune.group_fractions", "{attention: 0.3}", "--controls", "[{wanda: {rounds: all}}]"]
    cfg = load_config(None, [*MICRO, "--output_dir", str(tmp_path / "run"), *overrides])
    results = find_ticket(cfg)
    assert [(b.branch, b.round, b.train_steps) for b in results.branches] == [("wanda", 1, 0), ("wanda", 2, 0)]
    run = RunDir(cfg.output_dir)
    for b in results.branches:
        mask = Mask.load(run.branch("wanda", f"round_{b.round}-seed_1-{WANDA_KEY}") / MASK)
        ticket = run.round_mask(b.round)
        assert b.attention_sparsity == results.rounds[b.round].attention_sparsity
        assert b.mlp_sparsity == results.rounds[b.round].mlp_sparsity
        for group in ("attention", "mlp"):
            names = [n for n in ticket if weight_group("gpt2", n) == group]
            assert pruned_count(mask, names) == pruned_count(ticket, names)


def test_find_runs_wanda_by_row_as_a_control(tmp_path):
    cfg = load_config(None, [*MICRO, "--output_dir", str(tmp_path / "run"), "--controls", "[{wanda: {compare: row}}]"])
    results = find_ticket(cfg)
    [b] = results.branches
    assert (b.branch, b.round, b.sparsity) == ("wanda", 2, results.rounds[2].sparsity)
    assert "compare row" in b.label() and "compare" not in results.rounds[2].label()
    mask = Mask.load(RunDir(cfg.output_dir).branch("wanda", f"round_2-seed_1-{WANDA_ROW_KEY}") / MASK)
    ticket = RunDir(cfg.output_dir).round_mask(2)
    for name, m in ticket.items():  # GPT-2's Conv1D: an output unit's inputs are a column
        count = pruned_count(ticket, [name])
        assert pruned_count(mask, [name]) == count and pruned_per_row(mask[name], 0) == evenly(count, m.shape[1])


# -------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "args, message",
    [
        (["wanda", "--round", "0"], "round=0 is not allowed for branch wanda: it prunes to a pruned round's sparsity"),
        (["oneshot_magnitude", "--round", "1,3"], "round=[1, 3] is not allowed; write all (every pruned round 1..2)"),
        (["wanda", "--round", "1,1"], "round=[1, 1] is not allowed"),
        (["wanda", "--round", "last"], "--round='last' is not a round, a comma-separated list of rounds or all"),
        (["wanda", "--calibration_blocks", "0"], "calibration_blocks=0 is not allowed; choose 1 or more"),
        (["wanda", "--calibration_blocks", "100000"], "calibration_blocks=100000 is more than the run's training data"),
        (["oneshot_magnitude", "--finetune", "-1"], "finetune=-1 is not allowed; choose 0"),
        (["wanda", "--finetune", "0.5"], "finetune=0.5 must be an integer"),
        (["wanda", "--compare", "rows"], "compare='rows' is not allowed; did you mean row? choose one of pool, row"),
    ],
)
def test_cli_bad_input_one_line_exit_2_nothing_written(micro_run, tmp_path, capsys, args, message):
    run = tmp_path / "run"
    shutil.copytree(micro_run, run)
    before = tree(run)
    assert main(["branch", str(run), *args]) == 2
    err = capsys.readouterr().err
    assert error_lines(err) == [err.strip()] and message in err
    assert tree(run) == before


def test_a_run_without_its_trained_dense_model_is_refused_in_one_line(micro_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(micro_run, run)
    (run / "round_0" / "trained.safetensors").unlink()  # as gpt_tickets 0.3 left its runs
    before = tree(run)
    assert main(["branch", str(run), "oneshot_magnitude"]) == 2
    err = capsys.readouterr().err
    assert "has no trained dense model (round_0/trained.safetensors)" in err and "0.3 and older" in err
    assert error_lines(err) == [err.strip()] and tree(run) == before


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--controls", "[{wanda: {rounds: [0, 3]}}]"], "controls entry wanda: rounds=[0, 3] is not allowed"),
        (["--controls", "[{wanda: {rounds: []}}]"], "controls entry wanda: rounds=[] is not allowed"),
        (["--controls", "[{oneshot_magnitude: {rounds: al}}]"], "rounds='al' is not allowed; write all"),
        (["--controls", "[{wanda: {rounds: [0]}}]"], "round=0 is not allowed for branch wanda"),
        (["--prune.groups", "[attention, embeddings]", "--controls", "[wanda]"], "use oneshot_magnitude instead"),
        (["--controls", "[{wanda: {calibration_blocks: 100000}}]"], "calibration_blocks=100000 is more than the run"),
        (["--controls", "[{oneshot_magnitude: {compare: 1}}]"], "compare=1 is not allowed; choose one of pool, row"),
        (
            ["--prune.structure", "units", "--controls", "[{wanda: {compare: row}}]"],
            "branch wanda builds unstructured masks",
        ),
    ],
)
def test_find_refuses_bad_one_shot_controls_before_writing(tmp_path, capsys, overrides, message):
    assert main(["find", "--output_dir", str(tmp_path / "run"), *MICRO, *overrides]) == 2
    err = capsys.readouterr().err
    assert error_lines(err) == [err.strip()] and message in err
    assert not (tmp_path / "run").exists()


def test_params_refuse_bad_values_in_one_line():
    with pytest.raises(ConfigError, match=r"^calibration_blocks=-3 is not allowed; choose 1 or more$"):
        get_branch("wanda").params(2, 1, calibration_blocks=-3)
