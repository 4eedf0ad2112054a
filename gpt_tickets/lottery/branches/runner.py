"""Running a branch: its start weights and mask from a finished round, then training like a round, resumably."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from accelerate import Accelerator

from ...config.schema import RunConfig
from ...errors import ConfigError, RunError
from ...models.params import load_parameters
from ..context import Phase, RunContext, accelerator_for
from ..results import BranchResult
from ..run_dir import RunDir
from .base import Branch, BranchParams, FinishedRound
from .registry import get_branch


def default_params(branch: Branch, cfg: RunConfig) -> BranchParams:
    """The final round, and a seed other than the run's (the run's seed + 1)."""
    return branch.Params(round=cfg.prune.rounds, seed=cfg.seed + 1)


def train_branch(ctx: RunContext, branch: Branch, params: BranchParams, log_offset: int = 0) -> BranchResult:
    """Train ``branch`` in ``ctx``'s run unless its result exists; returns its result."""
    folder = ctx.run_dir.branch(branch.name, params.key())
    finished = _finished(RunDir.done(folder), ctx.acc.print)
    if finished is not None:
        return finished

    def start():
        weights, mask = branch.start(FinishedRound(ctx.run_dir, params.round, ctx.model), params)
        load_parameters(ctx.model, weights)
        return mask

    phase = Phase(
        key=f"branch {branch.name} {params.key()}",
        folder=folder,
        start=start,
        log_offset=log_offset,
        data_seed=branch.data_seed(params),
    )
    trained = ctx.train(phase)
    result = BranchResult.measured(
        trained.mask,
        ctx.model_type,
        trained.outcome,
        trained.perplexity,
        round=params.round,
        branch=branch.name,
        params=params.to_dict(),
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
    round: int | None = None,
    seed: int | None = None,
    accelerator: Accelerator | None = None,
) -> BranchResult:
    """Run branch ``name`` on the finished run in ``run_dir``, from round ``round`` (default: the final round) with
    ``seed`` (default: the run's seed + 1). A finished branch is read back, not recomputed; a killed one resumes.

    Bad input (no run there, an unknown branch, a round not finished, a negative seed) raises ``ConfigError``
    before anything is written.
    """
    run = RunDir(run_dir)
    cfg = run.stored_config()
    branch = get_branch(name)
    params = branch.Params(
        round=cfg.prune.rounds if round is None else round, seed=cfg.seed + 1 if seed is None else seed
    )
    finished = run.finished_rounds(cfg.prune.rounds)
    if params.round not in finished:
        have = f"finished rounds: {', '.join(map(str, finished))}" if finished else "no round has finished yet"
        raise ConfigError(
            f"round {params.round} of the run in {str(run.root)!r} is not finished (the run has rounds "
            f"0..{cfg.prune.rounds}; {have})"
        )
    finished = _finished(RunDir.done(run.branch(branch.name, params.key())), print)
    if finished is not None:  # read back without building data, model and trainer
        return finished
    with RunContext(cfg, accelerator or accelerator_for(cfg), claim=False) as ctx:
        return train_branch(ctx, branch, params, log_offset=(cfg.prune.rounds + 1) * cfg.train.steps)
