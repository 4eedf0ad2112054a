"""A branch: a plug-in on a finished run (after open_lth's ``lottery/branch``).

A branch has a name, a small typed parameter dataclass, and says how it builds its start weights and mask from a
finished round; training, evaluation, checkpoints and results are the runner's. Its result lives under the run in
``branches/<name>/<params>/``, a folder named by its parameters, so a finished branch is never recomputed.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from transformers import PreTrainedModel

from ...errors import ConfigError
from ...io import load_tensors
from ...sparsity.masks import Mask
from ..run_dir import RunDir

MAX_SEED = 2**63 - 1  # torch.manual_seed takes a signed 64-bit integer


@dataclass(frozen=True)
class BranchParams:
    """What every branch takes: the finished round it starts from, and its own seed."""

    round: int
    seed: int

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", int) and (not isinstance(value, int) or isinstance(value, bool)):
                raise ConfigError(f"{f.name}={value!r} must be an integer")
        if self.round < 0:
            raise ConfigError(f"round={self.round} is not allowed; a round is 0 or more")
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed={self.seed} is not allowed; choose 0..{MAX_SEED}")

    def key(self) -> str:
        """The folder name: every parameter, in order (``round_5-seed_1``)."""
        return "-".join(f"{f.name}_{getattr(self, f.name)}" for f in dataclasses.fields(self))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class FinishedRound:
    """What a branch may read of a finished round: its mask, the run's saved weights, the model's shape.

    Nothing here trains or prunes: a branch never recomputes a round.
    """

    run_dir: RunDir
    round: int
    model: PreTrainedModel

    def mask(self) -> Mask:
        return self.run_dir.round_mask(self.round)

    def rewind_weights(self) -> dict[str, torch.Tensor]:
        """The weights every round restarts from (step k of dense training)."""
        return load_tensors(self.run_dir.rewind)


class Branch(ABC):
    """Subclasses set ``name``, ``description`` and ``Params`` and register with ``registry.register``."""

    name: ClassVar[str]
    description: ClassVar[str]
    Params: ClassVar[type[BranchParams]] = BranchParams

    def data_seed(self, params: BranchParams) -> int | None:
        """The seed of the branch's data order; None (the default) trains on the ticket's own data order."""
        return None

    @abstractmethod
    def start(self, source: FinishedRound, params: BranchParams) -> tuple[dict[str, torch.Tensor], Mask]:
        """The start weights (every parameter of the model) and the mask to train them under."""
