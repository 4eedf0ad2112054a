"""Atomic writes: a crash leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> None:
    path = Path(path)
    tmp = _tmp_path(path)
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def atomic_write_text(text: str, path: str | Path) -> None:
    path = Path(path)
    tmp = _tmp_path(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_write_json(data: Any, path: str | Path) -> None:
    atomic_write_text(json.dumps(data, indent=2) + "\n", path)


def replace_dir(src: Path, dst: Path) -> None:
    """Move a fully written folder into place, replacing an older one."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old)
    else:
        os.replace(src, dst)
