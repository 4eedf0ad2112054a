"""Atomic, self-checking writes: a crash leaves either the old file or the new one, never half of one, and a file
damaged on disk later is noticed when it is read, not used.

Every safetensors file written here carries a SHA-256 of its tensors (names, dtypes, shapes and bytes) in its
metadata, checked by ``load_tensors``; JSON records carry one of their content.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .errors import RunError, first_line

DIGEST_KEY = "gpt_tickets_sha256"


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def share_like_other_files(*paths: Path) -> None:
    """Give files the mode any other new file gets (0644 under the usual umask 022).

    safetensors creates its files 0600, so a ticket copied to a shared folder would be unreadable by colleagues.
    """
    mode = 0o666 & ~_umask()
    for path in paths:
        os.chmod(path, mode)


def _written(path: Path, write) -> None:  # type: ignore[no-untyped-def]
    """Write through a temporary file renamed into place; a full disk or a read-only folder is one line."""
    tmp = _tmp_path(path)
    try:
        write(tmp)
        share_like_other_files(tmp)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise RunError(f"cannot write {path}: {_reason(err)}") from None


def _reason(err: OSError) -> str:
    if err.errno == errno.ENOSPC:
        return "no space left on the device"
    return first_line(err)


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> None:
    metadata = {**(metadata or {}), DIGEST_KEY: tensors_digest(tensors)}
    _written(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_tensors(path: str | Path, required: bool = True) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, checked against the digest it was written with.

    Args:
        required: refuse a file without a digest (every file a run writes has one); ``False`` accepts files from
            other tools and checks those that carry one.
    """
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path} is missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            expected = (f.metadata() or {}).get(DIGEST_KEY)
        tensors = load_file(str(path))
    except Exception as err:  # safetensors raises SafetensorError / OSError for truncated or foreign files
        raise RunError(f"{path} is unreadable (truncated or damaged?): {first_line(err)}") from None
    if expected is None and required:
        raise RunError(f"{path} carries no digest: it was not written by this gpt_tickets run")
    if expected is not None and tensors_digest(tensors) != expected:
        raise RunError(f"{path} is damaged: its tensors do not match the digest they were written with")
    return tensors


def atomic_write_text(text: str, path: str | Path) -> None:
    _written(Path(path), lambda tmp: tmp.write_text(text))


def atomic_write_bytes(data: bytes, path: str | Path) -> None:
    _written(Path(path), lambda tmp: tmp.write_bytes(data))


def atomic_write_json(data: Any, path: str | Path) -> None:
    atomic_write_text(json.dumps(data, indent=2) + "\n", path)


def _json_digest(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def write_checked_json(data: dict[str, Any], path: str | Path) -> None:
    """A JSON object with the SHA-256 of its content as its last entry (``read_checked_json`` verifies it)."""
    atomic_write_json({**data, DIGEST_KEY: _json_digest(data)}, path)


def read_checked_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise RunError(f"{path} is unreadable (truncated or damaged?): {first_line(err)}") from None
    if not isinstance(data, dict) or not isinstance(data.get(DIGEST_KEY), str):
        raise RunError(f"{path} is damaged: not a JSON object with its digest")
    expected = data.pop(DIGEST_KEY)
    if _json_digest(data) != expected:
        raise RunError(f"{path} is damaged: its content does not match the digest it was written with")
    return data


def replace_dir(src: Path, dst: Path) -> None:
    """Move a fully written folder into place, replacing an older one."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old)
    else:
        os.replace(src, dst)
