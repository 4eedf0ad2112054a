"""Crash-safe checkpoints inside a round, with Accelerate's ``save_state`` / ``load_state``.

Where a round stands (its phase and step) is an object registered for checkpointing, so it is saved and restored
with the weights it describes, never parsed from a folder name. Each checkpoint is written into a temporary folder
and renamed into place, so a crash leaves either the old checkpoint or the new one. A manifest of the SHA-256 of
every file (and the phase and step) is written last into it and checked before anything is loaded, so a checkpoint
damaged on disk is never used: it falls back to the one before it (the two newest are kept).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from accelerate import Accelerator

from ..errors import RunError, first_line
from ..io import read_checked_json, write_checked_json
from ..quiet import silenced

KEEP = 2
MANIFEST = "gpt_tickets_manifest.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): _sha256(p) for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST
    }


class Progress:
    """Which phase (``round 3``, ``branch random_prune round_5-seed_1``) is being trained, and its steps done."""

    def __init__(self) -> None:
        self.phase, self.step = "", 0

    def state_dict(self) -> dict:
        return {"phase": self.phase, "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.phase, self.step = str(state["phase"]), int(state["step"])


class Checkpoints:
    def __init__(self, accelerator: Accelerator, folder: Path) -> None:
        self.acc, self.folder = accelerator, folder
        self.progress = Progress()
        accelerator.register_for_checkpointing(self.progress)

    def _saved(self) -> list[Path]:
        """Complete checkpoints, newest first (named by a save counter; temporaries start with a dot)."""
        if not self.folder.exists():
            return []
        found = [p for p in self.folder.iterdir() if p.is_dir() and p.name.isdigit()]
        return sorted(found, key=lambda p: int(p.name), reverse=True)

    def save(self, phase: str, step: int) -> None:
        """Called on every process: each one writes its own RNG state into the same folder."""
        self.progress.phase, self.progress.step = phase, step
        saved = self._saved()
        number = int(saved[0].name) + 1 if saved else 0
        tmp = self.folder / f".{number}.tmp"
        if self.acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            self.folder.mkdir(parents=True, exist_ok=True)
        self.acc.wait_for_everyone()
        try:
            # accelerate warns at every save that the tied lm_head is stored once: true, and harmless.
            with silenced("accelerate.utils.other"):
                self.acc.save_state(str(tmp), safe_serialization=True)
            self.acc.wait_for_everyone()
            if self.acc.is_main_process:
                write_checked_json({"phase": phase, "step": step, "files": _files(tmp)}, tmp / MANIFEST)
        except (OSError, RuntimeError) as err:  # torch reports a full disk as "PytorchStreamWriter failed writing"
            shutil.rmtree(tmp, ignore_errors=True)
            free = shutil.disk_usage(self.folder).free
            raise RunError(
                f"cannot write checkpoint {self.folder / str(number)} ({free / 2**20:.0f} MiB free on its device): "
                f"{first_line(err)}"
            ) from None
        if self.acc.is_main_process:
            os.replace(tmp, self.folder / str(number))
            for old in saved[KEEP - 1 :]:
                shutil.rmtree(old, ignore_errors=True)
        self.acc.wait_for_everyone()

    def restore(self, phase: str) -> int:
        """Load the newest readable checkpoint of ``phase`` into model, optimizer, schedule and RNGs.

        Returns the step to continue from, or 0 when there is none (the phase then starts afresh).
        """
        for path in self._saved():
            try:
                manifest = read_checked_json(path / MANIFEST)
                if manifest["phase"] != phase:
                    return 0  # the newest checkpoint is another phase's: this one starts afresh, nothing loaded
                if _files(path) != manifest["files"]:
                    raise RunError("its files do not match its manifest")
                self.acc.load_state(str(path))
            except Exception as err:  # a truncated, damaged or foreign checkpoint: say so and try the one before
                reason = first_line(err)
                self.acc.print(f"gpt_tickets: checkpoint {path} is damaged ({reason}); trying the previous one")
                continue
            self.acc.print(f"gpt_tickets: resuming {phase} at step {self.progress.step} from {path}")
            return self.progress.step
        return 0

    def clear(self) -> None:
        """A finished phase's outputs are the durable state; its checkpoints are no longer needed."""
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.acc.wait_for_everyone()
