"""Exact perplexity of a causal LM over one long token stream, with batched sliding windows.

Perplexity is ``exp(total_nll / scored_tokens)`` over every scored token: averaging per-window perplexities (or
per-window mean losses) would over-weight the short last window and give a number that depends on the batching.
Windows follow the Hugging Face guide "Perplexity of fixed-length models", so results are comparable to it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    import accelerate

__all__ = ["PerplexityResult", "perplexity", "sliding_windows"]


@dataclass
class PerplexityResult:
    """Token-weighted perplexity plus the throughput needed to compare pruned and dense models fairly."""

    perplexity: float
    nll: float
    scored_tokens: int
    seconds: float
    tokens_per_second: float


def sliding_windows(n_tokens: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, n_target) per window: the HF sliding-window algorithm, with n_target the tokens really scored.

    The targets of a window are its last ``n_target`` tokens, each scored given the window's tokens before it, so a
    target needs at least one token of context inside its window. Hence ``n_target = end - max(prev_end, begin + 1)``:
    stream token 0 is never scored, and when ``stride == max_length`` (no overlap) neither is the first token of any
    window, exactly as in the HF guide, whose label shift silently drops it. So the scored total is ``n - 1`` for
    ``stride < max_length`` and ``n - len(windows)`` for ``stride == max_length``. A window that would score nothing
    (a 1-token tail when ``stride == max_length``) is left out.
    """
    if max_length < 2:
        raise ValueError(f"max_length={max_length} is invalid: it must be >= 2 (a target needs one context token)")
    if not 1 <= stride <= max_length:
        raise ValueError(f"stride={stride} is invalid: it must be in [1, max_length={max_length}]")
    if n_tokens < 2:
        raise ValueError(f"n_tokens={n_tokens} is invalid: at least 2 tokens are needed to score one")
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


def _score_batch(model: nn.Module, stream: torch.Tensor, batch: list[tuple[int, int, int]]) -> tuple[float, int]:
    """Summed NLL (float64) and target count of a batch of windows, right-padded into one forward pass."""
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
    row_idx = torch.cat(rows).to(ids.device)
    col_idx = torch.cat(cols).to(ids.device)
    logits = model(input_ids=ids).logits
    # Select the predicting positions before the loss, so log-softmax only runs over rows that are targets.
    picked = logits[row_idx, col_idx].float()
    labels = ids[row_idx, col_idx + 1]
    nll = F.cross_entropy(picked, labels, reduction="none")
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

    was_training = model.training
    model.eval()
    nll_sum, count = 0.0, 0
    try:
        start = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, len(mine), batch_size):
                batch_nll, batch_count = _score_batch(net, stream, mine[i : i + batch_size])
                nll_sum += batch_nll
                count += batch_count
        seconds = time.perf_counter() - start  # the .item() above already synchronised the device
    finally:
        model.train(was_training)

    if world > 1:
        # Each rank sends exactly one equal-shaped row, so plain gather is correct: no uneven per-window lists to
        # pad, and nothing for gather_for_metrics to drop (it only trims duplicates of a *prepared* dataloader,
        # which a manual split lacks). Gather rather than reduce because the wall time wants a max, not a sum.
        # Every rank sums the same gathered tensor in the same order, so all return bit-identical results.
        row = torch.tensor([[nll_sum, float(count), seconds]], dtype=torch.float64, device=device)
        rows = accelerator.gather(row).cpu()  # type: ignore[union-attr]
        nll_sum, count, seconds = rows[:, 0].sum().item(), int(rows[:, 1].sum().item()), rows[:, 2].max().item()

    expected = sum(n_target for _, _, n_target in windows)
    if count != expected:
        raise RuntimeError(f"scored {count} tokens but the windows hold {expected}: processes saw different inputs?")
    mean_nll = nll_sum / count
    return PerplexityResult(
        perplexity=math.exp(mean_nll) if mean_nll < 700.0 else math.inf,  # exp overflows past ~709
        nll=mean_nll,
        scored_tokens=count,
        seconds=seconds,
        tokens_per_second=count / seconds if seconds > 0 else math.inf,
    )
