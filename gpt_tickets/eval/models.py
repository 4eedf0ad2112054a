"""Perplexity of saved models (dense, tickets, Hub ids) on a dataset: the engine behind ``gpt-tickets eval``.

Every model is checked (it exists, it is a causal LM, the window fits its context; a ticket folder as
``load_ticket`` checks it) before any text is loaded or any weights are read, so a typo in the fifth model fails in
seconds. Scoring is ``eval.perplexity.perplexity``, the same function IMP uses per round, so a ticket's number here
equals the one in its results table. Weights are loaded in float32: the point is an exact number, comparable between
a dense model and its tickets. torch, transformers and datasets are imported where first needed, so that bad numbers
fail before seconds of imports.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, TicketError, first_line
from ..reporting.tables import markdown_table
from ..threads import set_intra_op_threads

if TYPE_CHECKING:
    from accelerate import Accelerator
    from transformers import PretrainedConfig, PreTrainedModel

    from ..sparsity.masks import Mask
    from ..tickets.format import TicketConfig

__all__ = ["ModelPerplexity", "TextSource", "evaluate_models", "evaluate_texts", "results_table", "save_results"]


@dataclass
class TextSource:
    """The text to score: one split of a Hub dataset (or local dataset folder), or local .txt/.json/.jsonl files."""

    dataset: str | None = None
    config_name: str | None = None
    split: str = "test"
    files: list[str] = field(default_factory=list)
    text_column: str = "text"

    def __post_init__(self) -> None:
        if (self.dataset is None) == (not self.files):
            raise ConfigError("give exactly one text source: a dataset (--dataset NAME) or local files (--files ...)")

    def load(self) -> list[str]:
        from ..data.sources import load_files, load_hub_split

        if self.dataset is not None:
            return load_hub_split(self.dataset, self.config_name, self.split, self.text_column)
        return load_files(self.files, self.text_column)

    def describe(self) -> str:
        if self.dataset is None:
            return ", ".join(self.files)
        config = f"{self.config_name}, " if self.config_name else ""
        return f"{self.dataset} ({config}{self.split})"


@dataclass
class ModelPerplexity:
    """One model's result; ``sparsity`` is the ticket's ``ticket_config.json`` entry, None for a plain model."""

    model: str
    perplexity: float
    nll: float
    scored_tokens: int
    seconds: float
    tokens_per_second: float
    max_length: int
    stride: int
    batch_size: int
    num_processes: int
    sparsity: dict[str, float] | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class _Plan:
    model_id: str
    config: PretrainedConfig
    max_length: int
    stride: int
    ticket: tuple[TicketConfig, Mask] | None  # checked as load_ticket checks it; None for a plain model


def _causal_lm_config(model_id: str) -> PretrainedConfig:
    """The config alone (one small file): enough to refuse a missing model or one that is not a causal LM."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(model_id, trust_remote_code=False)
    except Exception as err:  # not found, offline, no config.json, remote code: all mean "cannot load"
        raise ConfigError(
            f"model {model_id!r} cannot be loaded: give a local folder with config.json and safetensors weights, or "
            f"a Hub id in the offline cache or on the Hub ({first_line(err)})"
        ) from None
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ConfigError(
            f"model {model_id!r} is a {config.model_type!r} model, not a causal LM; give a model that "
            "AutoModelForCausalLM loads (GPT-2, Llama, Mistral, Qwen2, ...)"
        )
    return config


def _check_numbers(max_length: int | None, stride: int | None, batch_size: int = 1) -> None:
    """What can be refused before any model is known; ``_plan`` repeats it once max_length is resolved."""
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} is not allowed; it must be >= 1")
    if max_length is not None and max_length < 2:
        raise ConfigError(f"max_length={max_length} is not allowed; it must be >= 2 (a target needs one context token)")
    if stride is not None and stride < 1:
        raise ConfigError(f"stride={stride} is not allowed; it must be in 1..max_length")
    if max_length is not None and stride is not None and stride > max_length:
        raise ConfigError(f"stride={stride} is not allowed; it must be in 1..max_length={max_length}")


def _plan(model_id: str, max_length: int | None, stride: int | None) -> _Plan:
    from ..models.build import context_length

    ticket = _checked_ticket(model_id)  # first: before AutoConfig builds a config.json declaring 10**8 layers
    config = _causal_lm_config(model_id)
    context = context_length(config)
    if max_length is None:
        if context is None:
            raise ConfigError(f"model {model_id!r} states no context length; give max_length (--max-length)")
        max_length = context
    if context is not None and max_length > context:
        raise ConfigError(
            f"max_length={max_length} exceeds the context of model {model_id!r}; choose 2..{context} tokens"
        )
    stride = max_length if stride is None else stride
    _check_numbers(max_length, stride)
    return _Plan(model_id, config, max_length, stride, ticket)


def _load_model(plan: _Plan) -> PreTrainedModel:
    import torch
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(
            plan.model_id, config=plan.config, dtype=torch.float32, use_safetensors=True, trust_remote_code=False
        )
    except Exception as err:  # missing or non-safetensors weights, a broken file ...
        raise ConfigError(
            f"model {plan.model_id!r} has a config but its weights cannot be loaded; it needs safetensors weights "
            f"({first_line(err)})"
        ) from None


@contextmanager
def _refused(model_id: str) -> Iterator[None]:
    """load_ticket's one-line TicketError as eval's ConfigError, naming the model among the several scored."""
    try:
        yield
    except TicketError as err:
        raise ConfigError(f"model {model_id!r} is refused: {err}") from None


def _checked_ticket(model_id: str) -> tuple[TicketConfig, Mask] | None:
    """A local folder's weight files stay inside it, and a ticket folder passes load_ticket's checks, from the files'
    headers alone: a ticket load_ticket refuses is not scored (and its sparsity not printed)."""
    from ..tickets.checks import check_ticket_folder, is_ticket_folder
    from ..tickets.encoding import dense_weight_files

    folder = Path(model_id)
    if not folder.is_dir():
        return None  # a Hub id: transformers' own download
    with _refused(model_id):
        if is_ticket_folder(folder):
            return check_ticket_folder(folder)
        dense_weight_files(folder)  # from_pretrained would follow a shard index out of the folder ('../x.safetensors')
    return None


def _check_zeros(plan: _Plan, model: PreTrainedModel) -> None:
    """The ticket check that needs the weights in memory: they are zero where the masks say."""
    from ..tickets.checks import check_ticket

    if plan.ticket is not None:
        with _refused(plan.model_id):
            check_ticket(model, plan.ticket[1])


def _score(plan: _Plan, texts: list[str], batch_size: int, accelerator: Accelerator) -> ModelPerplexity:
    from ..data import load_pretrained_tokenizer, tokenize_stream
    from .perplexity import perplexity

    sparsity = dict(plan.ticket[0].sparsity) if plan.ticket else None
    stream = tokenize_stream(texts, tokenizer=load_pretrained_tokenizer(plan.model_id))
    model = _load_model(plan)
    _check_zeros(plan, model)
    vocab = model.get_input_embeddings().num_embeddings
    if int(stream.max()) >= vocab:
        raise ConfigError(
            f"the tokenizer of model {plan.model_id!r} yields token id {int(stream.max())}, beyond the model's "
            f"vocabulary of {vocab}; the folder's tokenizer does not belong to its weights"
        )
    model.to(accelerator.device)
    result = perplexity(model, stream, plan.max_length, plan.stride, batch_size, accelerator)
    return ModelPerplexity(
        model=plan.model_id,
        perplexity=result.perplexity,
        nll=result.nll,
        scored_tokens=result.scored_tokens,
        seconds=result.seconds,
        tokens_per_second=result.tokens_per_second,
        max_length=plan.max_length,
        stride=plan.stride,
        batch_size=batch_size,
        num_processes=accelerator.num_processes,
        sparsity=sparsity,
    )


def _accelerator() -> Accelerator:
    from accelerate import Accelerator

    return Accelerator()


def evaluate_models(
    model_ids: list[str],
    source: TextSource,
    max_length: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    accelerator: Accelerator | None = None,
) -> list[ModelPerplexity]:
    """Sliding-window perplexity of each model on ``source``: its texts joined with "\\n\\n", tokenized once.

    Args:
        model_ids: local folders (exported tickets included) or Hub ids of causal LMs.
        source: the dataset split or files to score.
        max_length: tokens per window; None takes each model's context length.
        stride: tokens the window moves by; None means ``max_length`` (no overlap).
        batch_size: windows per forward pass, per process.
        accelerator: under ``accelerate launch`` the windows are split over the processes; None makes one.

    Bad input raises ``ConfigError`` with a one-line message. Every process returns the same results.
    """
    _check_numbers(max_length, stride, batch_size)
    set_intra_op_threads()
    plans = [_plan(model_id, max_length, stride) for model_id in model_ids]
    accelerator = accelerator or _accelerator()
    with accelerator.main_process_first():  # the first process fills the datasets cache, the others read it
        texts = source.load()
    return [_score(plan, texts, batch_size, accelerator) for plan in plans]


def evaluate_texts(
    model_id: str,
    texts: list[str],
    max_length: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    accelerator: Accelerator | None = None,
) -> ModelPerplexity:
    """``evaluate_models`` for one model on texts already in memory (what the ``evaluate`` module calls)."""
    _check_numbers(max_length, stride, batch_size)
    set_intra_op_threads()
    return _score(_plan(model_id, max_length, stride), list(texts), batch_size, accelerator or _accelerator())


def results_table(results: list[ModelPerplexity]) -> str:
    """A Markdown table, one row per model; the sparsity columns are filled for tickets only."""
    header = ["model", "perplexity", "mean NLL", "scored tokens", "tokens/s", "max length", "stride"]
    rows = [[*header, "sparsity", "attention", "MLP"]]
    for r in results:
        sparsity = r.sparsity or {}
        rows.append(
            [
                r.model,
                f"{r.perplexity:.3f}",
                f"{r.nll:.4f}",
                f"{r.scored_tokens:,}",
                f"{r.tokens_per_second:,.0f}",
                str(r.max_length),
                str(r.stride),
                *(f"{sparsity[k]:.1%}" if k in sparsity else "-" for k in ("overall", "attention", "mlp")),
            ]
        )
    return markdown_table(rows)


def save_results(save_dir: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` with ``evaluate.save`` (which adds time, git commit and versions) under a unique name.

    evaluate names a file in a bare folder by the second, so two runs within a second would overwrite each other;
    a microsecond timestamp in the name avoids that.
    """
    import evaluate

    name = f"perplexity-{datetime.now().strftime('%Y%m%d-%H%M%S-%f')}.json"
    return Path(evaluate.save(Path(save_dir) / name, **payload))
