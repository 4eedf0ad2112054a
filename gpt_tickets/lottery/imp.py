"""Iterative magnitude pruning with rewinding: the only place that knows the order of rounds.

Round 0 trains the dense model and stores the step-k weights on disk; each round r >= 1 prunes p of the surviving
weights by trained magnitude, rewinds the survivors to step k, retrains with a fresh optimizer and schedule, and
evaluates. Everything that crosses a round lives in the run directory, so a finished round is never recomputed
when the same command runs again, and branches (the controls) start from what the rounds saved.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from accelerate import Accelerator

from ..config.schema import RunConfig
from ..models.params import load_parameters
from ..reporting.tables import results_table
from ..sparsity.masks import Mask
from ..sparsity.nm import prune_nm
from ..sparsity.scores import SCORES
from ..sparsity.select import group_pools, prune_pools
from ..sparsity.units import prune_units
from ..tickets.export import export_ticket
from .branches.base import Branch, BranchParams
from .branches.runner import check_with_data, control_params, train_branches
from .combine import report
from .context import Phase, RunContext, accelerator_for
from .results import RoundResult, RunResults
from .run_dir import RunDir


def find_ticket(cfg: RunConfig, accelerator: Accelerator | None = None) -> RunResults:
    """Run IMP with rewinding as ``cfg`` says, then the branches in ``cfg.controls``, then export the ticket.

    Returns what ``results.json`` holds. Pushing to the Hub (``export.push_to_hub``) is the caller's step after this
    (``gpt-tickets find`` does it; from Python call ``gpt_tickets.push_ticket``).
    """
    controls = control_params(cfg)  # an unknown branch or parameter, a bad value: fails before anything is written
    # The controls' checks against the training data (e.g. Wanda's calibration blocks) run before the first write.
    check_data = functools.partial(check_with_data, branches=controls)
    with RunContext(cfg, accelerator or accelerator_for(cfg), check_data=check_data) as ctx:
        return _run(ctx, controls)


def _run(ctx: RunContext, controls: list[tuple[Branch, BranchParams]]) -> RunResults:
    cfg, acc, run = ctx.cfg, ctx.acc, ctx.run_dir
    results = RunResults(cfg.fingerprint(), acc.num_processes, rounds=[])
    for r in range(cfg.prune.rounds + 1):
        results.rounds.append(_round(ctx, r))
        if acc.is_main_process:
            results.save(run.results)
    results.branches += train_branches(ctx, controls)  # every control at every seed, in order
    final = run.round(cfg.prune.rounds)
    if acc.is_main_process:
        summary, report_path = report([run.root])  # the plots, before the ticket whose card embeds them
        load_parameters(ctx.model, final / "trained.safetensors")
        export_ticket(
            ctx.model,
            ctx.tokenizer,
            run.round_mask(cfg.prune.rounds),
            cfg,
            run.ticket,
            history=results_table(results.phases),
            val_perplexity=results.rounds[-1].val_perplexity,
            dense_val_perplexity=results.rounds[0].val_perplexity,
            report_dir=report_path.parent,
            plots=summary.plots,
        )
        results.complete = True
        results.save(run.results)
    acc.wait_for_everyone()
    results.complete = True
    return results


def _round(ctx: RunContext, r: int) -> RoundResult:
    """Round r: skipped when its result exists; otherwise trained (resuming inside it) and recorded."""
    cfg, run = ctx.cfg, ctx.run_dir
    folder = run.round(r)
    if RunDir.done(folder).exists():
        return RoundResult.load(RunDir.done(folder))
    phase = Phase(
        key=f"round {r}",
        folder=folder,
        start=lambda: _start_round(ctx, r),
        log_offset=r * cfg.train.steps,
        keep_trained=True,
        save_at=_saved_in_round_0(cfg, run) if r == 0 else (),
        final_lr=r > 0 and cfg.prune.retrain == "finetune",
    )
    trained = ctx.train(phase)
    result = RoundResult.measured(trained.mask, ctx.model_type, trained.outcome, trained.perplexity, round=r)
    ctx.finish(phase, result)
    previous = run.round(r - 1) / "trained.safetensors"
    if r > 1 and ctx.acc.is_main_process and previous.exists():
        # After round r is marked done only the newest trained weights are needed to go on; round 0's (the trained
        # dense model) stay, for the one-shot baselines that prune it.
        previous.unlink()
    return result


def _saved_in_round_0(cfg: RunConfig, run: RunDir) -> tuple[tuple[int, Path], ...]:
    """The steps of round 0 whose weights later phases start from: the rewind step k (every round) and the rewind
    points (the rewind_step branch). Each is written before the checkpoint of its step, so it survives a kill."""
    points = ((step, run.rewind_point(step)) for step in cfg.prune.rewind_points)
    return ((cfg.prune.rewind_step, run.rewind), *points)


def _start_round(ctx: RunContext, r: int) -> Mask:
    """Round 0: the initial weights and the full mask. Round r: prune round r-1's trained weights, then rewind them
    to step k (``prune.retrain: rewind``) or keep them (``lr_rewind``, ``finetune``); the mask zeroes the pruned."""
    cfg, run = ctx.cfg, ctx.run_dir
    if r == 0:
        load_parameters(ctx.model, run.init)
        return ctx.full_mask
    load_parameters(ctx.model, run.round(r - 1) / "trained.safetensors")
    previous = run.round_mask(r - 1)
    trained = {n: ctx.model.get_parameter(n) for n in previous}  # pruned where they live, no copy
    mask = _prune_round(ctx, trained, previous, r)
    if cfg.prune.retrain == "rewind":
        load_parameters(ctx.model, run.rewind)
    return mask


def _prune_round(ctx: RunContext, trained: dict[str, torch.Tensor], previous: Mask, r: int) -> Mask:
    """Round r's mask from round r-1's trained weights, by ``prune.structure``: single weights (pools by group and
    scope, lowest score first), whole heads and neurons (``sparsity.units``) or a step toward N:M (``sparsity.nm``)."""
    prune = ctx.cfg.prune
    if prune.structure == "units":
        return prune_units(trained, previous, ctx.model, prune.fraction, prune.unit_allocation, prune.group_fractions)
    if prune.structure == "nm":
        n, m = prune.nm_pattern()
        return prune_nm(trained, previous, ctx.model_type, n, m, round=r, rounds=prune.rounds)
    pools = group_pools(previous, ctx.model_type, prune.fraction, prune.scope, prune.group_fractions)
    return prune_pools(trained, previous, pools, score=SCORES[prune.score])
