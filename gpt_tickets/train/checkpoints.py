"""Crash-safe checkpoints inside a round, with Accelerate's ``save_state`` / ``load_state``.

Where a round stands (its phase and step) is an object registered for checkpointing, so it is saved and restored
with the weights it describes, never parsed from a folder name. Each checkpoint is written into a temporary folder
and renamed into place, so a crash leaves either the old checkpoint or the new one; the two newest are kept so a
checkpoint damaged on disk falls back to the one before it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from accelerate import Accelerator

from ..errors import first_line

KEEP = 2


class Progress:
    """Which phase (``round 3``, ``control random_reinit``) is being trained, and how many steps it has done."""

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
        self.acc.save_state(str(tmp), safe_serialization=True)
        self.acc.wait_for_everyone()
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
                self.acc.load_state(str(path))
            except Exception as err:  # a truncated or corrupted file: say so and try the one before
                self.acc.print(
                    f"gpt_tickets: checkpoint {path} is unreadable ({first_line(err)}); trying the previous one"
                )
                continue
            if self.progress.phase == phase:
                self.acc.print(f"gpt_tickets: resuming {phase} at step {self.progress.step} from {path}")
                return self.progress.step
            return 0
        return 0

    def clear(self) -> None:
        """A finished phase's outputs are the durable state; its checkpoints are no longer needed."""
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.acc.wait_for_everyone()
