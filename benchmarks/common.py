"""What every benchmark shares: describing the machine and updating its own section of BENCHMARKS.md."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

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
