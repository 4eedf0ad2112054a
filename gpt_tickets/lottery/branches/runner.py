"""Running a branch: its start weights and mask from a finished round, then training like a round, resumably."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from ...config.schema import RunConfig, check_rounds, check_seeds, control_entry, control_rounds
from ...errors import ConfigError, RunError
from ...models.params import load_parameters
from ...sparsity.masks import Mask
from ..context import Phase, RunContext, accelerator_for
from ..results import BranchResult
from ..run_dir import RunDir
from .base import Branch, BranchParams, FinishedRound
from .registry import get_branch


def branch_params(
    branch: Branch, cfg: RunConfig, round: int, seeds: list[int], own: dict[str, Any], explicit: bool = True
) -> list[BranchParams]:
    """One parameter set per seed, in order, each checked against the run (``cfg``) before anything is written.

    Seeds that are not ``explicit`` (defaults) give a branch that is not seeded (``Branch.seeded``) only the first:
    its other seeds would repeat the same result.
    """
    check_seeds("seeds", seeds)
    params = [branch.params(round, seed, **own) for seed in seeds]
    if not explicit and not branch.seeded(params[0]):
        params = params[:1]
    for p in params:
        branch.check(p, cfg)
    return params


def default_seeds(cfg: RunConfig) -> list[int]:
    """The two seeds after the run's: a spread needs two, and neither is the ticket's own."""
    return [cfg.seed + 1, cfg.seed + 2]


def control_params(cfg: RunConfig) -> list[tuple[Branch, BranchParams]]:
    """The controls ``find`` ends with: every ``controls`` entry on its rounds (``rounds``; default: the final round)
    at every ``control_seeds`` seed (default: the two after the run's, seed + 1 and seed + 2; a branch that is not
    seeded: the first only), in order, each once."""
    seeds = default_seeds(cfg) if cfg.control_seeds is None else cfg.control_seeds
    controls: dict[tuple[str, str], tuple[Branch, BranchParams]] = {}
    for name, entry in map(control_entry, cfg.controls):
        branch = get_branch(name)
        rounds, own = control_rounds(name, entry, cfg.prune.rounds)
        for r in rounds:
            for p in branch_params(branch, cfg, r, seeds, own, explicit=False):
                controls.setdefault((name, p.key()), (branch, p))  # one folder, one result, however often listed
    return list(controls.values())


def check_with_data(train_blocks: int, branches: list[tuple[Branch, BranchParams]]) -> None:
    """Every branch's parameters against the run's number of training blocks (``Branch.check_data``), before any is
    trained."""
    for branch, params in branches:
        branch.check_data(params, train_blocks)


def train_branches(ctx: RunContext, branches: list[tuple[Branch, BranchParams]]) -> list[BranchResult]:
    """Train ``branches`` in order, on the trackers' step axis after the rounds and each after the one before (a
    branch of segments spans all of their steps)."""
    check_with_data(len(ctx.train_blocks), branches)
    offset, results = (ctx.cfg.prune.rounds + 1) * ctx.cfg.train.steps, []
    for branch, params in branches:
        results.append(train_branch(ctx, branch, params, log_offset=offset))
        offset += (branch.segments(params) or 1) * ctx.cfg.train.steps
    return results


def train_branch(ctx: RunContext, branch: Branch, params: BranchParams, log_offset: int = 0) -> BranchResult:
    """Train ``branch`` in ``ctx``'s run unless its result exists; returns its result.

    A branch of segments (``Branch.segments``) trains them in order, each a phase in ``segment_<j>/`` skipped when
    done; its result (``BranchResult.of_segments``) is written last, the marker that every segment is done. A branch
    that does not train (``Branch.trains``) is evaluated from its start as it is, recorded as a trained phase is.
    """
    folder = ctx.run_dir.branch(branch.name, params.key())
    finished = _finished(RunDir.done(folder), ctx.acc.print)
    if finished is not None:
        return finished
    count = branch.segments(params)
    if count is None or not branch.trains(params):
        phase = Phase(
            key=f"branch {branch.name} {params.key()}",
            folder=folder,
            start=_branch_start(ctx, branch, params),
            log_offset=log_offset,
            data_seed=branch.data_seed(params),
        )
        return _train(ctx, phase, branch, params)
    result = BranchResult.of_segments([_segment(ctx, branch, params, j, log_offset) for j in range(count)])
    if ctx.acc.is_main_process:
        result.save(RunDir.done(folder))
    return result


def _segment(ctx: RunContext, branch: Branch, params: BranchParams, j: int, log_offset: int) -> BranchResult:
    """Segment j, read back when done, else trained: segment 0 from the branch's start, segment j from segment
    j-1's trained weights and mask, with a fresh optimizer and schedule (as a round), on the data stream from step
    j x ``train.steps`` on (more data, not the same batches again).
    """
    steps, folder = ctx.cfg.train.steps, ctx.run_dir.branch(branch.name, params.key())
    previous = folder / f"segment_{j - 1}"
    phase = Phase(
        key=f"branch {branch.name} {params.key()} segment {j}",
        folder=folder / f"segment_{j}",
        start=_branch_start(ctx, branch, params) if j == 0 else _continue_from(ctx, previous),
        log_offset=log_offset + j * steps,
        keep_trained=True,
        data_seed=branch.data_seed(params),
        data_offset=j * steps,
    )
    result = _finished(RunDir.done(phase.folder), ctx.acc.print)
    if result is None:
        result = _train(ctx, phase, branch, params)
    if j > 0 and ctx.acc.is_main_process:  # after segment j is done: only the newest trained weights go on
        (previous / "trained.safetensors").unlink(missing_ok=True)
    return result


def _branch_start(ctx: RunContext, branch: Branch, params: BranchParams) -> Callable[[], Mask]:
    def start() -> Mask:
        source = FinishedRound(ctx.run_dir, params.round, ctx.model, train_blocks=ctx.train_blocks)
        weights, mask = branch.start(source, params)
        load_parameters(ctx.model, weights)
        return mask

    return start


def _continue_from(ctx: RunContext, previous: Path) -> Callable[[], Mask]:
    def start() -> Mask:
        load_parameters(ctx.model, previous / "trained.safetensors")
        return Mask.load(previous / "mask.safetensors")

    return start


def _train(ctx: RunContext, phase: Phase, branch: Branch, params: BranchParams) -> BranchResult:
    trained = ctx.train(phase) if branch.trains(params) else ctx.evaluate(phase)
    result = BranchResult.measured(
        trained.mask,
        ctx.model_type,
        trained.outcome,
        trained.perplexity,
        round=params.round,
        branch=branch.name,
        params=params.to_dict(),
        seeded=branch.seeded(params),
    )
    ctx.finish(phase, result)
    return result


def _finished(done: Path, say: Callable[[str], None]) -> BranchResult | None:
    """A finished branch's result; a damaged one is trained again (a branch can always be recomputed)."""
    if not done.exists():
        return None
    try:
        return BranchResult.load(done)
    except RunError as err:
        say(f"gpt_tickets: {err}; the branch is trained again")
        return None


def run_branch(
    run_dir: str | Path,
    name: str,
    round: int | list[int] | str | None = None,
    seeds: list[int] | None = None,
    accelerator: Accelerator | None = None,
    **params: Any,
) -> list[BranchResult]:
    """Run branch ``name`` on the finished run in ``run_dir`` from round ``round`` (default: the final round; a list
    of rounds, or ``"all"``: every pruned round 1..R), once per seed of ``seeds`` (default: the run's seed + 1 and
    + 2; the first only for a branch that is not seeded, ``Branch.seeded``), with the branch's own ``params`` (e.g.
    ``rewind=50``). Returns one result per round and seed, rounds first, in order. A finished branch is read back,
    not recomputed; a killed one resumes.

    Bad input (no run there, an unknown branch or parameter, a bad value, a round not finished, seeds that are
    not distinct integers 0..2**63-1) raises ``ConfigError`` before anything is written.
    """
    run = RunDir(run_dir)
    cfg = run.stored_config()
    branch = get_branch(name)
    rounds = _rounds(round, cfg.prune.rounds)
    given = default_seeds(cfg) if seeds is None else seeds
    every = [p for r in rounds for p in branch_params(branch, cfg, r, given, params, explicit=seeds is not None)]
    finished = run.finished_rounds(cfg.prune.rounds)
    for r in rounds:
        if r not in finished:
            have = f"finished rounds: {', '.join(map(str, finished))}" if finished else "no round has finished yet"
            raise ConfigError(
                f"round {r} of the run in {str(run.root)!r} is not finished (the run has rounds "
                f"0..{cfg.prune.rounds}; {have})"
            )
    results = [_finished(RunDir.done(run.branch(branch.name, p.key())), print) for p in every]
    if all(result is not None for result in results):  # read back without building data, model and trainer
        return results
    with RunContext(cfg, accelerator or accelerator_for(cfg), claim=False) as ctx:
        return train_branches(ctx, [(branch, p) for p in every])


def _rounds(round: int | list[int] | str | None, last: int) -> list[int]:
    """``run_branch``'s rounds: None is the final round; one round is checked where it is used (a round number, a
    finished round); ``all`` or a list as a ``controls`` entry's ``rounds``."""
    if round is None:
        return [last]
    if isinstance(round, int) and not isinstance(round, bool):
        return [round]
    return check_rounds("round", round, last)
