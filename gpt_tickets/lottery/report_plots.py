"""What each plot of a report shows, gathered from finished runs, and what the runs lack for it.

The numbers are the ones the tables show (each phase's digest-checked result: the same as ``results.json``); masks
are read through ``RunDir.round_mask`` and each branch's checksum, so a plot never shows a damaged or swapped file.
A run without what a plot needs is not an error: the plot shows the rest, or is not drawn, and ``missing`` says
what to run. Drawing is ``reporting.plots``'s; this module only reads and counts.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import ConfigError, RunError
from ..models.families import PRUNABLE_PATTERNS, classify
from ..reporting.plots import (
    Bar,
    Barriers,
    Heatmap,
    OverlapPlot,
    PerplexityPlot,
    PlotData,
    Point,
    Series,
    Spread,
    StabilityPlot,
)
from ..reporting.summary import Group, Report
from ..sparsity.masks import Mask
from ..sparsity.report import sparsity_report, weight_kind
from .branches.registry import get_branch
from .results import BranchResult
from .stability import STABLE_BARRIER, InterpolationResult, recommend

if TYPE_CHECKING:
    from .combine import FinishedRun

ROUND_GROUPS = ("dense", "imp")  # RoundResult.label(): round 0 and the rounds of IMP
DENSE_LONG = "dense_long"
CONTROLS = ("random_reinit", "random_prune", DENSE_LONG)
ONE_SHOT = ("oneshot_magnitude", "wanda")
TOTALS = {"attention": "attention (all)", "mlp": "MLP (all)"}


def remaining(sparsity: float) -> float:
    """The x of the perplexity plot: the share of prunable weights kept, in percent."""
    return 100 * (1 - sparsity)


def gather(runs: Sequence[FinishedRun], summary: Report) -> tuple[list[PlotData], list[str]]:
    """Every plot the runs have data for, in the report's order, and what each lacks (with the command that adds
    it). Reads and checks every mask and curve it uses, so nothing is written before a damaged file is found."""
    final = final_round(runs)
    plots = [
        perplexity_plot(summary),
        heatmap(runs, final) if final else None,
        overlap_plot(runs, final) if final else None,
        stability_plot(runs),
    ]
    drawn = [p for p in plots if p is not None]
    return drawn, missing(runs, final, drawn)


def final_round(runs: Sequence[FinishedRun]) -> int | None:
    """The last round every run with rounds has finished (the ticket's, when all are done); None without any."""
    lasts = [run.rounds[-1].round for run in runs if run.rounds]
    return min(lasts) if lasts else None


# ----------------------------------------------------------------------------------- perplexity vs sparsity


def perplexity_plot(summary: Report) -> PerplexityPlot | None:
    """The ticket, dense at equal steps, dense trained as long, and every other branch group, from the summary's
    groups (so the same means as the tables)."""
    rounds = {g.round: g for g in summary.groups if g.name in ROUND_GROUPS}
    if not rounds:
        return None
    dense_long_groups = {s.group for s in summary.samples if _is_branch(s.result, DENSE_LONG)}
    legend = {s.group: legend_label(s.result) for s in summary.samples if isinstance(s.result, BranchResult)}
    baselines: dict[str, list[Point]] = {}
    for g in summary.groups:
        if g.name not in ROUND_GROUPS and g.name not in dense_long_groups:
            baselines.setdefault(g.name, []).append(_point(g))
    return PerplexityPlot(
        ticket=Series("ticket (IMP rounds)", tuple(_point(g) for g in rounds.values())),
        dense=Spread(rounds[0].perplexities) if 0 in rounds else None,
        dense_long=_dense_long(summary, rounds),
        baselines=tuple(Series(legend.get(name, name), tuple(points)) for name, points in baselines.items()),
    )


def legend_label(result: BranchResult) -> str:
    """A branch group's legend entry: its name and the parameters not at their branch's default (the tables name
    them all), so a legend of many baselines fits the figure: ``wanda (compare row)``, ``oneshot_magnitude``."""
    try:
        defaults = {f.name: f.default for f in dataclasses.fields(get_branch(result.branch).Params)}
    except ConfigError:  # a branch this version does not know: every parameter
        defaults = {}
    return result.named(lambda k, v: k not in ("round", "seed") and defaults.get(k, dataclasses.MISSING) != v)


def _point(group: Group) -> Point:
    return Point(remaining(group.sparsity), Spread(group.perplexities))


def _is_branch(result: object, name: str) -> bool:
    return isinstance(result, BranchResult) and result.branch == name


def _dense_long(summary: Report, rounds: dict[int, Group]) -> Series | None:
    """Evaluation j of every ``dense_long`` (after (j + 1) x train.steps steps) at round j's remaining share.

    A dense_long from round 3 repeats the first evaluations of one from round 5 with the same seed (bitwise), so
    each (run, seed, j) counts once: a sample counted twice would shrink the spread.
    """
    values: dict[int, dict[tuple[str, int], float]] = defaultdict(dict)
    for sample in summary.samples:
        if _is_branch(sample.result, DENSE_LONG):
            for j, evaluation in enumerate(sample.result.evaluations):
                values[j][(sample.directory, sample.result.params["seed"])] = evaluation["val_perplexity"]
    points = [
        Point(remaining(rounds[j].sparsity), Spread(tuple(by_seed.values())))
        for j, by_seed in sorted(values.items())
        if j in rounds
    ]
    return Series("dense trained as long as the ticket (dense_long)", tuple(points)) if points else None


# ------------------------------------------------------------------------------------------ sparsity heatmap


def model_type_of(mask: Mask) -> str:
    """The family whose name table lists every masked weight (the run's model need not be built to know it)."""
    for model_type in PRUNABLE_PATTERNS:
        if all(classify(model_type, name) for name in mask):
            return model_type
    raise RunError(f"the mask's weights (e.g. {next(iter(mask), 'none')!r}) belong to no family gpt_tickets knows")


def layer_cells(mask: Mask) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Per layer: each weight kind's share pruned and each group's (attention, mlp) total, from ``sparsity_report``;
    and the weights outside the layers (embeddings). A module's masked bias (unit masks) counts in its weight's
    cell, so a unit mask has the columns of an unstructured one."""
    model_type = model_type_of(mask)
    report = sparsity_report(mask, model_type)
    cells: dict[str, dict[str, float]] = defaultdict(dict)
    outside = {}
    for name, share in report.per_module.items():
        info = classify(model_type, name)
        if info is None or info.layer is None:
            outside[weight_kind(model_type, name)] = share
        else:
            cells[str(info.layer)][weight_kind(model_type, name)] = share
    for layer, groups in report.per_layer.items():
        cells[layer].update({TOTALS[g]: share for g, share in groups.items() if g in TOTALS})
    return cells, outside


def heatmap(runs: Sequence[FinishedRun], final: int) -> Heatmap:
    """Round ``final``'s mask per layer and kind, each cell over the runs."""
    per_run = [layer_cells(run.round_mask(final)) for run in runs if run.rounds]
    rows = sorted({layer for cells, _ in per_run for layer in cells}, key=int)
    seen = dict.fromkeys(kind for cells, _ in per_run for layer in rows for kind in cells.get(layer, {}))
    totals = [t for t in TOTALS.values() if t in seen]
    columns = [*(k for k in seen if k not in totals), *totals]
    cells = tuple(
        tuple(_spread([c[layer][kind] for c, _ in per_run if kind in c.get(layer, {})]) for kind in columns)
        for layer in rows
    )
    names = dict.fromkeys(name for _, outside in per_run for name in outside)
    outside = tuple((name, Spread(tuple(o[name] for _, o in per_run if name in o))) for name in names)
    return Heatmap(final, tuple(rows), tuple(columns), len(totals), cells, outside)


def _spread(values: list[float]) -> Spread | None:
    return Spread(tuple(values)) if values else None


# --------------------------------------------------------------------------------------------- mask overlap


def jaccard(a: Mask, b: Mask) -> float:
    """|A ∩ B| / |A ∪ B| of the kept entries, pooled over every weight (counted exactly, in integers)."""
    if set(a) != set(b):
        raise RunError("two masks of different weights cannot be compared; are they from the same run?")
    both = sum(int((a[n] & b[n]).sum()) for n in a)
    either = sum(int((a[n] | b[n]).sum()) for n in a)
    return both / either


def overlap_plot(runs: Sequence[FinishedRun], final: int) -> OverlapPlot | None:
    """Consecutive rounds of each run, and the ticket (round ``final``) against every branch mask from it."""
    consecutive: dict[str, list[float]] = defaultdict(list)
    to_ticket: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        done = [r.round for r in run.rounds if r.round <= final]
        masks = {r: run.round_mask(r) for r in done}
        for r in done[1:]:
            if r - 1 in masks:
                consecutive[f"{r - 1}→{r}"].append(jaccard(masks[r - 1], masks[r]))
        if final in masks:
            for group, mask in run.branch_masks(final):
                to_ticket[group].append(jaccard(masks[final], mask))
    if not consecutive and not to_ticket:
        return None
    return OverlapPlot(_bars(consecutive), _bars(to_ticket), final)


def _bars(values: dict[str, list[float]]) -> tuple[Bar, ...]:
    return tuple(Bar(label, Spread(tuple(v))) for label, v in values.items())


# ---------------------------------------------------------------------------------------------------- stability


def stability_plot(runs: Sequence[FinishedRun]) -> StabilityPlot | None:
    """Every run's curves: one line per (round, rewind step), its loss at each alpha over the pairs of copies."""
    curves = [c for run in runs for c in _newest_curves(run.curves)]
    if not curves:
        return None
    several_rounds = len({c.round for c in curves}) > 1
    by_path: dict[tuple[int, int, tuple[float, ...]], list[InterpolationResult]] = defaultdict(list)
    by_round: dict[int, list[InterpolationResult]] = defaultdict(list)
    for c in curves:
        by_path[(c.round, c.rewind, tuple(c.alphas))].append(c)
        by_round[c.round].append(c)
    lines = tuple(
        Series(
            (f"round {r}, " if several_rounds else "") + f"k = {k}",
            tuple(Point(a, Spread(tuple(c.val_nll[i] for c in group))) for i, a in enumerate(alphas)),
        )
        for (r, k, alphas), group in sorted(by_path.items(), key=lambda item: item[0][:2])
    )
    barriers = tuple(_barriers(r, group) for r, group in sorted(by_round.items()))
    return StabilityPlot(lines, barriers, STABLE_BARRIER)


def _newest_curves(curves: list[InterpolationResult]) -> list[InterpolationResult]:
    """One curve per pair of copies: the one with the most points (curves of the same copies with other point counts
    are one measurement, not two)."""
    best: dict[tuple[int, int, tuple[int, ...]], InterpolationResult] = {}
    for c in curves:
        key = (c.round, c.rewind, tuple(c.seeds))
        if key not in best or len(c.alphas) > len(best[key].alphas):
            best[key] = c
    return list(best.values())


def _barriers(round: int, curves: list[InterpolationResult]) -> Barriers:
    """The barrier per rewind step over pairs and runs; the recommendation (``stability.recommend``) is made on the
    means plotted, so the star and the threshold line agree."""
    steps: dict[int, list[InterpolationResult]] = defaultdict(list)
    for c in sorted(curves, key=lambda c: c.rewind):
        steps[c.rewind].append(c)
    points = tuple(Point(k, Spread(tuple(c.barrier for c in group))) for k, group in steps.items())
    means = [dataclasses.replace(group[0], barrier=p.y.mean) for group, p in zip(steps.values(), points, strict=True)]
    return Barriers(round, Series(f"barrier, round {round}", points), recommend(means, STABLE_BARRIER))


# ---------------------------------------------------------------------------------------------------- missing


def missing(runs: Sequence[FinishedRun], final: int | None, drawn: Sequence[PlotData]) -> list[str]:
    """What each run lacks for the plots, with the command that adds it."""
    notes = []
    files = {p.file for p in drawn}
    for run in runs:
        where = shlex.quote(run.directory)
        last = run.rounds[-1].round if run.rounds else -1
        if last < run.config.prune.rounds:
            notes.append(
                f"{run.directory}: rounds {last + 1}..{run.config.prune.rounds} are not finished (no ticket to plot "
                "beyond them): run the same `gpt-tickets find` command again to resume it"
            )
        names = {b.branch for b in run.branches}
        for name in (n for n in CONTROLS if n not in names):
            command = f"gpt-tickets branch {where} {name}"
            notes.append(f"perplexity_vs_sparsity.png: no {name} in {run.directory}: `{command}`")
        for name in (n for n in ONE_SHOT if n not in names):
            notes.append(
                f"perplexity_vs_sparsity.png, mask_overlap.png: no one-shot baseline {name} in {run.directory}: "
                f"`gpt-tickets branch {where} {name} --round all`"
            )
        if final is not None and not run.branch_mask_files(final):
            notes.append(
                f"mask_overlap.png: no branch mask at round {final} of {run.directory} to compare the ticket with: "
                f"`gpt-tickets branch {where} random_prune --round {final}`"
            )
        if not run.curves:
            steps = ",".join(map(str, _suggested_rewind_steps(run)))
            notes.append(
                f"stability.png: no stability results in {run.directory}: "
                f"`gpt-tickets stability {where} --rewind-steps {steps}`"
            )
    for plot, needs in ((Heatmap, "a finished pruned round"), (OverlapPlot, "a finished pruned round")):
        if plot.file not in files:
            notes.append(f"{plot.file} is not drawn: it needs {needs}")
    return notes


def _suggested_rewind_steps(run: FinishedRun) -> list[int]:
    """0, the run's rewind step and 1/8, 1/4, 1/2 of training: where stability usually sets in (Frankle et al.)."""
    steps = run.config.train.steps
    return sorted({0, run.config.prune.rewind_step, steps // 8, steps // 4, steps // 2})
