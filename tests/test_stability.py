"""Stability analysis: the interpolation path and its barrier, round 0's steps recomputed bitwise, results read back
and never recomputed, the recommendation, and bad input refused before anything is written."""

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from gpt_tickets.cli import main
from gpt_tickets.config import load_config
from gpt_tickets.errors import RunError
from gpt_tickets.eval.perplexity import PerplexityResult, perplexity
from gpt_tickets.lottery import RunDir, find_ticket
from gpt_tickets.lottery.context import RunContext, accelerator_for
from gpt_tickets.lottery.results import BranchResult, RoundResult
from gpt_tickets.lottery.stability import (
    STABLE_BARRIER,
    InterpolationResult,
    interpolate,
    loss_barrier,
    read_interpolations,
    recommend,
    recompute_round_0,
    run_stability,
)
from gpt_tickets.models.params import load_parameters, parameters_cpu
from gpt_tickets.train.checkpoints import Checkpoints
from gpt_tickets.train.trainer import Trainer

from .conftest import MICRO, error_lines, flip_a_bit, table_rows
from .test_branches import tree

STEPS = [0, 5]  # 0: the saved initial weights; 5: saved by no one, recomputed
POINTS = 5


def copy_of(run: Path, tmp_path: Path) -> Path:
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def same_tensors(mine: dict, theirs: dict) -> bool:
    return mine.keys() == theirs.keys() and all(torch.equal(mine[n], theirs[n]) for n in mine)


def copy_result(run: Path, k: int, seed: int) -> BranchResult:
    return BranchResult.load(run / "stability" / "round_2" / f"rewind_{k}" / f"seed_{seed}" / "result.json")


@pytest.fixture(scope="module")
def stable_run(micro_run, tmp_path_factory):
    """A copy of the micro run (seed 0, 2 rounds) with stability from steps 0 and 5 at the defaults: the final round,
    seeds 1 and 2."""
    run = copy_of(micro_run, tmp_path_factory.mktemp("stability"))
    return run, run_stability(run, STEPS, points=POINTS)


# ------------------------------------------------------------------------------------------------ the path


def test_the_path_is_the_straight_line_and_its_ends_are_the_models_themselves():
    model = torch.nn.Linear(3, 2)
    a = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    b = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    seen = []

    def evaluate() -> PerplexityResult:
        seen.append(parameters_cpu(model))
        return PerplexityResult(1.0, 0.0, 1, 1.0, 1.0)

    alphas, _ = interpolate(model, a, b, 5, evaluate)
    assert alphas == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert same_tensors(seen[0], a) and same_tensors(seen[-1], b)
    for alpha, weights in zip(alphas, seen, strict=True):
        for n in a:
            torch.testing.assert_close(weights[n], (1 - alpha) * a[n] + alpha * b[n], rtol=0, atol=1e-6)


def test_two_identical_copies_have_a_flat_path_and_a_barrier_of_exactly_zero(micro_run):
    model = AutoModelForCausalLM.from_pretrained(micro_run / "ticket")
    ids = torch.randint(0, model.config.vocab_size, (200,), generator=torch.Generator().manual_seed(0))
    a = parameters_cpu(model)
    _, evaluations = interpolate(model, a, a, 7, lambda: perplexity(model, ids, max_length=32, stride=16))
    nll = [e.nll for e in evaluations]
    assert len(set(nll)) == 1 and loss_barrier(nll) == 0.0


def test_barrier_is_the_worst_loss_minus_the_mean_of_the_ends():
    assert loss_barrier([2.0, 2.5, 2.25, 2.2]) == pytest.approx(2.5 - 2.1, abs=1e-12)
    assert loss_barrier([3.0, 2.0, 1.0]) == pytest.approx(3.0 - 2.0, abs=1e-12)  # the max includes the ends


# ------------------------------------------------------------------------------------------------ on a run


def test_two_copies_per_step_and_the_ends_of_the_path_are_their_own_losses(stable_run):
    run, curves = stable_run
    assert [(c.round, c.rewind, c.seeds, len(c.alphas)) for c in curves] == [(2, k, [1, 2], POINTS) for k in STEPS]
    for curve in curves:
        first, second = (copy_result(run, curve.rewind, seed) for seed in (1, 2))
        assert curve.val_nll[0] == first.val_nll and curve.val_nll[-1] == second.val_nll
        assert curve.val_perplexity[0] == first.val_perplexity and curve.val_perplexity[-1] == second.val_perplexity
        assert curve.barrier == max(curve.val_nll) - (curve.val_nll[0] + curve.val_nll[-1]) / 2
        assert len(set(curve.val_nll)) == POINTS  # every point evaluated at its own weights
        for seed, result in [(1, first), (2, second)]:
            assert result.branch == "stability" and result.params == {"round": 2, "seed": seed, "rewind": curve.rewind}
            assert result.sparsity == 0.75 and result.train_steps == 8
            assert result.mask_checksum == RoundResult.load(run / "round_2" / "result.json").mask_checksum
        saved = run / "stability" / "round_2" / f"rewind_{curve.rewind}" / "interpolation-seeds_1_2-points_5.json"
        assert InterpolationResult.load(saved) == curve
    assert copy_result(run, 0, 1).val_nll != copy_result(run, 0, 2).val_nll  # another data order, another end
    assert copy_result(run, 0, 1).val_nll != copy_result(run, 5, 1).val_nll  # another start, another end
    assert sorted(p.name for p in (run / "stability" / "weights").iterdir()) == ["step_5.safetensors"]
    assert not (run / "checkpoints").exists()


def test_a_point_between_is_the_model_with_the_interpolated_weights(stable_run, tmp_path):
    run, curves = stable_run
    cfg = RunDir(run).stored_config()
    folder = run / "stability" / "round_2" / "rewind_5"
    a, b = (load_file(str(folder / f"seed_{s}" / "trained.safetensors")) for s in (1, 2))
    with RunContext(cfg, accelerator_for(cfg), claim=False) as ctx:
        load_parameters(ctx.model, {n: 0.25 * a[n] + 0.75 * b[n] for n in a})
        by_hand = perplexity(ctx.model, ctx.val_ids, max_length=cfg.data.block_size, stride=cfg.eval.stride)
    assert curves[1].alphas[3] == 0.75
    assert curves[1].val_nll[3] == pytest.approx(by_hand.nll, abs=1e-5)


def test_recomputed_steps_of_round_0_equal_its_saved_weights_bitwise(micro_run, tmp_path):
    run = copy_of(micro_run, tmp_path)
    cfg = RunDir(run).stored_config()
    files = {cfg.prune.rewind_step: tmp_path / "rewind.safetensors", cfg.train.steps: tmp_path / "last.safetensors"}
    with RunContext(cfg, accelerator_for(cfg), claim=False) as ctx:
        recompute_round_0(ctx, files)  # one pass: step 3, then on to step 8
    assert same_tensors(load_file(str(files[3])), load_file(str(run / "rewind.safetensors")))
    assert same_tensors(load_file(str(files[8])), load_file(str(run / "round_0" / "trained.safetensors")))


def test_a_second_call_computes_nothing_and_builds_nothing(stable_run, monkeypatch):
    run, curves = stable_run
    monkeypatch.setattr(Trainer, "train", lambda *a, **k: pytest.fail("nothing may be trained again"))
    monkeypatch.setattr(RunContext, "__init__", lambda *a, **k: pytest.fail("finished curves are read back"))
    assert run_stability(run, [5, 0], points=POINTS) == curves


def test_another_point_count_reuses_the_copies(stable_run, tmp_path, monkeypatch):
    run, curves = stable_run
    run = copy_of(run, tmp_path)
    monkeypatch.setattr(Trainer, "train", lambda *a, **k: pytest.fail("the copies' trained weights are kept"))
    three = run_stability(run, [5], points=3)[0]
    five = curves[1]
    assert three.alphas == [0.0, 0.5, 1.0]
    assert three.val_nll == [five.val_nll[0], five.val_nll[2], five.val_nll[-1]]  # the same weights, the same loss
    assert read_interpolations(RunDir(run)) == [curves[0], three, five]


def test_a_damaged_curve_is_refused_by_the_reader_and_computed_again_by_the_run(stable_run, tmp_path):
    run, curves = stable_run
    run = copy_of(run, tmp_path)
    path = run / "stability" / "round_2" / "rewind_0" / "interpolation-seeds_1_2-points_5.json"
    path.write_text(path.read_text().replace('"rewind": 0', '"rewind": 1'))
    with pytest.raises(RunError, match="does not match the digest"):
        read_interpolations(RunDir(run))
    assert run_stability(run, [0], points=POINTS) == [curves[0]]  # from the kept copies
    assert read_interpolations(RunDir(run)) == curves


def test_a_damaged_copy_is_trained_again(stable_run, tmp_path, monkeypatch):
    run, curves = stable_run
    run = copy_of(run, tmp_path)
    train, trained = Trainer.train, []
    monkeypatch.setattr(Trainer, "train", lambda *a, **k: trained.append(k["desc"]) or train(*a, **k))
    folder = run / "stability" / "round_2" / "rewind_5"
    flip_a_bit(folder / "seed_2" / "trained.safetensors")
    (folder / "interpolation-seeds_1_2-points_5.json").unlink()
    (weights,) = (run / "stability" / "weights").iterdir()
    weights.unlink()  # its start weights too: recomputed
    assert run_stability(run, [5], points=POINTS) == [curves[1]]
    assert trained == ["round 0 to step 5", "stability round 2 rewind 5 seed 2"]


class Stopped(Exception):
    pass


def test_a_copy_stopped_mid_training_resumes_from_its_checkpoint_and_ends_identical(stable_run, tmp_path, monkeypatch):
    run = tmp_path / "run"
    args = [*MICRO, "--train.checkpoint_every", "2", "--controls", "[]", "--output_dir", str(run)]
    find_ticket(load_config(None, args))
    save, saved = Checkpoints.save, []

    def stop_in_the_second_copy(self, phase, step):
        save(self, phase, step)
        saved.append((phase, step))
        if phase == "stability round 2 rewind 5 seed 2" and step == 4:
            raise Stopped

    monkeypatch.setattr(Checkpoints, "save", stop_in_the_second_copy)
    with pytest.raises(Stopped):
        run_stability(run, [5], points=POINTS)
    assert not (run / "stability" / "round_2" / "rewind_5" / "seed_2" / "result.json").exists()
    saved.clear()
    assert run_stability(run, [5], points=POINTS) == [stable_run[1][1]]
    assert saved == [("stability round 2 rewind 5 seed 2", 6)]  # resumed at step 4; the first copy not retrained


# ------------------------------------------------------------------------------------------------ the verdict


def curve(rewind: int, barrier: float) -> InterpolationResult:
    return InterpolationResult(2, rewind, [1, 2], [0.0, 0.5, 1.0], [1.0, 1.0 + barrier, 1.0], [1.0] * 3, barrier)


def test_recommend_picks_the_earliest_stable_step():
    curves = [curve(30, 0.001), curve(0, 0.4), curve(10, 0.019), curve(20, 0.05)]
    assert recommend(curves) == 10
    assert recommend(curves, threshold=0.005) == 30
    assert recommend([curve(0, STABLE_BARRIER)]) is None  # strictly below
    assert recommend([]) is None


def test_cli_prints_the_table_and_the_recommendation(stable_run, capsys):
    run, curves = stable_run
    assert main(["stability", str(run), "--rewind-steps", "5,0", "--points", "5"]) == 0
    out = capsys.readouterr().out
    rows = table_rows(out)
    assert rows[0] == ["rewind step", "barrier (nats)", "val ppl of the copies", "max val ppl on the path", "stable?"]
    for row, c in zip(rows[1:], curves, strict=True):
        ends = f"{c.val_perplexity[0]:.2f} / {c.val_perplexity[-1]:.2f}"
        assert row == [str(c.rewind), f"{c.barrier:.4f}", ends, f"{max(c.val_perplexity):.2f}", "yes"]
    assert "recommended rewind step: 0 (the earliest whose barrier is below 0.02 nats)" in out
    assert main(["stability", str(run), "--rewind-steps", "0,5", "--points", "5", "--threshold", "1e-9"]) == 0
    assert "no rewind step has a barrier below 1e-09 nats; try later rewind steps" in capsys.readouterr().out


@pytest.fixture(scope="module")
def bad_input_run(micro_run, tmp_path_factory):
    return copy_of(micro_run, tmp_path_factory.mktemp("bad_input"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--rewind-steps", "0,9"], "rewind step 9 is beyond train.steps; allowed: distinct integers 0..8"),
        (["--rewind-steps=-1,0"], "rewind step -1 is negative"),
        (["--rewind-steps", "0,3,3"], "rewind_steps=[0, 3, 3] lists step 3 twice"),
        (["--rewind-steps", "0,x"], "rewind step 'x' is not an integer"),
        (["--rewind-steps", "2.5"], "rewind step 2.5 is not an integer"),
        (["--rewind-steps", "0", "--points", "2"], "points=2 is not allowed; the path needs at least 3 points"),
        (["--rewind-steps", "0", "--round", "3"], "round=3 is not allowed; the run has rounds 0..2"),
        (["--rewind-steps", "0", "--seeds", "1"], "seeds=[1] must be exactly two distinct seeds"),
        (["--rewind-steps", "0", "--seeds", "1,1"], "lists seed 1 twice"),
        (["--rewind-steps", "0", "--seeds", "1,x"], "--seeds='1,x' is not a comma-separated list of integers"),
        (["--rewind-steps", "0", "--threshold", "0"], "threshold=0.0 is not allowed; give a barrier in nats > 0"),
        (["--rewind-steps", "0", "--threshold", "nan"], "threshold=nan is not allowed"),
        (["--rewind-steps", "0", "--threshold", "x"], "--threshold='x' is not a number"),
        (["--rewind-steps", "0", "--threshold=-0.1"], "threshold=-0.1 is not allowed"),
    ],
)
def test_cli_bad_input_one_line_exit_2_nothing_written(bad_input_run, args, message, capsys):
    before = tree(bad_input_run)
    assert main(["stability", str(bad_input_run), *args]) == 2
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and len(err.strip().splitlines()) == 1, err
    assert message in err
    assert tree(bad_input_run) == before and not (bad_input_run / "stability").exists()


def test_cli_on_an_unfinished_round_or_no_run(micro_run, tmp_path, capsys):
    run = copy_of(micro_run, tmp_path)
    (run / "round_2" / "result.json").unlink()
    assert main(["stability", str(run), "--rewind-steps", "0"]) == 2
    err = capsys.readouterr().err
    assert "round 2 of the run in" in err and "is not finished (finished rounds: 0, 1)" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["stability", str(empty), "--rewind-steps", "0"]) == 2
    assert "holds no run (no config.yaml)" in capsys.readouterr().err
    assert not (run / "stability").exists() and list(empty.iterdir()) == []
