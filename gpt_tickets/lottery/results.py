"""Typed results of rounds, branches and whole runs, and the JSON files they are written to and read from.

Sparsity fields come from one ``SparsityReport`` (``PhaseResult.measured``), so tables, trackers and the ticket
state the same numbers.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..errors import RunError
from ..io import atomic_write_json, read_checked_json, write_checked_json
from ..sparsity.masks import Mask, mask_checksum
from ..sparsity.report import sparsity_report

P = TypeVar("P", bound="PhaseResult")


@dataclass(kw_only=True)
class PhaseResult:
    """What one trained phase (a round or a branch) measured."""

    round: int
    sparsity: float
    attention_sparsity: float
    mlp_sparsity: float
    val_perplexity: float
    val_nll: float
    train_steps: int
    final_train_loss: float
    wall_seconds: float
    per_layer_sparsity: dict[str, dict[str, float]]
    mask_checksum: str

    @classmethod
    def measured(cls: type[P], mask: Mask, model_type: str, outcome: Any, ppl: Any, **identity: Any) -> P:
        """A result from the phase's mask, its ``TrainOutcome`` and its ``PerplexityResult``."""
        report = sparsity_report(mask, model_type)
        return cls(
            **identity,
            sparsity=report.overall,
            attention_sparsity=report.group("attention"),
            mlp_sparsity=report.group("mlp"),
            val_perplexity=ppl.perplexity,
            val_nll=ppl.nll,
            train_steps=outcome.steps,
            final_train_loss=outcome.final_loss,
            wall_seconds=round(outcome.seconds, 2),
            per_layer_sparsity=report.per_layer,
            mask_checksum=mask_checksum(mask),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[P], data: dict[str, Any]) -> P:
        fields = dataclasses.fields(cls)
        required = [f.name for f in fields if f.default is f.default_factory is dataclasses.MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise RunError(f"a {cls.__name__} lacks {missing[0]!r}: written by another version, or damaged?")
        return cls(**{f.name: data[f.name] for f in fields if f.name in data})

    def save(self, path: Path) -> None:
        write_checked_json(self.to_dict(), path)

    @classmethod
    def load(cls: type[P], path: Path) -> P:
        """A phase's result, checked against the digest it was written with."""
        data = read_checked_json(path)
        try:
            return cls.from_dict(data)
        except RunError as err:
            raise RunError(f"{path}: {err}") from None

    def label(self) -> str:
        raise NotImplementedError

    def row(self) -> list[str]:
        """One row of ``reporting.tables.results_table``."""
        return [
            str(self.round),
            self.label(),
            f"{self.sparsity:.1%}",
            f"{self.attention_sparsity:.1%}",
            f"{self.mlp_sparsity:.1%}",
            f"{self.val_perplexity:.2f}",
            str(self.train_steps),
            f"{self.wall_seconds:.1f}",
        ]


@dataclass(kw_only=True)
class RoundResult(PhaseResult):
    """Round 0 trains the dense model; round r >= 1 is IMP's r-th pruned retraining."""

    def label(self) -> str:
        return "dense" if self.round == 0 else "imp"


@dataclass(kw_only=True)
class BranchResult(PhaseResult):
    """A branch trained from a finished round (``round``); ``params`` are its typed parameters as saved."""

    branch: str
    params: dict[str, Any] = field(default_factory=dict)
    evaluations: list[dict[str, float]] = field(default_factory=list)
    """A branch trained in segments: ``{"steps", "val_perplexity", "val_nll"}`` at every segment's end ([] else)."""
    seeded: bool = True
    """Whether its seed changes its result (``Branch.seeded``): the label names the seed only then. Results written
    before it was recorded read as seeded, so their labels stay as they were."""

    @classmethod
    def of_segments(cls, segments: list[BranchResult]) -> BranchResult:
        """A branch trained in segments: the last one's result over all their steps, with every segment's evaluation."""
        ends = itertools.accumulate(s.train_steps for s in segments)
        evaluations = [
            {"steps": end, "val_perplexity": s.val_perplexity, "val_nll": s.val_nll}
            for end, s in zip(ends, segments, strict=True)
        ]
        return dataclasses.replace(
            segments[-1],
            train_steps=sum(s.train_steps for s in segments),
            wall_seconds=round(sum(s.wall_seconds for s in segments), 2),
            evaluations=evaluations,
        )

    def label(self) -> str:
        """Its name and parameters but its round (a column of its own), and its seed only where it is ``seeded``."""
        hidden = ("round",) if self.seeded else ("round", "seed")
        return self.named(lambda k, _: k not in hidden)

    def named(self, shown: Callable[[str, Any], bool]) -> str:
        """Its name and the parameters ``shown(name, value)`` keeps: ``wanda (finetune 5, compare row)``."""
        extra = ", ".join(f"{k} {v}" for k, v in self.params.items() if shown(k, v))
        return f"{self.branch} ({extra})" if extra else self.branch


@dataclass
class RunResults:
    """``results.json``: every round, the branches ``find`` ran, and whether the ticket is exported."""

    fingerprint: str
    num_processes: int
    rounds: list[RoundResult]
    branches: list[BranchResult] = field(default_factory=list)
    complete: bool = False

    @property
    def phases(self) -> list[PhaseResult]:
        return [*self.rounds, *self.branches]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResults:
        return cls(
            fingerprint=data["fingerprint"],
            num_processes=data["num_processes"],
            rounds=[RoundResult.from_dict(r) for r in data["rounds"]],
            branches=[BranchResult.from_dict(b) for b in data.get("branches", [])],
            complete=data.get("complete", False),
        )

    def save(self, path: Path) -> None:
        atomic_write_json(self.to_dict(), path)

    @classmethod
    def load(cls, path: Path) -> RunResults:
        """The summary a run writes for people and reports; a run itself never reads it back."""
        return cls.from_dict(json.loads(path.read_text()))
