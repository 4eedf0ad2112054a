"""The report's plots: typed data in, a matplotlib ``Figure`` (or its PNG bytes) out.

Pure: nothing here reads a run or touches pyplot, a GUI backend or matplotlib's global settings; each figure is a
``matplotlib.figure.Figure`` rendered by the Agg canvas, so a report draws the same on a headless node as on a
laptop. A value measured several times (seeds, replicate runs) is a ``Spread``: plotted at its mean, with a bar
from its min to its max (a range, not a standard deviation: with two or three seeds it hides nothing).
"""

from __future__ import annotations

import io
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np
from matplotlib.axes import Axes
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullLocator, PercentFormatter

from .summary import Plot

SIZE_INCHES = (7.0, 4.5)
DPI = 150
MAX_TICKS = 10  # more tick labels than this on one axis would overlap
MAX_ANNOTATED_ROWS = 24  # beyond this a heatmap's cell labels get too small to read: the colour bar tells
SPREAD_NOTE = "mean; bars: min–max over seeds and runs"
TICKET_COLOR = "tab:blue"
OTHER_COLORS = ("tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
MARKERS = ("s", "^", "D", "v", "P", "X", "<", ">")


@dataclass(frozen=True)
class Spread:
    """One quantity measured once per seed or run: plotted at its mean, with a min..max bar when n > 1."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.mean(self.values)  # as ``reporting.summary.Group.mean``: the tables' numbers

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)


@dataclass(frozen=True)
class Point:
    x: float
    y: Spread


@dataclass(frozen=True)
class Series:
    """One line of a plot: its legend label and points (x in the plot's unit, y a ``Spread``)."""

    label: str
    points: tuple[Point, ...]

    @property
    def xs(self) -> list[float]:
        return [p.x for p in self.points]

    @property
    def has_spread(self) -> bool:
        return any(p.y.n > 1 for p in self.points)


class PlotData(Protocol):
    """What ``report`` needs of a plot: its file name, alt text, caption and figure."""

    file: ClassVar[str]
    title: ClassVar[str]

    def caption(self) -> str: ...

    def figure(self) -> Figure: ...


def note(plot: PlotData) -> Plot:
    """The plot as ``report.md`` and the model card name it."""
    return Plot(file=plot.file, title=plot.title, caption=plot.caption())


def png_bytes(figure: Figure) -> bytes:
    """The figure as a PNG of SIZE_INCHES x DPI pixels (no tight bounding box: the size is the figure's)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _figure(ncols: int = 1, width_ratios: Sequence[float] | None = None) -> tuple[Figure, list[Axes]]:
    figure = Figure(figsize=SIZE_INCHES, dpi=DPI, layout="constrained")
    axes = figure.subplots(1, ncols, squeeze=False, width_ratios=width_ratios)[0]
    return figure, list(axes)


def _errorbar(ax: Axes, series: Series, **style: object) -> ErrorbarContainer:
    """The series at its means, with min..max bars where it has several values (NaN, so not drawn, elsewhere)."""
    means = [p.y.mean for p in series.points]
    below = [m - p.y.low if p.y.n > 1 else math.nan for m, p in zip(means, series.points, strict=True)]
    above = [p.y.high - m if p.y.n > 1 else math.nan for m, p in zip(means, series.points, strict=True)]
    return ax.errorbar(series.xs, means, yerr=[below, above], capsize=3, label=series.label, **style)


def _sparse_ticks(values: Sequence[float]) -> list[float]:
    """At most MAX_TICKS of ``values`` (sorted, evenly thinned, ends kept), so tick labels never overlap."""
    ticks = sorted(set(values))
    step = math.ceil(len(ticks) / MAX_TICKS)
    thinned = ticks[::step]
    return thinned if thinned[-1] == ticks[-1] else [*thinned[:-1], ticks[-1]]


def _percent(x: float, _: object = None) -> str:
    return f"{x:.3g}%"


# ----------------------------------------------------------------------------------- perplexity vs sparsity


@dataclass(frozen=True)
class PerplexityPlot:
    """Validation perplexity against the share of prunable weights kept (x: percent, log scale)."""

    file: ClassVar[str] = "perplexity_vs_sparsity.png"
    title: ClassVar[str] = "Validation perplexity vs remaining weights"

    ticket: Series  # the rounds of IMP, round 0 (dense) at 100%
    dense: Spread | None  # round 0: the dense model after the same steps as each round
    dense_long: Series | None  # the dense model trained (j + 1) x train.steps steps, at round j's remaining share
    baselines: tuple[Series, ...]  # every other branch group at its round's sparsity

    def caption(self) -> str:
        parts = [
            "Each round of IMP (the ticket) at its share of remaining prunable weights; the dashed line is the dense "
            "model after the same number of steps as one round (round 0)."
        ]
        if self.dense_long is not None:
            parts.append(
                "`dense_long` is the dense model trained as long as the ticket's whole lineage: after (j + 1) rounds' "
                "steps it is drawn at round j's sparsity."
            )
        if self.baselines:
            parts.append("Controls and baselines sit at the sparsity of the round they start from.")
        if any(s.has_spread for s in self.all_series()) or (self.dense is not None and self.dense.n > 1):
            parts.append("Points are means over seeds (and runs); bars span min to max.")
        return " ".join(parts)

    def all_series(self) -> list[Series]:
        return [self.ticket, *([self.dense_long] if self.dense_long else []), *self.baselines]

    def figure(self) -> Figure:
        return perplexity_vs_sparsity(self)


def perplexity_vs_sparsity(plot: PerplexityPlot) -> Figure:
    figure, (ax,) = _figure()
    if plot.dense is not None:
        ax.axhline(plot.dense.mean, color="0.4", linestyle="--", linewidth=1.3, label="dense, same steps (round 0)")
        if plot.dense.n > 1:
            ax.axhspan(plot.dense.low, plot.dense.high, color="0.4", alpha=0.12, linewidth=0)
    _errorbar(ax, plot.ticket, color=TICKET_COLOR, marker="o", linewidth=2.2, zorder=5)
    if plot.dense_long is not None:
        _errorbar(ax, plot.dense_long, color="0.15", marker="s", linestyle=":", linewidth=1.5)
    for i, series in enumerate(plot.baselines):
        style = {"linestyle": "-" if len(series.points) > 1 else "none", "marker": MARKERS[i % len(MARKERS)]}
        _errorbar(ax, series, color=OTHER_COLORS[i % len(OTHER_COLORS)], linewidth=1.3, markersize=6, **style)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(_sparse_ticks(plot.ticket.xs)))
    ax.xaxis.set_major_formatter(FuncFormatter(_percent))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.invert_xaxis()  # pruning goes to the right
    ax.set_xlabel("remaining prunable weights (%, log scale)")
    ax.set_yscale("log")  # equal ratios look equal, and a baseline far off does not flatten the rest
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 5.0, 7.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.set_ylabel("validation perplexity (log scale)")
    ax.set_title(plot.title)
    ax.grid(alpha=0.3)
    spread = any(s.has_spread for s in plot.all_series())
    title = SPREAD_NOTE if spread else None
    figure.legend(loc="outside lower center", ncols=2, fontsize="small", title=title, title_fontsize="small")
    return figure


# ------------------------------------------------------------------------------------------ sparsity heatmap


@dataclass(frozen=True)
class Heatmap:
    """Sparsity of one round's mask per layer (rows) and weight kind (columns, group totals last)."""

    file: ClassVar[str] = "sparsity_heatmap.png"
    title: ClassVar[str] = "Sparsity per layer and weight matrix"

    round: int
    rows: tuple[str, ...]  # layer indices, top to bottom
    columns: tuple[str, ...]  # weight kinds (attn.c_attn, ...), then the group totals
    totals: int  # how many of the last columns are group totals
    cells: tuple[tuple[Spread | None, ...], ...]  # share pruned (0..1); None where a layer lacks the kind
    outside_layers: tuple[tuple[str, Spread], ...] = ()  # pruned weights in no layer (embeddings)

    def caption(self) -> str:
        runs = max((c.n for row in self.cells for c in row if c is not None), default=1)
        text = (
            f"Share of weights pruned in round {self.round}'s mask, per layer and weight matrix; the last "
            f"{self.totals} columns pool each group (attention, MLP) over its matrices."
        )
        if runs > 1:
            text += f" Mean over {runs} runs (min–max below each value)."
        if self.outside_layers:
            text += " Outside the layers: " + ", ".join(f"{n} {s.mean:.1%}" for n, s in self.outside_layers) + "."
        return text

    def means(self) -> np.ndarray:
        return np.array([[math.nan if c is None else c.mean for c in row] for row in self.cells], dtype=float)

    def figure(self) -> Figure:
        return sparsity_heatmap(self)


def sparsity_heatmap(plot: Heatmap) -> Figure:
    figure, (ax,) = _figure()
    values = np.ma.masked_invalid(plot.means())
    image = ax.imshow(values, cmap="viridis", aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(plot.columns)), plot.columns, rotation=20, ha="right", fontsize="small")
    ax.set_yticks(range(len(plot.rows)), plot.rows)
    ax.tick_params(length=0)
    ax.set_xlabel("weight matrix (group totals right of the white line)")
    ax.set_ylabel("transformer layer")
    ax.set_title(f"{plot.title} (round {plot.round})")
    if plot.totals:
        ax.axvline(len(plot.columns) - plot.totals - 0.5, color="white", linewidth=3)
    if len(plot.rows) <= MAX_ANNOTATED_ROWS:
        _annotate(ax, plot, image.norm)
    figure.colorbar(image, ax=ax, format=PercentFormatter(xmax=1.0, decimals=0), label="pruned (% of the matrix)")
    return figure


def _annotate(ax: Axes, plot: Heatmap, norm: object) -> None:
    size = "small" if len(plot.rows) <= 12 else "xx-small"
    for i, row in enumerate(plot.cells):
        for j, cell in enumerate(row):
            if cell is None:
                continue
            text = f"{cell.mean:.1%}" + (f"\n{cell.low:.1%}–{cell.high:.1%}" if cell.n > 1 else "")
            dark = norm(cell.mean) < 0.55  # viridis: dark at the low end
            ax.text(j, i, text, ha="center", va="center", fontsize=size, color="white" if dark else "black")


# --------------------------------------------------------------------------------------------- mask overlap


@dataclass(frozen=True)
class Bar:
    label: str
    value: Spread


@dataclass(frozen=True)
class OverlapPlot:
    """Jaccard index |A∩B| / |A∪B| of kept weights: consecutive rounds, and the ticket against each branch."""

    file: ClassVar[str] = "mask_overlap.png"
    title: ClassVar[str] = "Mask overlap (Jaccard index of kept weights)"

    consecutive: tuple[Bar, ...]  # "0→1", "1→2", ...
    to_ticket: tuple[Bar, ...]  # one per branch group with a mask at the ticket's round
    ticket_round: int

    def caption(self) -> str:
        parts = []
        if self.consecutive:
            parts.append(
                "Left: overlap of each IMP round's mask with the one before; IMP only removes weights, so it is "
                "the share of the previous round's weights that survive."
            )
        if self.to_ticket:
            parts.append(
                f"{'Right' if self.consecutive else 'Bars'}: overlap of each branch's mask with the ticket's (round "
                f"{self.ticket_round}); 1 is the same mask (branches that reuse the ticket's), a random mask of the "
                "same size scores low."
            )
        spread = any(b.value.n > 1 for b in (*self.consecutive, *self.to_ticket))
        return " ".join(parts) + (" Bars are means over seeds (and runs), whiskers min to max." if spread else "")

    def figure(self) -> Figure:
        return mask_overlap(self)


def _whiskers(bars: Sequence[Bar]) -> list[list[float]]:
    below = [b.value.mean - b.value.low if b.value.n > 1 else math.nan for b in bars]
    above = [b.value.high - b.value.mean if b.value.n > 1 else math.nan for b in bars]
    return [below, above]


def _label_bars(ax: Axes, bars: Sequence[Bar], horizontal: bool) -> None:
    """Each bar's mean written just past its whisker (or its end), so the label never sits on the whisker."""
    crowded = not horizontal and len(bars) > 3  # side by side, more than 3 labels of 5 characters collide
    for i, bar in enumerate(bars):
        end = max(bar.value.mean, bar.value.high) + 0.02
        at = (end, i) if horizontal else (i, end)
        ax.text(
            *at,
            f"{bar.value.mean:.3f}",
            fontsize="x-small" if crowded else "small",
            ha="left" if horizontal else "center",
            va="center" if horizontal else "bottom",
            rotation=90 if crowded else 0,
        )


def mask_overlap(plot: OverlapPlot) -> Figure:
    panels = [bars for bars in (plot.consecutive, plot.to_ticket) if bars]
    # The branch panel's labels are long (a branch and its parameters): give it the room.
    figure, axes = _figure(len(panels), width_ratios=[1, 1.25] if len(panels) == 2 else None)
    figure.suptitle(plot.title)
    if plot.consecutive:
        ax = axes[0]
        means = [b.value.mean for b in plot.consecutive]
        labels = [b.label for b in plot.consecutive]
        whiskers = _whiskers(plot.consecutive)
        ax.bar(labels, means, yerr=whiskers, capsize=3, color=TICKET_COLOR, label="consecutive IMP rounds")
        _label_bars(ax, plot.consecutive, horizontal=False)
        if len(labels) > MAX_TICKS:
            ax.tick_params(axis="x", labelrotation=90, labelsize="x-small")
        ax.set_ylim(0, 1.15)
        ax.set_xlabel("IMP rounds (previous → next)")
        ax.set_ylabel("Jaccard index |A∩B| / |A∪B|")
        ax.set_title("consecutive rounds", fontsize="medium")
        ax.grid(alpha=0.3, axis="y")
    if plot.to_ticket:
        ax = axes[-1]
        labels = [b.label for b in plot.to_ticket]
        means = [b.value.mean for b in plot.to_ticket]
        colors = [OTHER_COLORS[i % len(OTHER_COLORS)] for i in range(len(labels))]
        whiskers = _whiskers(plot.to_ticket)
        ax.barh(labels, means, xerr=whiskers, capsize=3, color=colors, label="branches vs the ticket")
        _label_bars(ax, plot.to_ticket, horizontal=True)
        ax.set_xlim(0, 1.3)
        ax.set_xticks([0, 0.5, 1])  # a narrow panel: five ticks ran into each other
        ax.invert_yaxis()  # first group on top
        ax.tick_params(axis="y", labelsize="small")
        ax.set_xlabel("Jaccard index")
        ax.set_title(f"vs the ticket (round {plot.ticket_round})", fontsize="medium")
        ax.grid(alpha=0.3, axis="x")
    return figure


# ---------------------------------------------------------------------------------------------------- stability


@dataclass(frozen=True)
class Barriers:
    """The barrier (nats) per rewind step of one round, and the step recommended (None: none is stable)."""

    round: int
    series: Series  # x: rewind step, y: barrier
    recommended: int | None


@dataclass(frozen=True)
class StabilityPlot:
    """Linear mode connectivity: the loss along the path between two copies trained from step k, and its barrier."""

    file: ClassVar[str] = "stability.png"
    title: ClassVar[str] = "Stability to SGD noise (linear mode connectivity)"

    curves: tuple[Series, ...]  # x: alpha (0..1), y: validation NLL (nats/token); one per (round, rewind)
    barriers: tuple[Barriers, ...]  # one per round
    threshold: float

    def caption(self) -> str:
        advice = "; ".join(
            f"round {b.round}: " + ("no step is stable" if b.recommended is None else f"k = {b.recommended}")
            for b in self.barriers
        )
        return (
            "Left: validation loss along the straight line between two copies trained from the rewind step k with "
            "different data orders (alpha 0 and 1 are the copies). Right: the barrier (the path's maximum minus the "
            f"mean of its ends) per k, with the threshold {self.threshold:g} nats; recommended (the earliest k "
            f"below it): {advice}."
        )

    def figure(self) -> Figure:
        return stability(self)


def stability(plot: StabilityPlot) -> Figure:
    figure, (left, right) = _figure(2)
    figure.suptitle(plot.title)
    for i, curve in enumerate(plot.curves):
        _errorbar(left, curve, color=OTHER_COLORS[i % len(OTHER_COLORS)], marker=".", linewidth=1.3)
    left.set_xlabel("interpolation alpha (0: copy A, 1: copy B)")
    left.set_ylabel("validation loss (NLL, nats/token)")
    left.set_title("loss along the path", fontsize="medium")
    left.grid(alpha=0.3)
    for i, barriers in enumerate(plot.barriers):
        color = ("0.15", TICKET_COLOR, *OTHER_COLORS)[i % (len(OTHER_COLORS) + 2)]
        _errorbar(right, barriers.series, color=color, marker="o", linewidth=1.5)
        if barriers.recommended is not None:
            at = next(p for p in barriers.series.points if p.x == barriers.recommended)
            right.plot(
                [at.x],
                [at.y.mean],
                marker="*",
                markersize=16,
                color="gold",
                markeredgecolor="black",
                linestyle="none",
                zorder=6,
                label=f"recommended k = {barriers.recommended}",
            )
    threshold = f"threshold {plot.threshold:g} nats"
    right.axhline(plot.threshold, color="tab:red", linestyle="--", linewidth=1.2, label=threshold)
    steps = [x for b in plot.barriers for x in b.series.xs]
    right.xaxis.set_major_locator(FixedLocator(_sparse_ticks(steps)))
    right.set_xlabel("rewind step k (optimizer steps)")
    right.set_ylabel("barrier (nats/token)")
    right.set_title("barrier per rewind step", fontsize="medium")
    right.grid(alpha=0.3)
    handles, labels = [], []
    for ax in (left, right):
        h, lab = ax.get_legend_handles_labels()
        handles += h
        labels += lab
    spread = any(s.has_spread for s in (*plot.curves, *(b.series for b in plot.barriers)))
    title = SPREAD_NOTE if spread else None
    ncols = min(4, len(labels))
    figure.legend(handles, labels, loc="outside lower center", ncols=ncols, fontsize="small", title=title)
    return figure
