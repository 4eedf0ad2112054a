"""Results of several seeds side by side: every seed's row, and each group of comparable results summarised.

Pure: the results come in already read (``lottery.combine`` reads and checks run directories); what goes out is
typed rows and the Markdown of ``report.md``. A group is one thing measured once per seed (round r of IMP, or a
branch with the same parameters but its seed), so its spread is the seed-to-seed spread a claim must beat.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from .tables import COLUMNS, markdown_table

SAMPLE_COLUMNS = ("directory", "run seed", *COLUMNS)
GROUP_COLUMNS = ("round", "run", "sparsity", "val ppl: mean ± std (n)", "min", "max")
NO_SPREAD = "-"  # the sample standard deviation of one value is undefined


class Measured(Protocol):
    """A trained phase's result (``lottery.results.PhaseResult`` is one)."""

    round: int
    sparsity: float
    val_perplexity: float

    def row(self) -> list[str]: ...


@dataclass(frozen=True)
class Sample:
    """One seed's result: a round or a branch of the run in ``directory``.

    ``group`` names what it is a sample of, without its seed (``imp``, ``random_prune``, ``random_prune (rewind
    50)``); samples of one round with the same ``group`` are compared.
    """

    directory: str
    run_seed: int
    group: str
    result: Measured

    @property
    def key(self) -> tuple[int, str]:
        return self.result.round, self.group

    def row(self) -> list[str]:
        """The run's directory and seed, then the phase's ``results_table`` row."""
        return [self.directory, str(self.run_seed), *self.result.row()]


@dataclass(frozen=True)
class Group:
    """The samples of one (round, group): validation perplexity over seeds, and the sparsity they share."""

    round: int
    name: str
    perplexities: tuple[float, ...]
    sparsity: float  # the mean: replicates prune to the same sparsity up to near-ties of magnitude

    @property
    def n(self) -> int:
        return len(self.perplexities)

    @property
    def mean(self) -> float:
        return statistics.mean(self.perplexities)

    @property
    def std(self) -> float | None:
        """Sample standard deviation (ddof = 1); None for one sample."""
        return statistics.stdev(self.perplexities) if self.n > 1 else None

    @property
    def min(self) -> float:
        return min(self.perplexities)

    @property
    def max(self) -> float:
        return max(self.perplexities)

    def row(self) -> list[str]:
        spread = NO_SPREAD if self.std is None else f"{self.std:.2f}"
        return [
            str(self.round),
            self.name,
            f"{self.sparsity:.1%}",
            f"{self.mean:.2f} ± {spread} ({self.n})",
            f"{self.min:.2f}",
            f"{self.max:.2f}",
        ]


@dataclass(frozen=True)
class Plot:
    """A PNG beside ``report.md`` (and in a ticket's ``plots/``): its file name, alt text and what it shows."""

    file: str
    title: str
    caption: str

    def markdown(self, folder: str = "") -> str:
        """The image linked relative to the Markdown file (``folder``: its subfolder there, e.g. ``plots/``)."""
        return f"![{self.title}]({folder}{self.file})\n\n{self.caption}"


@dataclass(frozen=True)
class Report:
    """What ``gpt-tickets report`` shows: the runs combined, every sample, the groups they form, the plots drawn
    and what the runs lack for the plots (each with the command that adds it)."""

    runs: tuple[tuple[str, int], ...]  # (directory, seed) of each run, in the order given
    samples: tuple[Sample, ...]
    groups: tuple[Group, ...]
    plots: tuple[Plot, ...] = ()
    missing: tuple[str, ...] = ()


def _order(sample: Sample) -> tuple[int, bool, str]:
    return sample.result.round, sample.group not in ("dense", "imp"), sample.group  # rounds before branches


def summarize(runs: Iterable[tuple[str, int]], samples: Iterable[Sample]) -> Report:
    """Sort the samples (by round, rounds before branches, then in the order given) and group them."""
    ordered = sorted(samples, key=_order)  # stable: within a group, runs in the order given
    members: dict[tuple[int, str], list[Sample]] = {}
    for sample in ordered:
        members.setdefault(sample.key, []).append(sample)
    groups = [
        Group(
            round=r,
            name=name,
            perplexities=tuple(s.result.val_perplexity for s in group),
            sparsity=statistics.mean(s.result.sparsity for s in group),
        )
        for (r, name), group in members.items()
    ]
    return Report(runs=tuple(runs), samples=tuple(ordered), groups=tuple(groups))


def render_markdown(report: Report) -> str:
    """``report.md``: the groups first (what a reader compares), the plots and what they lack, then every seed the
    groups come from."""
    runs = ", ".join(f"{directory} (seed {seed})" for directory, seed in report.runs)
    sections = [
        f"# Report of {len(report.runs)} run(s)\n\nruns: {runs}",
        "## Over seeds\n\n"
        "Each row: one round, or one branch with the same parameters, over the seeds of every run; std is the sample "
        f"standard deviation (ddof = 1, {NO_SPREAD} for one seed).\n\n"
        + markdown_table([list(GROUP_COLUMNS), *(g.row() for g in report.groups)]),
    ]
    if report.plots:
        sections.append("## Plots\n\n" + "\n\n".join(p.markdown() for p in report.plots))
    if report.missing:
        sections.append(
            "## Missing\n\nWhat the plots lack, and the command that adds it:\n\n"
            + "\n".join(f"- {line}" for line in report.missing)
        )
    sections.append("## Every seed\n\n" + markdown_table([list(SAMPLE_COLUMNS), *(s.row() for s in report.samples)]))
    return "\n\n".join(sections) + "\n"
