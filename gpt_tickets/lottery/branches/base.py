"""A branch: a plug-in on a finished run (after open_lth's ``lottery/branch``).

A branch has a name, a small typed parameter dataclass, and says how it builds its start weights and mask from a
finished round; training, evaluation, checkpoints and results are the runner's. Its result lives under the run in
``branches/<name>/<params>/``, a folder named by its parameters, so a finished branch is never recomputed.
"""

from __future__ import annotations

import dataclasses
import difflib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from transformers import PreTrainedModel

from ...config.schema import MAX_BRANCH_SEED, MAX_SEED, RunConfig
from ...errors import ConfigError
from ...io import load_tensors
from ...sparsity.masks import Mask
from ..context import first_blocks
from ..run_dir import RunDir


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
        if not 0 <= self.seed <= MAX_BRANCH_SEED:
            raise ConfigError(f"seed={self.seed} is not allowed; choose 0..{MAX_BRANCH_SEED}")

    def key(self) -> str:
        """The folder name: every parameter ``to_dict`` names, in order (``round_5-seed_1``)."""
        return "-".join(f"{name}_{value}" for name, value in self.to_dict().items())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def dense_trained_file(run_dir: RunDir) -> Path:
    """Where a run keeps round 0's trained weights (the trained dense model)."""
    return run_dir.round(0) / "trained.safetensors"


@dataclass
class FinishedRound:
    """What a branch may read of a finished round: its mask, the run's saved weights, the model's shape.

    Nothing here trains or prunes: a branch never recomputes a round.
    """

    run_dir: RunDir
    round: int
    model: PreTrainedModel
    train_blocks: torch.Tensor | None = None
    """The run's training blocks ([n, block_size] token ids, as ``RunContext.train_blocks``), for a branch that
    calibrates on them (wanda); None where only saved files are read."""

    def mask(self) -> Mask:
        return self.run_dir.round_mask(self.round)

    def rewind_weights(self) -> dict[str, torch.Tensor]:
        """The weights every round restarts from (step k of dense training)."""
        return load_tensors(self.run_dir.rewind)

    def initial_weights(self) -> dict[str, torch.Tensor]:
        """The weights round 0 started from (the run's initialisation)."""
        return load_tensors(self.run_dir.init)

    def dense_trained_weights(self) -> dict[str, torch.Tensor]:
        """Round 0's trained weights: the dense model after ``train.steps`` steps, which the one-shot baselines prune
        (runs of gpt_tickets 0.3 and older deleted them once round 1 was done)."""
        return load_tensors(dense_trained_file(self.run_dir))

    def first_train_blocks(self, count: int) -> torch.Tensor:
        """The first ``count`` blocks of the run's data order (its seed, epoch 0): what round 0's first batches saw."""
        if self.train_blocks is None:
            raise ValueError("this FinishedRound was built without the training data (train_blocks)")
        return first_blocks(self.train_blocks, self.run_dir.stored_config().seed, count)

    def weights_at(self, step: int) -> dict[str, torch.Tensor]:
        """Round 0's weights after ``step`` steps, as the run saved them: 0 (the initial weights), the rewind step
        or one of ``prune.rewind_points``; any other step fails in one line listing the saved ones."""
        return load_tensors(self.run_dir.weights_at(step, self.run_dir.stored_config()))


class Branch(ABC):
    """Subclasses set ``name``, ``description`` and ``Params`` and register with ``registry.register``."""

    name: ClassVar[str]
    description: ClassVar[str]
    Params: ClassVar[type[BranchParams]] = BranchParams

    @classmethod
    def own_params(cls) -> list[str]:
        """Its parameters beyond round and seed: a ``controls`` entry's mapping and ``gpt-tickets branch`` flags."""
        return [f.name for f in dataclasses.fields(cls.Params) if f.name not in ("round", "seed")]

    def params(self, round: int, seed: int, /, **own: Any) -> BranchParams:
        """Its typed parameters from plain values; an unknown or missing name or a bad value fails in one line."""
        allowed = self.own_params()
        for key in own:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f"did you mean {close[0]}? " if close else ""
                raise ConfigError(
                    f"branch {self.name} has no parameter {key!r}; {hint}its parameters beyond round and seed: "
                    f"{', '.join(allowed) or 'none'}"
                )
        for f in dataclasses.fields(self.Params):
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if f.name in allowed and f.name not in own and required:
                raise ConfigError(f"branch {self.name} needs a value for its parameter {f.name} ({f.type})")
        params = self.Params(round=round, seed=seed, **own)
        if (self.data_seed(params) or 0) > MAX_SEED:  # a data order's seed must fit as the run's seed does
            raise ConfigError(
                f"seed={seed} is not allowed for branch {self.name}, whose seed sets the data order; choose "
                f"0..{MAX_SEED}"
            )
        return params

    def check(self, params: BranchParams, cfg: RunConfig) -> None:
        """Refuse parameters the run (``cfg``, its stored config) cannot serve, before anything is written, e.g. a
        step whose weights round 0 did not save. The default accepts all."""
        return None

    def data_seed(self, params: BranchParams) -> int | None:
        """The seed of the branch's data order; None (the default) trains on the ticket's own data order."""
        return None

    def segments(self, params: BranchParams) -> int | None:
        """None (the default): the branch is one phase of ``train.steps`` in its folder. n: it trains n segments of
        ``train.steps`` one after another, each a phase in ``segment_<j>/`` continuing from the one before with a
        fresh optimizer and schedule on later data, so one training is evaluated at every segment's end.
        """
        return None

    def trains(self, params: BranchParams) -> bool:
        """True (the default): the branch trains from its start. False: its start weights are evaluated under its
        mask as they are (a one-shot baseline without fine-tuning): no step, no optimizer, ``train_steps == 0``."""
        return True

    def seeded(self, params: BranchParams) -> bool:
        """True (the default): the seed changes the result. False: the branch draws nothing random and trains
        nothing, so every seed gives one result: ``find``'s controls (whatever ``control_seeds``) and
        ``gpt-tickets branch`` without --seeds run only the first seed; explicit --seeds are still honoured."""
        return True

    def check_data(self, params: BranchParams, train_blocks: int) -> None:
        """Refuse parameters the run's training data (``train_blocks`` blocks) cannot serve, once the data is built
        and before the branch writes anything. The default accepts all."""
        return None

    @abstractmethod
    def start(self, source: FinishedRound, params: BranchParams) -> tuple[dict[str, torch.Tensor], Mask]:
        """The start weights (every parameter of the model) and the mask to train them under."""


def require_unstructured(branch: str, cfg: RunConfig) -> None:
    """A branch that draws its own weight-by-weight mask would compare a structured ticket with an unstructured
    control: refuse it on a run whose masks are structured (``prune.structure`` units or nm)."""
    if cfg.prune.structure != "weights":
        raise ConfigError(
            f"branch {branch} builds unstructured masks, but this run's prune.structure is {cfg.prune.structure}: "
            "it would not be a control of this ticket; use random_reinit or random_prune (they keep the ticket's "
            "structure), e.g. controls: [random_reinit, random_prune]"
        )
