"""Reading run directories for a report: every finished round and branch, from the files a run checks itself.

Runs are combined only when they are replicates (the same config but the seed), so the spread of a group is the
seed-to-seed spread and nothing else. Everything is read and checked before anything is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.schema import NOT_IN_IDENTITY, RunConfig
from ..errors import ConfigError, RunError, first_line
from ..io import atomic_write_text
from ..reporting.summary import Report, Sample, render_markdown, summarize
from .results import BranchResult, RoundResult
from .run_dir import RunDir

REPORT_DIR = "report"
REPORT_FILE = "report.md"
UNSET = "(unset)"  # a key one config has and the other lacks

@dataclass(frozen=True)
class FinishedRun:
    """A run directory as a report reads it: its config, finished rounds and finished branches."""

    run_dir: RunDir
    config: RunConfig
    rounds: list[RoundResult]
    branches: list[BranchResult]

    @classmethod
    def read(cls, path: str | Path) -> FinishedRun:
        """Every finished round's and branch's result, each checked against its digest (never ``results.json``,
        which carries none)."""
        run = RunDir(path)
        cfg = run.stored_config()
        rounds = [RoundResult.load(RunDir.done(run.round(r))) for r in run.finished_rounds(cfg.prune.rounds)]
        branches = [BranchResult.load(done) for done in (run.root / "branches").glob("*/*/result.json")]
        branches.sort(key=lambda b: (b.branch, b.round, str(_without_seed(b.params)), b.params.get("seed", -1)))
        return cls(run, cfg, rounds, branches)

    @property
    def directory(self) -> str:
        return str(self.run_dir.root)

    def samples(self) -> list[Sample]:
        rounds = [Sample(self.directory, self.config.seed, r.label(), r) for r in self.rounds]
        return rounds + [Sample(self.directory, self.config.seed, branch_group(b), b) for b in self.branches]


def _without_seed(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k not in ("round", "seed")}


def branch_group(result: BranchResult) -> str:
    """What a branch result is a sample of: its name and parameters but its round and seed."""
    extra = ", ".join(f"{k} {v}" for k, v in _without_seed(result.params).items())
    return f"{result.branch} ({extra})" if extra else result.branch


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


def report(run_dirs: Sequence[str | Path], out: str | Path | None = None) -> tuple[Report, Path]:
    """Combine replicate runs (the same config, other seeds) into one report, written to ``out/report.md``.

    Args:
        run_dirs: output_dirs of ``gpt-tickets find`` runs, finished or not (finished rounds and branches count).
        out: the folder of ``report.md`` (default: ``<first run>/report/``).

    Returns:
        The report (every sample, and each group's mean, sample standard deviation, min and max of validation
        perplexity) and the path of ``report.md``.

    Bad input (no run, a directory given twice, runs of different configs or the same seed) raises ``ConfigError``
    and a damaged result ``RunError``, each one line, before anything is written.
    """
    runs = read_runs(run_dirs)
    folder = report_dir(run_dirs, out)
    summary = summarize([(run.directory, run.config.seed) for run in runs], [s for run in runs for s in run.samples()])
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunError(f"cannot write {folder / REPORT_FILE}: {first_line(err)}") from None
    path = folder / REPORT_FILE
    atomic_write_text(render_markdown(summary), path)
    return summary, path
