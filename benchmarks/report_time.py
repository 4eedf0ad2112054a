"""Time of ``gpt-tickets report`` on a finished run, split into reading and plotting.

- reading: ``combine.prepare``: every result and stability curve (digest-checked), every round and branch mask the
  plots use (checked against its result's checksum), the tables and the plots' data;
- plotting: ``combine.draw``: each figure built and rendered to PNG by Agg;
- writing: the PNGs and ``report.md``, each through a temporary file renamed into place.

Each is the median of ``--repeats`` calls in one process, after one warm-up call (imports, matplotlib's font cache);
the whole command (``python -m gpt_tickets.cli report``, interpreter start and imports included) is timed once. The
report goes to a temporary folder (``--out`` to keep it), so the run directory is only read.

    python -m benchmarks.report_time [RUN_DIR] [--repeats 10] [--out DIR] [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from benchmarks.common import publish
from gpt_tickets.lottery.combine import draw, prepare, write
from gpt_tickets.reporting.tables import markdown_table

T = TypeVar("T")


def _timed(call: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, float]:
    start = time.perf_counter()
    value = call(*args, **kwargs)
    return value, time.perf_counter() - start


def measure(run_dir: str, out: Path, repeats: int) -> dict[str, list[float]]:
    """Seconds of each stage over ``repeats`` calls (after one warm-up call, not counted)."""
    times: dict[str, list[float]] = {"reading": [], "plotting": [], "writing": []}
    for i in range(repeats + 1):
        prepared, reading = _timed(prepare, [run_dir], out=out)
        pngs, plotting = _timed(draw, prepared.plots)
        _, writing = _timed(write, prepared, pngs)
        if i > 0:
            for stage, seconds in zip(times, (reading, plotting, writing), strict=True):
                times[stage].append(seconds)
    return times


def whole_command(run_dir: str, out: Path) -> float:
    command = [sys.executable, "-m", "gpt_tickets.cli", "report", run_dir, "--out", str(out)]
    _, seconds = _timed(subprocess.run, command, check=True, capture_output=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", default="runs/tiny", help="a finished run (default: runs/tiny)")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per stage (default: 10)")
    parser.add_argument("--out", default=None, help="keep the report in this folder (default: a temporary one)")
    parser.add_argument("--write", default=None, help="rewrite this benchmark's section of this Markdown file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.out) if args.out else Path(scratch) / "report"
        times = measure(args.run_dir, out, args.repeats)
        command = whole_command(args.run_dir, out)
        plots = sorted(p.name for p in out.glob("*.png"))
    rows = [["stage", f"median s ({args.repeats} calls)", "min s", "max s"]]
    rows += [[stage, f"{statistics.median(s):.3f}", f"{min(s):.3f}", f"{max(s):.3f}"] for stage, s in times.items()]
    total = sum(statistics.median(s) for s in times.values())
    publish(
        "Report generation",
        [
            f"`gpt-tickets report {args.run_dir}` ({len(plots)} plots: {', '.join(plots)}):",
            "",
            markdown_table(rows),
            "",
            f"Reading + plotting + writing: {total:.2f} s; the whole command, interpreter start and imports "
            f"included: {command:.2f} s.",
        ],
        args.write,
    )


if __name__ == "__main__":
    main()
