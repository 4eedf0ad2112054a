"""Exact perplexity of a causal LM over one long token stream, with batched sliding windows.

Perplexity is ``exp(total_nll / scored_tokens)`` over every scored token: averaging per-window perplexities (or
per-window mean losses) would over-weight the short last window and give a number that depends on the batching.
Windows follow the Hugging Face guide "Perplexity of fixed-length models", so results are comparable to it.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    import accelerate

__all__ = ["METRIC_PATH", "PerplexityResult", "perplexity", "perplexity_reference", "sliding_windows"]

# The same metric as an ``evaluate`` module, shipped inside the package: ``evaluate.load(METRIC_PATH)``.
METRIC_PATH = str(Path(__file__).parent / "metrics" / "sliding_window_perplexity")


@dataclass
class PerplexityResult:
    """Token-weighted perplexity plus the throughput needed to compare pruned and dense models fairly."""

    perplexity: float
    nll: float
    scored_tokens: int
    seconds: float
    tokens_per_second: float


def _check_window_args(n_tokens: int, max_length: int, stride: int) -> None:
    if max_length < 2:
        raise ValueError(f"max_length={max_length} is invalid: it must be >= 2 (a target needs one context token)")
    if not 1 <= stride <= max_length:
        raise ValueError(f"stride={stride} is invalid: it must be in [1, max_length={max_length}]")
    if n_tokens < 2:
        raise ValueError(f"n_tokens={n_tokens} is invalid: at least 2 tokens are needed to score one")


def sliding_windows(n_tokens: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, n_target) per window: the HF sliding-window algorithm, with n_target the tokens really scored.

    The targets of a window are its last ``n_target`` tokens, each scored given the window's tokens before it, so a
    target needs at least one token of context inside its window. Hence ``n_target = end - max(prev_end, begin + 1)``:
    stream token 0 is never scored, and when ``stride == max_length`` (no overlap) neither is the first token of any
    window, exactly as in the HF guide, whose label shift silently drops it. So the scored total is ``n - 1`` for
    ``stride < max_length`` and ``n - len(windows)`` for ``stride == max_length``. A window that would score nothing
    (a 1-token tail when ``stride == max_length``) is left out.
    """
    _check_window_args(n_tokens, max_length, stride)
    windows: list[tuple[int, int, int]] = []
    prev_end = 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + max_length, n_tokens)
        n_target = end - max(prev_end, begin + 1)
        if n_target > 0:
            windows.append((begin, end, n_target))
        prev_end = end
        if end == n_tokens:
            break
    return windows


def _model_device(model: nn.Module) -> torch.device:
    """Where the inputs must go; a parameter-free module (a test double) runs on the CPU."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _takes_logits_to_keep(model: nn.Module) -> bool:
    """Whether the forward can skip the LM head at unscored positions (transformers causal LMs can)."""
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # a forward without a readable signature
        return False


def _result(nll_sum: float, count: int, seconds: float) -> PerplexityResult:
    mean_nll = nll_sum / count
    return PerplexityResult(
        perplexity=math.exp(mean_nll) if mean_nll < 700.0 else math.inf,  # exp overflows past ~709
        nll=mean_nll,
        scored_tokens=count,
        seconds=seconds,
        tokens_per_second=count / seconds if seconds > 0 else math.inf,
    )


# Families whose logits are exactly ``get_output_embeddings()(last hidden state)``: no soft-capping or scaling.
_PLAIN_HEAD_MODEL_TYPES = ("gpt2", "llama", "mistral", "qwen2")
# Rows of logits computed at once on the body/head path: ~64 MiB of fp32 logits, whatever the vocabulary.
_LOGIT_CHUNK_ELEMENTS = 2**24


def _body_and_head(model: nn.Module) -> tuple[nn.Module, nn.Linear] | None:
    """The transformer body and its output projection, for models whose logits are just head(hidden states)."""
    if getattr(getattr(model, "config", None), "model_type", None) not in _PLAIN_HEAD_MODEL_TYPES:
        return None
    body = getattr(model, getattr(model, "base_model_prefix", ""), None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if body is None or not isinstance(head, nn.Linear):
        return None
    return body, head


def _pack_batch(
    stream: torch.Tensor, batch: list[tuple[int, int, int]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, row_idx, col_idx): windows right-padded into one tensor, and the positions that predict a target."""
    width = max(end - begin for begin, end, _ in batch)
    # Right padding is safe: under causal attention a pad only ever follows the real tokens, so it cannot change
    # their logits, and pads are never selected as targets below. Pad with a real id (0) to keep embeddings valid.
    ids = stream.new_zeros((len(batch), width))
    rows: list[torch.Tensor] = []
    cols: list[torch.Tensor] = []
    for row, (begin, end, n_target) in enumerate(batch):
        length = end - begin
        ids[row, :length] = stream[begin:end]
        # Target positions are length - n_target .. length - 1; each is predicted by the logits one step earlier.
        cols.append(torch.arange(length - n_target - 1, length - 1))
        rows.append(torch.full((n_target,), row, dtype=torch.long))
    return ids, torch.cat(rows).to(ids.device), torch.cat(cols).to(ids.device)


def _score_batch(
    model: nn.Module,
    stream: torch.Tensor,
    batch: list[tuple[int, int, int]],
    body_and_head: tuple[nn.Module, nn.Linear] | None,
    keep_logits: bool,
) -> tuple[float, int]:
    """Summed NLL (float64) and target count of a batch of windows, in one forward pass of the body."""
    ids, row_idx, col_idx = _pack_batch(stream, batch)
    labels = ids[row_idx, col_idx + 1]
    if body_and_head is not None:
        # The logits of a whole batch (8 windows x 1024 x 50,257 fp32 = 1.6 GB for GPT-2) are never materialised:
        # the head runs on the predicting rows only, a cache-sized chunk at a time, each consumed by the loss.
        body, head = body_and_head
        hidden = body(input_ids=ids, use_cache=False).last_hidden_state[row_idx, col_idx]
        chunk = max(1, _LOGIT_CHUNK_ELEMENTS // head.out_features)
        nll = torch.cat(
            [
                F.cross_entropy(head(hidden[i : i + chunk]).float(), labels[i : i + chunk], reduction="none")
                for i in range(0, labels.numel(), chunk)
            ]
        )
    else:
        if keep_logits:
            # With stride = max_length / 2 half of every window is context only: project just the predicting rows.
            kept, col_idx = torch.unique(col_idx, sorted=True, return_inverse=True)
            logits = model(input_ids=ids, logits_to_keep=kept).logits
            if logits.shape[1] != kept.numel():
                raise RuntimeError(
                    f"the model returned {logits.shape[1]} positions for logits_to_keep of {kept.numel()}"
                )
        else:
            logits = model(input_ids=ids).logits
        # Select the predicting positions before the loss, so log-softmax only runs over rows that are targets.
        nll = F.cross_entropy(logits[row_idx, col_idx].float(), labels, reduction="none")
    # Sum on the CPU in float64: some backends (MPS) lack float64, and the transfer is only n_target floats.
    return nll.to("cpu", torch.float64).sum().item(), int(labels.numel())


def perplexity(
    model: nn.Module,
    input_ids: torch.Tensor,
    max_length: int,
    stride: int | None = None,
    batch_size: int = 8,
    accelerator: accelerate.Accelerator | None = None,
) -> PerplexityResult:
    """Exact sliding-window perplexity of ``input_ids`` (one stream, shape [n] or [1, n]) under a causal LM.

    With an accelerator on several processes every rank must pass the same stream; windows are dealt out round-robin
    and every rank returns the same result. The model's training mode is restored afterwards.
    """
    stride = max_length if stride is None else stride
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} is invalid: it must be >= 1")
    if input_ids.dim() == 2 and input_ids.shape[0] == 1:
        input_ids = input_ids[0]
    if input_ids.dim() != 1:
        raise ValueError(f"input_ids has shape {tuple(input_ids.shape)}: expected one stream, [n] or [1, n]")
    windows = sliding_windows(input_ids.numel(), max_length, stride)

    world, rank = 1, 0
    if accelerator is not None:
        device = accelerator.device
        world, rank = accelerator.num_processes, accelerator.process_index
        # Call the bare model: a DDP forward may broadcast buffers, a collective that would hang when ranks run
        # different numbers of batches. unwrap_model keeps the mixed-precision autocast wrapper.
        net = accelerator.unwrap_model(model)
    else:
        device = _model_device(model)
        net = model
    # Round-robin rather than contiguous: the short last window and the long ones spread evenly over ranks.
    mine = windows[rank::world]
    stream = input_ids.to(device=device, dtype=torch.long)
    body_and_head = _body_and_head(net)
    keep_logits = body_and_head is None and _takes_logits_to_keep(net)
    # The body-head path calls the body directly, outside a mixed-precision forward wrapper: enter autocast here.
    autocast = accelerator.autocast() if accelerator is not None else contextlib.nullcontext()

    was_training = model.training
    model.eval()
    nll_sum, count = 0.0, 0
    try:
        start = time.perf_counter()
        with torch.inference_mode(), autocast:
            for i in range(0, len(mine), batch_size):
                batch_nll, batch_count = _score_batch(net, stream, mine[i : i + batch_size], body_and_head, keep_logits)
                nll_sum += batch_nll
                count += batch_count
        seconds = time.perf_counter() - start  # the .item() above already synchronised the device
    finally:
        model.train(was_training)

    if world > 1:
        # Each rank sends exactly one equal-shaped row, so plain gather is correct: no uneven per-window lists to
        # pad, and nothing for gather_for_metrics to drop (it only trims duplicates of a *prepared* dataloader,
        # which a manual split lacks). Worse, gather_for_metrics consults the *active* dataloader: called inside a
        # training loop's last batch it would truncate these rows to that loader's remainder. Gather rather than
        # reduce because the wall time wants a max, not a sum. Every rank sums the same gathered tensor in the same
        # order, so all return bit-identical results.
        row = torch.tensor([[nll_sum, float(count), seconds]], dtype=torch.float64, device=device)
        rows = accelerator.gather(row).cpu()  # type: ignore[union-attr]
        nll_sum, count, seconds = rows[:, 0].sum().item(), int(rows[:, 1].sum().item()), rows[:, 2].max().item()

    expected = sum(n_target for _, _, n_target in windows)
    if count != expected:
        raise RuntimeError(f"scored {count} tokens but the windows hold {expected}: processes saw different inputs?")
    return _result(nll_sum, count, seconds)


def perplexity_reference(
    model: nn.Module, input_ids: torch.Tensor, max_length: int, stride: int | None = None
) -> PerplexityResult:
    """The batch-1 loop of the HF guide, written out plainly: the yardstick ``perplexity`` is tested and timed against.

    Independent of ``sliding_windows`` and ``_score_batch`` on purpose: one window per forward, the guide's own
    bookkeeping (``trg_len = end - prev_end``), log-softmax over every position in float64, one process only.
    """
    stride = max_length if stride is None else stride
    ids = input_ids.reshape(-1).to(device=_model_device(model), dtype=torch.long)
    n = ids.numel()
    _check_window_args(n, max_length, stride)
    was_training = model.training
    model.eval()
    total, count, prev_end = 0.0, 0, 0
    try:
        start = time.perf_counter()
        with torch.inference_mode():
            for begin in range(0, n, stride):
                end = min(begin + max_length, n)
                window = ids[begin:end]
                logits = model(input_ids=window[None]).logits[0]
                log_probs = torch.log_softmax(logits[:-1].double(), dim=-1)
                token_nll = -log_probs.gather(1, window[1:, None])[:, 0]  # entry j scores window position j + 1
                trg_len = min(end - prev_end, window.numel() - 1)  # position 0 of a window has no context
                if trg_len > 0:
                    total += token_nll[-trg_len:].sum().item()
                    count += trg_len
                prev_end = end
                if end == n:
                    break
        seconds = time.perf_counter() - start
    finally:
        model.train(was_training)
    return _result(total, count, seconds)
