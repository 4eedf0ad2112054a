"""Text corpora, tokenizers and token tensors for training and perplexity.

Every failure the user can cause (a missing file, an unreachable dataset or tokenizer, a corpus too small) raises
``DataError`` with a one-line message, so a bad config fails before any training starts.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow.compute as pc
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from .config import ConfigError, DataConfig, first_line

EOS_TOKEN = "<|endoftext|>"
# GPT-2's context length; callers that know their model's n_positions may override it on the tokenizer.
DEFAULT_MODEL_MAX_LENGTH = 1024
# One file is one builder: the "text" builder for plain text, the "json" builder for JSON / JSON lines.
FILE_BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json"}


class DataError(ConfigError):
    """Bad data input; its message is one line naming the bad value and what is allowed."""


def _first_line(err: BaseException) -> str:
    """The first non-blank line of an error, so wrapped library errors keep DataError messages to one line."""
    first = first_line(err)
    # datasets wraps the real reason (e.g. a JSON parse error) in a generic "error while generating" message.
    if isinstance(err, datasets.exceptions.DatasetGenerationError) and err.__cause__ is not None:
        return f"{first}: {_first_line(err.__cause__)}"
    return first


# ------------------------------------------------------------------------------------------------------ texts


def _embedded_splits(validation_fraction: float) -> tuple[list[str], list[str]]:
    """Split pydoc_data.topics by document; sorted keys and index arithmetic make it identical on every run."""
    try:
        from pydoc_data.topics import topics
    except ImportError as err:  # some distributions strip it from the standard library
        raise DataError(f"data.source='embedded' needs the standard library's pydoc_data: {_first_line(err)}") from err
    # dict.fromkeys drops exact duplicates ("if" and "else" share a page), which would leak into validation.
    docs = list(dict.fromkeys(topics[key] for key in sorted(topics) if topics[key].strip()))
    n = len(docs)
    n_val = min(max(1, round(n * validation_fraction)), n - 1)
    # Evenly spaced picks (the middle of each of n_val equal strides) spread validation across the corpus.
    val_idx = {(2 * i + 1) * n // (2 * n_val) for i in range(n_val)}
    train = [doc for i, doc in enumerate(docs) if i not in val_idx]
    validation = [doc for i, doc in enumerate(docs) if i in val_idx]
    return train, validation


def _column_texts(ds: datasets.Dataset, column: str, what: str) -> list[str]:
    """Pull one string column out of a dataset; nulls become empty texts, other types are refused."""
    if column not in ds.column_names:
        raise DataError(f"{what} has no text column {column!r}; columns present: {', '.join(ds.column_names)}")
    dtype = getattr(ds.features[column], "dtype", None)
    if dtype not in ("string", "large_string", "null"):
        raise DataError(f"{what} column {column!r} holds {ds.features[column]}, not text; choose a string column")
    return [text or "" for text in ds.data.column(column).to_pylist()]


def _require_text(texts: list[str], what: str) -> list[str]:
    if not any(text.strip() for text in texts):
        raise DataError(f"{what} contains no text ({len(texts)} empty rows); point it at non-empty data")
    return texts


def load_hub_split(name: str, config_name: str | None, split: str, text_column: str = "text") -> list[str]:
    """One split of a Hub dataset (or a local dataset folder), one text per row, empty rows kept."""
    where = f"config {config_name!r}, split {split!r}" if config_name else f"split {split!r}"
    try:
        ds = datasets.load_dataset(name, config_name, split=split)
    except Exception as err:  # not found, offline, no such config or split: all mean "cannot load"
        raise DataError(f"cannot load dataset {name!r} ({where}) offline or from the Hub: {_first_line(err)}") from err
    what = f"dataset {name!r} ({where})"
    return _require_text(_column_texts(ds, text_column, what), what)


def _builder_for(path: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FILE_BUILDERS:
        raise DataError(f"data file {path!r} has unsupported extension {suffix!r}; allowed: {', '.join(FILE_BUILDERS)}")
    if not Path(path).is_file():
        raise DataError(f"data file {path!r} does not exist")
    return FILE_BUILDERS[suffix]


def load_files(paths: list[str], text_column: str = "text") -> list[str]:
    """Texts of local files in the order given, one ``load_dataset`` call per run of files sharing a builder.

    A .txt file is one document, read verbatim (``sample_by="document"``): per-line rows would put an eos after
    every line, and paragraph splitting alters blank lines, so ``"\\n\\n".join`` would no longer give back the file.
    """
    builders = [_builder_for(path) for path in paths]  # every path checked before the first (slow) load
    texts: list[str] = []
    for builder, group in itertools.groupby(zip(builders, paths, strict=True), key=lambda pair: pair[0]):
        files = [path for _, path in group]
        options: dict[str, Any] = {"sample_by": "document"} if builder == "text" else {}
        try:
            ds = datasets.load_dataset(builder, data_files=files, split="train", **options)
        except Exception as err:  # malformed JSON, bad encoding, ...
            raise DataError(f"cannot read data files {files!r} as {builder}: {_first_line(err)}") from err
        column = "text" if builder == "text" else text_column
        texts.extend(_column_texts(ds, column, f"data files {files!r}"))
    return _require_text(texts, f"data files {paths!r}")


def load_text_splits(cfg: DataConfig) -> tuple[list[str], list[str]]:
    """(train_texts, validation_texts), one text per document.

    Hub and file rows are kept as loaded (empty rows included), so ``"\\n\\n".join`` reproduces the Hugging Face
    perplexity guide on line-based sets such as wikitext; empty rows add no tokens downstream.
    """
    if cfg.source == "embedded":
        return _embedded_splits(cfg.validation_fraction)
    if cfg.source == "hub":
        return (
            load_hub_split(cfg.name, cfg.config_name, cfg.train_split, cfg.text_column),
            load_hub_split(cfg.name, cfg.config_name, cfg.validation_split, cfg.text_column),
        )
    if cfg.source == "files":
        return load_files(cfg.train_files, cfg.text_column), load_files(cfg.validation_files, cfg.text_column)
    raise DataError(f"data.source={cfg.source!r} is not allowed; choose one of embedded, hub, files")


# ------------------------------------------------------------------------------------------------- tokenizers


def train_tokenizer(
    texts: list[str], vocab_size: int, model_max_length: int = DEFAULT_MODEL_MAX_LENGTH
) -> transformers.PreTrainedTokenizerFast:
    """Train a GPT-2-style byte-level BPE with exactly ``vocab_size`` tokens; pass the train split only.

    Byte-level means every string encodes and decodes losslessly; ``<|endoftext|>`` is the one special token and
    serves as bos, eos and unk. Training is deterministic for the same texts.
    """
    if vocab_size < 257:
        raise DataError(f"vocab_size={vocab_size} must be >= 257 (256 byte symbols + {EOS_TOKEN})")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    if tokenizer.get_vocab_size() != vocab_size:
        raise DataError(
            f"the training texts yield only {tokenizer.get_vocab_size()} BPE tokens, fewer than vocab_size="
            f"{vocab_size}; use more text or a smaller data.vocab_size"
        )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        model_max_length=model_max_length,
    )


def load_pretrained_tokenizer(name_or_path: str, revision: str | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of a pretrained model; never runs repository code."""
    try:
        return AutoTokenizer.from_pretrained(name_or_path, revision=revision, trust_remote_code=False)
    except Exception as err:  # not found, offline, gated, broken files: all mean "cannot load"
        at = f" at revision {revision!r}" if revision else ""
        raise DataError(
            f"cannot load tokenizer {name_or_path!r}{at} offline or from the Hub: {_first_line(err)}"
        ) from err


# --------------------------------------------------------------------------------------------- token tensors


def _content_fingerprint(texts: Iterable[str], tokenizer: PreTrainedTokenizerBase) -> str:
    """A fingerprint from the texts and the tokenizer, so ``datasets`` need not pickle-hash the tokenizer."""
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    digest.update((backend.to_str() if backend is not None else tokenizer.name_or_path).encode())
    for text in texts:
        digest.update(hashlib.sha256(text.encode()).digest())
    return digest.hexdigest()[:16]


def _tokenize_documents(
    eos_id: int, tokenizer: PreTrainedTokenizerBase
) -> Callable[[dict[str, list]], dict[str, list]]:
    """A batched map function: token ids per document, eos appended to every non-empty one."""

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        ids = tokenizer(batch["text"], add_special_tokens=False, verbose=False)["input_ids"]
        return {"input_ids": [doc + [eos_id] if doc else doc for doc in ids]}

    return tokenize


def group_into_blocks(texts: list[str], tokenizer: PreTrainedTokenizerBase, block_size: int) -> torch.Tensor:
    """Tokenize documents, end each with eos, concatenate and cut into [n_blocks, block_size] (remainder dropped).

    As in transformers' run_clm ``group_texts``, but the cut is over the whole corpus, so only the last partial
    block is lost. Empty documents add nothing (not even eos). The texts are in memory, so the ``datasets.map``
    pass is recomputed each call (kept in memory, nothing written to the cache); the tokenizer is fast anyway.
    """
    if block_size < 1:
        raise DataError(f"block_size={block_size} must be >= 1")
    if tokenizer.eos_token_id is None:
        raise DataError(f"tokenizer {tokenizer.name_or_path!r} has no eos token to end documents with")
    ds = datasets.Dataset.from_dict({"text": list(texts)})
    ds = ds.map(
        _tokenize_documents(tokenizer.eos_token_id, tokenizer),
        batched=True,
        remove_columns=["text"],
        keep_in_memory=True,
        new_fingerprint=_content_fingerprint(texts, tokenizer),
        desc="tokenizing",
    )
    # No rows means map never ran and there is no input_ids column.
    flat = pc.list_flatten(ds.data.column("input_ids")).to_numpy() if ds.num_rows else np.zeros(0, np.int64)
    n_blocks = len(flat) // block_size
    if n_blocks == 0:
        raise DataError(f"the corpus has {len(flat)} tokens, fewer than one block of block_size={block_size}")
    return torch.from_numpy(flat[: n_blocks * block_size].astype("int64")).view(n_blocks, block_size)


def tokenize_stream(texts: list[str], tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """The texts joined with "\\n\\n" and tokenized once (no special tokens), as in the HF perplexity guide."""
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False, verbose=False)["input_ids"]
    if len(ids) < 2:
        raise DataError(f"the evaluation text has {len(ids)} tokens; perplexity needs at least 2")
    return torch.tensor(ids, dtype=torch.long)
