"""What every benchmark shares: describing the machine and updating its own section of BENCHMARKS.md."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gpt_tickets.io import atomic_write_text


def machine_description() -> str:
    cpu = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = re.search(r"model name\s*:\s*(.+)", cpuinfo.read_text())
        cpu = found.group(1).strip() if found else cpu
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{cpu}, {os.cpu_count()} cores"
    threads = torch.get_num_threads()
    return f"{device}; torch {torch.__version__} ({threads} threads); Python {platform.python_version()}"


def write_section(path: str | Path, title: str, body: str) -> None:
    """Replace (or append) the ``## title`` section of a Markdown file, leaving the other sections alone."""
    path = Path(path)
    header = "# Benchmarks\n\nRun by hand; each section is rewritten by its script.\n"
    text = path.read_text() if path.exists() else header
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    atomic_write_text(text.rstrip() + "\n", path)


def publish(title: str, lines: list[str], write: str | None) -> None:
    """Print a benchmark's report with the machine it ran on, and rewrite its section of ``write`` if given."""
    text = "\n".join([*lines, "", f"Machine: {machine_description()}"])
    print(text)
    if write:
        write_section(write, title, text)


ROOT = Path(__file__).resolve().parents[1]


def parse_args(parser: argparse.ArgumentParser, default_threads: int = 1) -> argparse.Namespace:
    """The options every parent/child benchmark shares (``--threads``, ``--write``, the hidden ``--child``), parsed;
    torch's threads set as asked."""
    parser.add_argument(
        "--threads", type=int, default=default_threads, help="torch threads on a CPU (0: torch's default)"
    )
    parser.add_argument("--write", default=None, help="update this Markdown file's section")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def answer_child(args: argparse.Namespace, modes: dict[str, Callable[[dict[str, Any]], dict[str, Any]]]) -> bool:
    """In a child process (``--child SPEC``): run ``modes[SPEC["mode"]](SPEC)`` and print its JSON; False in the
    parent."""
    if args.child is None:
        return False
    spec = json.loads(args.child)
    print(json.dumps(modes[spec["mode"]](spec)))
    return True


def run_child(module: str, spec: dict[str, Any], threads: int, env: dict[str, str] | None = None) -> dict[str, Any]:
    """``spec`` measured by ``python -m module --child`` in a fresh process (a clean peak-memory reading); its
    result is the JSON of its last line of output."""
    done = subprocess.run(
        [sys.executable, "-m", module, "--threads", str(threads), "--child", json.dumps(spec)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    if done.returncode != 0:
        raise SystemExit(f"child {spec} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
