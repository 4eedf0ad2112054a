"""The run directory: where every phase's outputs live, the one config it belongs to, and the process using it.

Everything that crosses a phase is on disk here (masks, rewind weights, results), which is what makes resume,
branches and reports cheap. A directory belongs to one config from its first write (``config.yaml``, which checks
itself against its fingerprint), and to one process at a time (an ``flock`` the kernel releases when the process
dies, even by ``kill -9``).
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

import yaml

from ..config.loading import config_from_dict, load_yaml
from ..config.schema import RunConfig
from ..errors import ConfigError, RunError, first_line
from ..io import atomic_write_text
from ..sparsity.masks import Mask, mask_checksum
from ..tickets.export import package_version
from .results import RoundResult

LOCK_FILE = ".lock"


class RunDir:
    """Paths of a run: ``round_<r>/``, ``branches/<name>/<params>/``, ``rewind_points/``, ``ticket/`` ..."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._lock_fd: int | None = None

    config = property(lambda self: self.root / "config.yaml")
    results = property(lambda self: self.root / "results.json")
    tokenizer = property(lambda self: self.root / "tokenizer")
    init = property(lambda self: self.root / "init.safetensors")
    rewind = property(lambda self: self.root / "rewind.safetensors")
    checkpoints = property(lambda self: self.root / "checkpoints")
    ticket = property(lambda self: self.root / "ticket")

    def round(self, r: int) -> Path:
        return self.root / f"round_{r}"

    def branch(self, name: str, key: str) -> Path:
        return self.root / "branches" / name / key

    def rewind_point(self, step: int) -> Path:
        """Where round 0 saves its weights at a step of ``prune.rewind_points``."""
        return self.root / "rewind_points" / f"step_{step}.safetensors"

    def saved_steps(self, cfg: RunConfig) -> dict[int, Path]:
        """Every step of round 0 whose weights the run keeps, and the file holding them, in step order: 0 (the
        initial weights), ``prune.rewind_step`` (the rewind weights) and ``prune.rewind_points``."""
        saved = {step: self.rewind_point(step) for step in cfg.prune.rewind_points}
        saved.update({cfg.prune.rewind_step: self.rewind, 0: self.init})
        return dict(sorted(saved.items()))

    def weights_at(self, step: int, cfg: RunConfig) -> Path:
        """The file of round 0's weights at ``step``; a step round 0 does not save fails in one line."""
        saved = self.saved_steps(cfg)
        if step not in saved:
            raise ConfigError(
                f"round 0 of the run in {str(self.root)!r} saved no weights at step {step}; saved steps: "
                f"{', '.join(map(str, saved))} (0, prune.rewind_step and prune.rewind_points)"
            )
        return saved[step]

    @staticmethod
    def done(folder: Path) -> Path:
        """The marker of a finished phase (its result), written last."""
        return folder / "result.json"

    def finished_rounds(self, rounds: int) -> list[int]:
        return [r for r in range(rounds + 1) if self.done(self.round(r)).is_file()]

    def round_mask(self, r: int) -> Mask:
        """A finished round's mask, checked against its digest and against the checksum its result recorded."""
        mask = Mask.load(self.round(r) / "mask.safetensors")
        recorded = RoundResult.load(self.done(self.round(r))).mask_checksum
        if mask_checksum(mask) != recorded:
            raise RunError(f"{self.round(r) / 'mask.safetensors'} is not the mask round {r} finished with")
        return mask

    # ------------------------------------------------------------------------------------------- ownership

    def check_writable(self) -> None:
        """Refuse an output_dir that cannot hold a run, before anything is written."""
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"output_dir {str(self.root)!r} is a file; choose a directory")
        existing = self.root
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError(f"output_dir {str(self.root)!r} cannot be written: {existing} is not writable")

    def claim(self, cfg: RunConfig) -> None:
        """Take this directory for ``cfg``: lock it, then accept it if it is new or holds a run of the same config.

        Anything else (another config's run, however little of it was written; files that are not a run) is
        refused, so a run never resumes someone else's checkpoints or initial weights.
        """
        self.check_writable()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"output_dir {str(self.root)!r} cannot be created: {first_line(err)}") from None
        self.lock()
        try:
            self._take(cfg)
        except BaseException:
            self.unlock()
            raise

    def _take(self, cfg: RunConfig) -> None:
        self.sweep()
        if self.config.exists():
            theirs = self.stored_config().fingerprint()
            if theirs != cfg.fingerprint():
                raise ConfigError(
                    f"output_dir {str(self.root)!r} holds a run of a different config (fingerprint {theirs}, this "
                    f"one {cfg.fingerprint()}); choose another output_dir or delete that directory"
                )
            return
        strays = sorted(p.name for p in self.root.iterdir() if p.name != LOCK_FILE)
        if strays:
            raise ConfigError(
                f"output_dir {str(self.root)!r} holds files but no gpt_tickets run (e.g. {strays[0]}); choose an "
                "empty or new directory"
            )
        stamp = {"fingerprint": cfg.fingerprint(), "gpt_tickets_version": package_version()}
        atomic_write_text(yaml.safe_dump({**stamp, **cfg.to_dict()}, sort_keys=False), self.config)

    def stored_config(self) -> RunConfig:
        """The config of the run in this directory, checked against the fingerprint it was saved with.

        Its ``output_dir`` is this directory, wherever the run was moved to.
        """
        if not self.config.is_file():
            raise ConfigError(
                f"{str(self.root)!r} holds no run (no config.yaml); give the output_dir of a `gpt-tickets find` run"
            )
        try:
            data = load_yaml(self.config.read_text(), "the file")
            if not isinstance(data, dict) or not isinstance(data.get("fingerprint"), str):
                raise ConfigError("not a run config with its fingerprint")
            fingerprint = data.pop("fingerprint")
            written_by = data.pop("gpt_tickets_version", "0.2 or older")
            data["output_dir"] = str(self.root)
            cfg = config_from_dict(data)
        except (ConfigError, UnicodeDecodeError) as err:
            raise RunError(f"{self.config} is damaged: {first_line(err)}") from None
        if cfg.fingerprint() != fingerprint and written_by != package_version():
            raise RunError(
                f"{self.config} was written by gpt_tickets {written_by}, whose configs have other keys than this "
                f"version's ({package_version()}); finish that run with that version, or start it again in another "
                "output_dir"
            )
        if cfg.fingerprint() != fingerprint:
            raise RunError(f"{self.config} is damaged: its content does not match its fingerprint {fingerprint}")
        return cfg

    def sweep(self) -> None:
        """Remove what a killed process left half-written: temporaries are only ever renamed into place, never read.

        Called with the lock held, so no other process is writing them.
        """
        leftovers = [p for p in self.root.rglob(".*") if ".tmp" in p.name or ".old-" in p.name]
        for path in sorted(leftovers, key=lambda p: len(p.parts), reverse=True):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

    def lock(self) -> None:
        """One process per run directory; a second is refused at once, naming the first."""
        if self._lock_fd is not None:
            return
        path = self.root / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(
                f"output_dir {str(self.root)!r} is in use by another gpt_tickets process (pid {holder}); wait for it "
                "to end or choose another output_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None
