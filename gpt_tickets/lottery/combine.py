"""Reading run directories for a report: every finished round and branch, from the files a run checks itself, and
writing the report: ``report.md`` and its plots.

Runs are combined only when they are replicates (the same config but the seed), so the spread of a group is the
seed-to-seed spread and nothing else. Everything is read, checked and drawn before anything is written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.schema import NOT_IN_IDENTITY, RunConfig
from ..errors import ConfigError, RunError, first_line
from ..io import atomic_write_bytes, atomic_write_text
from ..reporting.plots import Heatmap, OverlapPlot, PerplexityPlot, PlotData, StabilityPlot, note, png_bytes
from ..reporting.summary import Report, Sample, render_markdown, summarize
from ..sparsity.masks import Mask, mask_checksum
from .report_plots import gather, legend_label
from .results import BranchResult, RoundResult
from .run_dir import RunDir
from .stability import InterpolationResult, read_interpolations

REPORT_DIR = "report"
REPORT_FILE = "report.md"
MASK_FILE = "mask.safetensors"
UNSET = "(unset)"  # a key one config has and the other lacks
PLOT_FILES = tuple(p.file for p in (PerplexityPlot, Heatmap, OverlapPlot, StabilityPlot))

@dataclass(frozen=True)
class FinishedRun:
    """A run directory as a report reads it: its config, finished rounds, finished branches (and the folder of
    each) and stability curves."""

    run_dir: RunDir
    config: RunConfig
    rounds: list[RoundResult]
    branches: list[BranchResult]
    branch_dirs: list[Path] = dataclasses.field(default_factory=list)  # the folder of each of ``branches``
    curves: list[InterpolationResult] = dataclasses.field(default_factory=list)

    @classmethod
    def read(cls, path: str | Path) -> FinishedRun:
        """Every finished round's and branch's result and every stability curve, each checked against its digest
        (never ``results.json``, which carries none)."""
        run = RunDir(path)
        cfg = run.stored_config()
        rounds = [RoundResult.load(RunDir.done(run.round(r))) for r in run.finished_rounds(cfg.prune.rounds)]
        found = [(BranchResult.load(done), done.parent) for done in (run.root / "branches").glob("*/*/result.json")]
        found.sort(key=lambda pair: _branch_order(pair[0]))
        branches, folders = [b for b, _ in found], [folder for _, folder in found]
        return cls(run, cfg, rounds, branches, folders, read_interpolations(run))

    def round_mask(self, r: int) -> Mask:
        return self.run_dir.round_mask(r)

    def branch_mask_files(self, round: int) -> list[tuple[BranchResult, Path]]:
        """The pruned branches from ``round`` and the mask each finished with: beside its result, or for a branch of
        segments its last segment's (whose checksum the result records). Dense ones (``dense_long``) are left out."""
        pairs = zip(self.branches, self.branch_dirs, strict=True)
        found = [(b, _final_mask_file(folder)) for b, folder in pairs if b.round == round and b.sparsity > 0]
        return [(b, path) for b, path in found if path is not None]

    def branch_masks(self, round: int) -> list[tuple[str, Mask]]:
        """(group, mask) of each branch from ``round`` with a mask, each checked against its result's checksum."""
        masks = []
        for result, path in self.branch_mask_files(round):
            mask = Mask.load(path)
            if mask_checksum(mask) != result.mask_checksum:
                raise RunError(f"{path} is not the mask its branch finished with")
            masks.append((legend_label(result), mask))
        return masks

    @property
    def directory(self) -> str:
        return str(self.run_dir.root)

    def samples(self) -> list[Sample]:
        rounds = [Sample(self.directory, self.config.seed, r.label(), r) for r in self.rounds]
        return rounds + [Sample(self.directory, self.config.seed, branch_group(b), b) for b in self.branches]


def _final_mask_file(folder: Path) -> Path | None:
    numbered = [p for p in folder.glob("segment_*") if p.name.removeprefix("segment_").isdigit()]
    segments = sorted(numbered, key=lambda p: int(p.name.removeprefix("segment_")))
    candidates = [folder / MASK_FILE, *(s / MASK_FILE for s in segments[-1:])]
    return next((path for path in candidates if path.is_file()), None)


def _branch_order(b: BranchResult) -> tuple[str, int, str, int]:
    return b.branch, b.round, str(_without_seed(b.params)), b.params.get("seed", -1)


def _without_seed(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k not in ("round", "seed")}


def branch_group(result: BranchResult) -> str:
    """What a branch result is a sample of: its name and parameters but its round and seed."""
    return result.named(lambda k, _: k not in ("round", "seed"))


def _compared(cfg: RunConfig) -> dict[str, Any]:
    """What replicates share: everything that affects results (``RunConfig.identity``) but the seed."""
    data = cfg.identity()
    data.pop("seed")
    return data


def first_difference(ours: dict[str, Any], theirs: dict[str, Any], prefix: str = "") -> tuple[str, Any, Any] | None:
    """The first (dotted key, our value, their value) that differs, in the config's own order."""
    for key in [*ours, *(k for k in theirs if k not in ours)]:
        a, b = ours.get(key, UNSET), theirs.get(key, UNSET)
        if isinstance(a, dict) and isinstance(b, dict):
            found = first_difference(a, b, f"{prefix}{key}.")
            if found is not None:
                return found
        elif a != b:
            return f"{prefix}{key}", a, b
    return None


def check_replicates(first: FinishedRun, other: FinishedRun) -> None:
    """Refuse runs that are not the same experiment with another seed, naming the first key that differs."""
    if first.run_dir.root.resolve() == other.run_dir.root.resolve():
        raise ConfigError(f"{first.directory} is given twice; give each run directory once")
    difference = first_difference(_compared(first.config), _compared(other.config))
    if difference is not None:
        key, ours, theirs = difference
        raise ConfigError(
            f"{first.directory} and {other.directory} are not replicates: {key}: {ours} vs {theirs} (runs may "
            f"differ only in seed, {', '.join(NOT_IN_IDENTITY)})"
        )
    if first.config.seed == other.config.seed:
        raise ConfigError(
            f"{first.directory} and {other.directory} are the same run (same config, seed {first.config.seed}): "
            "a seed counted twice would shrink the spread; give runs with different seeds"
        )


def read_runs(run_dirs: Sequence[str | Path]) -> list[FinishedRun]:
    """The runs, each checked, and checked to be replicates of the first and of each other."""
    if not run_dirs:
        raise ConfigError("no run directory given; give the output_dir of one or more `gpt-tickets find` runs")
    runs = [FinishedRun.read(path) for path in run_dirs]
    for i, run in enumerate(runs):
        for other in runs[i + 1 :]:
            check_replicates(run, other)
    return runs


def report_dir(run_dirs: Sequence[str | Path], out: str | Path | None = None) -> Path:
    """Where ``report.md`` goes: ``out``, or ``<first run>/report/``."""
    folder = Path(out) if out is not None else Path(run_dirs[0]) / REPORT_DIR
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out {str(folder)!r} is a file; choose a directory")
    return folder


@dataclass(frozen=True)
class PreparedReport:
    """A report read and checked, not yet drawn: where it goes, its tables, and the data of each plot."""

    folder: Path
    summary: Report
    plots: list[PlotData]


def prepare(run_dirs: Sequence[str | Path], out: str | Path | None = None) -> PreparedReport:
    """Read and check the runs and everything the plots use (masks, curves); writes nothing."""
    runs = read_runs(run_dirs)
    folder = report_dir(run_dirs, out)
    summary = summarize([(run.directory, run.config.seed) for run in runs], [s for run in runs for s in run.samples()])
    plots, missing = gather(runs, summary)
    summary = dataclasses.replace(summary, plots=tuple(note(p) for p in plots), missing=tuple(missing))
    return PreparedReport(folder, summary, plots)


def draw(plots: Sequence[PlotData]) -> dict[str, bytes]:
    """Each plot as PNG bytes, by file name."""
    return {plot.file: png_bytes(plot.figure()) for plot in plots}


def write(prepared: PreparedReport, pngs: dict[str, bytes]) -> Path:
    """The PNGs, then ``report.md`` (each through a temporary file renamed into place); a plot file left from an
    earlier report that this one does not draw is removed, so the folder holds what ``report.md`` links."""
    folder = prepared.folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name in PLOT_FILES:
            if name not in pngs:
                (folder / name).unlink(missing_ok=True)
    except OSError as err:
        raise RunError(f"cannot write {folder / REPORT_FILE}: {first_line(err)}") from None
    for name, data in pngs.items():
        atomic_write_bytes(data, folder / name)
    path = folder / REPORT_FILE
    atomic_write_text(render_markdown(prepared.summary), path)
    return path


def report(run_dirs: Sequence[str | Path], out: str | Path | None = None) -> tuple[Report, Path]:
    """Combine replicate runs (the same config, other seeds) into one report: ``out/report.md`` and its plots.

    Args:
        run_dirs: output_dirs of ``gpt-tickets find`` runs, finished or not (finished rounds and branches count).
        out: the folder of ``report.md`` and the PNGs (default: ``<first run>/report/``).

    Returns:
        The report (every sample, each group's mean, sample standard deviation, min and max of validation
        perplexity, the plots drawn and what the runs lack for them) and the path of ``report.md``.

    Plots (PNG, each only when the runs hold data for it): ``perplexity_vs_sparsity.png``,
    ``sparsity_heatmap.png``, ``mask_overlap.png`` and ``stability.png``; see ``reporting.plots``.

    Bad input (no run, a directory given twice, runs of different configs or the same seed, ``out`` a file) raises
    ``ConfigError`` and a damaged result or mask ``RunError``, each one line, before anything is written. A run
    lacking what a plot needs is no error: ``report.md``'s "Missing" section says what to run.
    """
    prepared = prepare(run_dirs, out)
    return prepared.summary, write(prepared, draw(prepared.plots))
