"""Stability to SGD noise (linear mode connectivity, Frankle et al. 2020): from which rewind step k does a mask train
into one basin, whatever the data order?

IMP finds matching tickets only from points where training is stable: two copies of the network trained from the
step-k weights on different data orders end in one linearly connected basin, with no loss barrier on the straight
line between them. For each k, two copies are trained with round R's mask (R = 0: the dense model) for
``train.steps`` steps with a fresh optimizer and schedule, as a round, each on the data order of its seed; the
validation loss (the rounds' own evaluation) is then measured at ``points`` evenly spaced points of the line
``(1 - a) * A + a * B``, a in [0, 1]. The barrier is the worst loss on the path minus the mean of its ends (nats).

Threshold (``STABLE_BARRIER`` = 0.02 nats). Frankle et al. call a network stable when its error barrier is below 2%,
a margin for noise. For a language model the loss is the measure: 0.02 nats is a 2% perplexity rise (e^0.02 =
1.020) at the path's worst point. It is about 3x the seed-to-seed spread of the ends seen in our runs (the
rewind_step branch of the embedded default: val perplexity 160.50 +- 1.14 over seeds, 0.007 nats), so two copies in
one basin are not called unstable by data-order noise alone, and a real hump (a wall between two basins) shows.
Since the max includes the ends, the barrier is never below half the ends' difference (~0.004 nats here).

On disk, under the run (every phase resumable after a kill, every finished piece read back, never recomputed)::

    stability/weights/step_<k>.safetensors    round 0's step-k weights when round 0 did not save them
    stability/round_<R>/rewind_<k>/seed_<s>/  one trained copy: mask, trained weights, result.json
    stability/round_<R>/rewind_<k>/interpolation-seeds_<a>_<b>-points_<n>.json   the curve (digest-checked)

The copies' trained weights are kept, so a curve with another number of points needs no retraining.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from ..config.schema import MAX_SEED, RunConfig, check, check_seeds
from ..errors import ConfigError, RunError
from ..eval.perplexity import PerplexityResult
from ..io import load_tensors, read_checked_json, write_checked_json
from ..models.params import load_parameters, parameters_cpu, save_parameters
from ..reporting.tables import markdown_table
from ..sparsity.apply import MaskedParameters
from ..sparsity.masks import Mask
from .branches.runner import default_seeds
from .context import Phase, RunContext, accelerator_for
from .results import BranchResult
from .run_dir import RunDir

STABLE_BARRIER = 0.02
"""The default threshold (nats) below which a rewind step is stable; see the module docstring."""

BRANCH = "stability"  # the copies' BranchResult.branch


@dataclass
class InterpolationResult:
    """The validation loss along the line between two copies trained from round 0's step ``rewind`` weights with
    round ``round``'s mask, on the data orders of ``seeds`` (``alphas[0]``: the first copy, ``alphas[-1]``: the
    second)."""

    round: int
    rewind: int
    seeds: list[int]
    alphas: list[float]
    val_nll: list[float]
    val_perplexity: list[float]
    barrier: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        write_checked_json(self.to_dict(), path)

    @classmethod
    def load(cls, path: Path) -> InterpolationResult:
        """A saved curve, checked against the digest it was written with."""
        data = read_checked_json(path)
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [name for name in names if name not in data]
        if missing:
            raise RunError(
                f"{path}: an InterpolationResult lacks {missing[0]!r}: written by another version, or damaged?"
            )
        return cls(**{name: data[name] for name in names})


def loss_barrier(val_nll: list[float]) -> float:
    """The worst loss on the path minus the mean of its ends (nats); 0 for a flat path."""
    return max(val_nll) - (val_nll[0] + val_nll[-1]) / 2


def interpolate(
    model: torch.nn.Module,
    a: dict[str, torch.Tensor],
    b: dict[str, torch.Tensor],
    points: int,
    evaluate: Callable[[], PerplexityResult],
) -> tuple[list[float], list[PerplexityResult]]:
    """``evaluate()`` with every parameter of ``model`` set to ``(1 - alpha) * a + alpha * b``, at ``points`` evenly
    spaced alphas from 0 to 1. The ends load ``a`` and ``b`` themselves, so they are the two models, bitwise.

    Returns the alphas and one evaluation per alpha. ``model`` is left holding ``b``.
    """
    alphas = [i / (points - 1) for i in range(points)]
    evaluations = []
    for alpha in alphas:
        weights = a if alpha == 0 else b if alpha == 1 else {n: torch.lerp(a[n], b[n], alpha) for n in a}
        load_parameters(model, weights)
        evaluations.append(evaluate())
    return alphas, evaluations


def check_threshold(threshold: float) -> None:
    ok = isinstance(threshold, int | float) and not isinstance(threshold, bool) and 0 < threshold < math.inf
    check(ok, f"threshold={threshold!r} is not allowed; give a barrier in nats > 0, e.g. {STABLE_BARRIER}")


def recommend(results: list[InterpolationResult], threshold: float = STABLE_BARRIER) -> int | None:
    """The earliest rewind step whose barrier is below ``threshold`` (nats); None when none is."""
    check_threshold(threshold)
    stable = [r.rewind for r in results if r.barrier < threshold]
    return min(stable) if stable else None


def stability_table(results: list[InterpolationResult], threshold: float = STABLE_BARRIER) -> str:
    """A Markdown table, one row per curve, and the line that recommends a rewind step (or says none is stable)."""
    rows = [["rewind step", "barrier (nats)", "val ppl of the copies", "max val ppl on the path", "stable?"]]
    for r in results:
        copies = f"{r.val_perplexity[0]:.2f} / {r.val_perplexity[-1]:.2f}"
        stable = "yes" if r.barrier < threshold else "no"
        rows.append([str(r.rewind), f"{r.barrier:.4f}", copies, f"{max(r.val_perplexity):.2f}", stable])
    k = recommend(results, threshold)
    if k is None:
        verdict = f"no rewind step has a barrier below {threshold} nats; try later rewind steps"
    else:
        verdict = f"recommended rewind step: {k} (the earliest whose barrier is below {threshold} nats)"
    return f"{markdown_table(rows)}\n\n{verdict}"


# ------------------------------------------------------------------------------------------------------ on disk


def _root(run: RunDir) -> Path:
    return run.root / "stability"


def _folder(run: RunDir, r: int, k: int) -> Path:
    return _root(run) / f"round_{r}" / f"rewind_{k}"


def _curve_path(run: RunDir, r: int, k: int, seeds: list[int], points: int) -> Path:
    a, b = seeds
    return _folder(run, r, k) / f"interpolation-seeds_{a}_{b}-points_{points}.json"


def read_interpolations(run_dir: RunDir) -> list[InterpolationResult]:
    """Every saved curve of a run, sorted by round and rewind step; a damaged one raises ``RunError``."""
    curves = [InterpolationResult.load(p) for p in _root(run_dir).glob("round_*/rewind_*/interpolation-*.json")]
    return sorted(curves, key=lambda c: (c.round, c.rewind, c.seeds, len(c.alphas)))


def _finished_curve(path: Path, r: int, k: int, seeds: list[int], points: int) -> InterpolationResult | None:
    """A saved curve; a damaged one (or one that is not this curve) is computed again from the kept copies."""
    if not path.exists():
        return None
    try:
        curve = InterpolationResult.load(path)
    except RunError as err:
        print(f"gpt_tickets: {err}; the curve is computed again")
        return None
    if (curve.round, curve.rewind, curve.seeds, len(curve.alphas)) != (r, k, seeds, points):
        print(f"gpt_tickets: {path} holds another curve; it is computed again")
        return None
    return curve


def _finished_copy(folder: Path, say: Callable[[str], None]) -> tuple[BranchResult, dict[str, torch.Tensor]] | None:
    """A trained copy's result and weights, each digest-checked; a damaged one is trained again."""
    if not RunDir.done(folder).exists():
        return None
    try:
        return BranchResult.load(RunDir.done(folder)), load_tensors(folder / "trained.safetensors")
    except RunError as err:
        say(f"gpt_tickets: {err}; the copy is trained again")
        return None


# ------------------------------------------------------------------------------------------------------ checks


def _checked(
    run: RunDir, cfg: RunConfig, rewind_steps: list[int], round: int | None, seeds: list[int], points: int
) -> int:
    """Refuse bad input in one line before anything is written; returns the round."""
    steps = cfg.train.steps
    allowed = f"allowed: distinct integers 0..{steps} (train.steps)"
    check(
        isinstance(rewind_steps, list) and bool(rewind_steps), f"rewind_steps={rewind_steps!r} lists no step; {allowed}"
    )
    for k in rewind_steps:
        check(isinstance(k, int) and not isinstance(k, bool), f"rewind step {k!r} is not an integer; {allowed}")
        check(0 <= k <= steps, f"rewind step {k} is {'negative' if k < 0 else 'beyond train.steps'}; {allowed}")
        check(rewind_steps.count(k) == 1, f"rewind_steps={rewind_steps} lists step {k} twice; {allowed}")
    ok = isinstance(points, int) and not isinstance(points, bool) and points >= 3
    check(ok, f"points={points!r} is not allowed; the path needs at least 3 points (its ends and one between), e.g. 11")
    check_seeds("seeds", seeds)
    check(len(seeds) == 2, f"seeds={seeds} must be exactly two distinct seeds, the data orders of the two copies")
    check(max(seeds) <= MAX_SEED, f"seeds={seeds}: a seed sets a data order; choose 0..{MAX_SEED}")
    r = cfg.prune.rounds if round is None else round
    ok = isinstance(r, int) and not isinstance(r, bool) and 0 <= r <= cfg.prune.rounds
    check(ok, f"round={r!r} is not allowed; the run has rounds 0..{cfg.prune.rounds} (0: the dense model)")
    finished = run.finished_rounds(cfg.prune.rounds)
    if r not in finished:
        have = f"finished rounds: {', '.join(map(str, finished))}" if finished else "no round has finished yet"
        raise ConfigError(f"round {r} of the run in {str(run.root)!r} is not finished ({have})")
    return r


# ------------------------------------------------------------------------------------------------------ running


def run_stability(
    run_dir: str | Path,
    rewind_steps: list[int],
    round: int | None = None,
    seeds: list[int] | None = None,
    points: int = 11,
    accelerator: Accelerator | None = None,
) -> list[InterpolationResult]:
    """The stability of round ``round``'s mask (default: the final round's, the ticket's; 0: the dense model) to SGD
    noise from each of round 0's ``rewind_steps``: two copies trained on the data orders of ``seeds`` (default: the
    run's seed + 1 and + 2), and the loss on ``points`` points of the line between them.

    Returns one curve per rewind step, in step order. Finished curves are read back without building data or model;
    finished copies are not retrained (their weights are kept); a killed copy resumes from its checkpoint. Bad input
    (no run there, rewind steps outside 0..train.steps or repeated, fewer than 3 points, a round not finished, seeds
    not two distinct integers) raises ``ConfigError`` before anything is written.
    """
    run = RunDir(run_dir)
    cfg = run.stored_config()
    seeds = default_seeds(cfg) if seeds is None else seeds
    r = _checked(run, cfg, rewind_steps, round, seeds, points)
    steps = sorted(rewind_steps)
    curves = {k: _finished_curve(_curve_path(run, r, k, seeds, points), r, k, seeds, points) for k in steps}
    if all(curve is not None for curve in curves.values()):  # read back without building data, model and trainer
        return [curves[k] for k in steps]
    with RunContext(cfg, accelerator or accelerator_for(cfg), claim=False) as ctx:
        todo = [k for k in steps if curves[k] is None]
        starts = _start_weights(ctx, [k for k in todo if not _copies_done(ctx, r, k, seeds)])
        for i, k in enumerate(todo):
            curves[k] = _stability_at(ctx, r, k, seeds, points, starts.get(k), log_offset=2 * i * cfg.train.steps)
    return [curves[k] for k in steps]


def _copies_done(ctx: RunContext, r: int, k: int, seeds: list[int]) -> bool:
    return all(_finished_copy(_folder(ctx.run_dir, r, k) / f"seed_{s}", lambda _: None) for s in seeds)


def _stability_at(
    ctx: RunContext, r: int, k: int, seeds: list[int], points: int, start: Path | None, log_offset: int
) -> InterpolationResult:
    """The two copies from step k (each trained unless done), then the curve between them, saved."""
    cfg, acc = ctx.cfg, ctx.acc
    offset = (cfg.prune.rounds + 1) * cfg.train.steps + log_offset  # on the trackers' axis, after the rounds
    (_, a), (_, b) = (_copy(ctx, r, k, s, start, offset + j * cfg.train.steps) for j, s in enumerate(seeds))
    alphas, evaluations = interpolate(ctx.model, a, b, points, ctx.validate)
    val_nll = [e.nll for e in evaluations]
    curve = InterpolationResult(
        round=r,
        rewind=k,
        seeds=list(seeds),
        alphas=alphas,
        val_nll=val_nll,
        val_perplexity=[e.perplexity for e in evaluations],
        barrier=loss_barrier(val_nll),
    )
    acc.print(f"stability round {r} rewind {k}: barrier {curve.barrier:.4f} nats")
    if acc.is_main_process:
        curve.save(_curve_path(ctx.run_dir, r, k, seeds, points))
    acc.wait_for_everyone()
    return curve


def _copy(
    ctx: RunContext, r: int, k: int, seed: int, start: Path | None, log_offset: int
) -> tuple[BranchResult, dict[str, torch.Tensor]]:
    """One copy: round r's mask on round 0's step-k weights (``start``), trained like a round on seed's data order;
    read back when done."""
    folder = _folder(ctx.run_dir, r, k) / f"seed_{seed}"
    finished = _finished_copy(folder, ctx.acc.print)
    if finished is not None:
        return finished
    if start is None:  # it was whole when the start weights were gathered, and is damaged now
        raise RunError(f"{folder} was damaged while the run read it; run the command again")

    def begin() -> Mask:
        load_parameters(ctx.model, start)
        return ctx.run_dir.round_mask(r)

    phase = Phase(
        key=f"stability round {r} rewind {k} seed {seed}",
        folder=folder,
        start=begin,
        log_offset=log_offset,
        keep_trained=True,
        data_seed=seed,
    )
    trained = ctx.train(phase)
    params = {"round": r, "seed": seed, "rewind": k}
    result = BranchResult.measured(
        trained.mask, ctx.model_type, trained.outcome, trained.perplexity, round=r, branch=BRANCH, params=params
    )
    ctx.finish(phase, result)
    return result, parameters_cpu(ctx.model)


def _start_weights(ctx: RunContext, steps: list[int]) -> dict[int, Path]:
    """The file of round 0's weights at each of ``steps``: saved by round 0 (0, the rewind step, the rewind points,
    and its trained weights at train.steps while kept), else recomputed; the missing ones in one pass."""
    cfg, run = ctx.cfg, ctx.run_dir
    saved = run.saved_steps(cfg)
    if run.round(0).joinpath("trained.safetensors").exists():
        saved.setdefault(cfg.train.steps, run.round(0) / "trained.safetensors")
    files = {k: saved.get(k, _root(run) / "weights" / f"step_{k}.safetensors") for k in steps}
    missing = {k: path for k, path in files.items() if k not in saved and not _whole(path, ctx.acc.print)}
    if missing:
        recompute_round_0(ctx, missing)
    return files


def _whole(path: Path, say: Callable[[str], None]) -> bool:
    if not path.exists():
        return False
    try:
        load_tensors(path)
    except RunError as err:
        say(f"gpt_tickets: {err}; it is recomputed")
        return False
    return True


def recompute_round_0(ctx: RunContext, files: dict[int, Path]) -> None:
    """Round 0's first max(files) steps again, from the initial weights with the run's seed, data order and schedule
    (over train.steps, as round 0 ran): bitwise round 0's weights on the same machine. The weights after each step k
    of ``files`` are saved to ``files[k]`` as the pass reaches it, so a killed pass keeps the steps it saved."""
    acc, last = ctx.acc, max(files)
    load_parameters(ctx.model, ctx.run_dir.init)

    def on_step(step: int, loss: torch.Tensor) -> None:
        if step in files and acc.is_main_process:
            files[step].parent.mkdir(parents=True, exist_ok=True)
            save_parameters(ctx.model, files[step])

    ctx.trainer.train(MaskedParameters(ctx.model, ctx.full_mask), on_step, desc=f"round 0 to step {last}", stop_at=last)
    acc.wait_for_everyone()
