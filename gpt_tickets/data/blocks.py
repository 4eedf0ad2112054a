"""Token tensors: training blocks of ``block_size`` tokens, and the one evaluation stream."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable

import datasets
import numpy as np
import pyarrow.compute as pc
import torch
from transformers import PreTrainedTokenizerBase

from ..errors import DataError
from ..quiet import library_bars_off


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
    with library_bars_off():  # seconds of work: its bar would only be noise in the run's log
        ds = ds.map(
            _tokenize_documents(tokenizer.eos_token_id, tokenizer),
            batched=True,
            remove_columns=["text"],
            keep_in_memory=True,
            new_fingerprint=_content_fingerprint(texts, tokenizer),
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
