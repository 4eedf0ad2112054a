"""One-shot baselines: the trained dense model pruned once to round r's sparsity, by magnitude or by Wanda.

Is iterative pruning worth its cost? Round r's ticket took r prunings, each followed by a retraining of
``train.steps``. These branches prune the trained dense model (round 0's trained weights) once, to exactly round r's
number of pruned weights in each pool of the run's selection (``prune.scope`` and ``prune.group_fractions``: the
same scope rules as the ticket), then evaluate it as it is (``finetune: 0``: no training, ``train_steps == 0``) or
after ``finetune`` segments of ``train.steps`` of sparse fine-tuning (a fresh optimizer and schedule each, evaluated
after each; ``finetune`` = r gives the ticket's retraining budget; the seed sets the data order).

- ``oneshot_magnitude`` ranks by the run's ``prune.score`` (|w| by default): IMP's own criterion, so it differs from
  IMP only in pruning once instead of iteratively.
- ``wanda`` ranks by |W_ij| x ||X_j||_2 (Sun et al. 2023), X_j the j-th input feature of the weight's module over
  ``calibration_blocks`` blocks of the training data (the first of the run's data order).

``compare`` says which weights a score ranks against one another:

- ``pool`` (the default): the pools of the run's selection, the ticket's own scope rules, so the comparison with the
  ticket changes only the score (or only pruning once). Under scope ``global`` a score whose scale differs between
  matrices strips the low-scale ones first: on the embedded default the input norms of the attention and MLP output
  projections are 17x and 5x smaller than their input projections' (layer 0), and its global Wanda falls far behind
  global magnitude.
- ``row``: Wanda as published. Each matrix prunes exactly the count the round's mask pruned in it (so every matrix,
  and the total, matches the ticket), spread over its output rows (an output unit's incoming weights: a column of
  GPT-2's Conv1D ``[in, out]``, a row of an ``nn.Linear`` ``[out, in]``): every row prunes floor(c / rows), the first
  c mod rows rows (in index order) one more, lowest score first within a row, ties to the lower input index. A
  matrix the round left whole stays whole.

A ``compare`` at its default (pool) is left out of the branch's folder name and result, as runs made before it
existed wrote them, so their one-shot results stay theirs.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

import torch

from ...config.schema import PruneConfig, RunConfig, one_of
from ...errors import ConfigError
from ...models.params import load_parameters
from ...sparsity.calibration import input_norms
from ...sparsity.masks import Mask
from ...sparsity.scores import SCORES, Score, wanda
from ...sparsity.select import Pool, group_pools, prune_pools, prune_rows
from ..run_dir import RunDir
from .base import Branch, BranchParams, FinishedRound, dense_trained_file, require_unstructured
from .registry import register

COMPARES = ("pool", "row")


@dataclass(frozen=True)
class OneShotParams(BranchParams):
    """``finetune``: segments of ``train.steps`` of sparse fine-tuning after the one-shot prune (0: none).
    ``compare``: ``pool`` (the run's selection pools) or ``row`` (each output unit's incoming weights, as Wanda)."""

    finetune: int = 0
    compare: str = "pool"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.finetune < 0:
            raise ConfigError(
                f"finetune={self.finetune} is not allowed; choose 0 (evaluate the pruned model as it is) or n >= 1 "
                "(then n segments of train.steps of sparse fine-tuning)"
            )
        one_of("compare", self.compare, COMPARES)

    def to_dict(self) -> dict[str, Any]:
        """Every parameter, but ``compare`` only when it is not pool: runs made before it existed did not name it
        (in their results or, through ``key``, their folders)."""
        params = super().to_dict()
        if self.compare == "pool":
            del params["compare"]
        return params


@dataclass(frozen=True)
class WandaParams(OneShotParams):
    """``calibration_blocks``: blocks of training data whose input norms Wanda's scores use."""

    calibration_blocks: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.calibration_blocks < 1:
            raise ConfigError(f"calibration_blocks={self.calibration_blocks} is not allowed; choose 1 or more")


def matched_pools(round_mask: Mask, model_type: str, prune: PruneConfig) -> list[Pool]:
    """The pools of the run's selection, each at the share of its weights that ``round_mask`` has pruned, so that
    pruning the full mask keeps exactly the round's count in every pool. A pool the round left whole is left out."""
    pools = []
    for pool in group_pools(round_mask, model_type, prune.fraction, prune.scope, prune.group_fractions):
        size = sum(round_mask[n].numel() for n in pool.names)
        pruned = size - sum(int(round_mask[n].sum()) for n in pool.names)
        if pruned:
            pools.append(Pool(pool.names, pruned / size))  # round(pruned / size * size) == pruned exactly
    return pools


def oneshot_mask(
    weights: dict[str, torch.Tensor],
    round_mask: Mask,
    model_type: str,
    prune: PruneConfig,
    score: Score,
    compare: str = "pool",
) -> Mask:
    """The full mask pruned once by ``score`` to ``round_mask``'s count in every pool of the run's selection
    (``compare`` pool), or in every matrix, row by row (``row``)."""
    if compare == "row":
        counts = {n: m.numel() - int(m.sum()) for n, m in round_mask.items()}
        return prune_rows(weights, counts, model_type, score)
    pools = matched_pools(round_mask, model_type, prune)
    pooled = {n for pool in pools for n in pool.names}
    full = Mask({n: torch.ones_like(m) for n, m in round_mask.items()})
    selected = prune_pools(weights, Mask({n: m for n, m in full.items() if n in pooled}), pools, score)
    return Mask({n: selected.get(n, full[n]) for n in round_mask})


class OneShot(Branch):
    """The trained dense model pruned once to round r's sparsity by ``score``; the subclasses name the score."""

    Params = OneShotParams

    def trains(self, params: OneShotParams) -> bool:
        return params.finetune > 0

    def seeded(self, params: OneShotParams) -> bool:
        return self.trains(params)  # the prune draws nothing random: only fine-tuning's data order takes the seed

    def segments(self, params: OneShotParams) -> int | None:
        return params.finetune or None

    def data_seed(self, params: OneShotParams) -> int | None:
        return params.seed if self.trains(params) else None

    def check(self, params: OneShotParams, cfg: RunConfig) -> None:
        require_unstructured(self.name, cfg)
        if params.round == 0:
            raise ConfigError(
                f"round=0 is not allowed for branch {self.name}: it prunes to a pruned round's sparsity and round 0 is "
                f"the dense model; choose a round 1..{cfg.prune.rounds}"
            )
        run = RunDir(cfg.output_dir)
        trained = dense_trained_file(run)
        if RunDir.done(run.round(0)).exists() and not trained.exists():
            raise ConfigError(
                f"the run in {str(run.root)!r} has no trained dense model ({trained.relative_to(run.root)}), which "
                f"branch {self.name} prunes: gpt_tickets 0.3 and older deleted it after round 1; run the config again "
                "with this version to compare with one-shot baselines"
            )

    def start(self, source: FinishedRound, params: OneShotParams) -> tuple[dict[str, torch.Tensor], Mask]:
        """Prunes where the model lives (the dense weights are loaded into it), as IMP's rounds do."""
        cfg = source.run_dir.stored_config()
        weights, round_mask = source.dense_trained_weights(), source.mask()
        load_parameters(source.model, weights)
        live = {n: source.model.get_parameter(n) for n in round_mask}
        score = self.score(source, params, cfg, list(round_mask))
        model_type = source.model.config.model_type
        return weights, oneshot_mask(live, round_mask, model_type, cfg.prune, score, params.compare)

    @abstractmethod
    def score(self, source: FinishedRound, params: OneShotParams, cfg: RunConfig, names: list[str]) -> Score:
        """The score ranking the dense trained weights ``names``, which ``source.model`` holds when it is called."""


@register
class OneShotMagnitude(OneShot):
    name = "oneshot_magnitude"
    description = "the trained dense model pruned once to round r's sparsity by prune.score (finetune: segments after)"

    def score(self, source: FinishedRound, params: OneShotParams, cfg: RunConfig, names: list[str]) -> Score:
        return SCORES[cfg.prune.score]


@register
class Wanda(OneShot):
    name = "wanda"
    description = "the trained dense model pruned once to round r's sparsity by |W| x input norm (Wanda)"
    Params = WandaParams

    def check(self, params: WandaParams, cfg: RunConfig) -> None:
        super().check(params, cfg)
        if "embeddings" in cfg.prune.groups:
            raise ConfigError(
                "branch wanda scores a weight by the input feature it multiplies, which an embedding table has not; "
                "this run's prune.groups includes embeddings: use oneshot_magnitude instead"
            )

    def check_data(self, params: WandaParams, train_blocks: int) -> None:
        if params.calibration_blocks > train_blocks:
            raise ConfigError(
                f"calibration_blocks={params.calibration_blocks} is more than the run's training data has "
                f"({train_blocks} blocks); choose 1..{train_blocks}"
            )

    def score(self, source: FinishedRound, params: WandaParams, cfg: RunConfig, names: list[str]) -> Score:
        blocks = source.first_train_blocks(params.calibration_blocks)
        return wanda(input_norms(source.model, names, blocks, cfg.eval.batch_size))
