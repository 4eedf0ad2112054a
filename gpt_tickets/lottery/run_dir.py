"""The run directory: where every phase's outputs live, and the one config a directory belongs to.

Everything that crosses a phase is on disk here (masks, rewind weights, results), which is what makes resume,
branches and reports cheap.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..config.loading import config_from_dict
from ..config.schema import RunConfig
from ..errors import ConfigError, first_line
from ..io import atomic_write_text


class RunDir:
    """Paths of a run: ``round_<r>/``, ``branches/<name>/<params>/``, ``ticket/`` ..."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

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

    @staticmethod
    def done(folder: Path) -> Path:
        """The marker of a finished phase (its result), written last."""
        return folder / "result.json"

    def finished_rounds(self, rounds: int) -> list[int]:
        return [r for r in range(rounds + 1) if self.done(self.round(r)).is_file()]

    def claim(self, cfg: RunConfig) -> None:
        """Create the directory for ``cfg``, or accept it if it holds a run of the same config.

        A directory where no round has finished yet holds nothing worth protecting and is taken over.
        """
        if self.config.exists() and self.done(self.round(0)).exists():
            theirs = yaml.safe_load(self.config.read_text()).get("fingerprint")
            if theirs != cfg.fingerprint():
                raise ConfigError(
                    f"output_dir {str(self.root)!r} holds a run of a different config (fingerprint {theirs}, this "
                    f"one {cfg.fingerprint()}); choose another output_dir or delete that directory"
                )
            return
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            yaml.safe_dump({"fingerprint": cfg.fingerprint(), **cfg.to_dict()}, sort_keys=False), self.config
        )

    def load_config(self) -> RunConfig:
        """The config of the run in this directory (its ``output_dir`` is this directory, wherever it was moved)."""
        if not self.config.is_file():
            raise ConfigError(
                f"{str(self.root)!r} holds no run (no config.yaml); give the output_dir of a `gpt-tickets find` run"
            )
        try:
            data = yaml.safe_load(self.config.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"{self.config} is not valid YAML: {first_line(err)}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{self.config} does not hold a run config")
        data.pop("fingerprint", None)
        data["output_dir"] = str(self.root)
        return config_from_dict(data)
