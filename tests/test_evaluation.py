"""Batched sliding-window perplexity must equal a naive batch-1 reference and closed-form cases exactly."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from gpt_tickets.evaluation import PerplexityResult, perplexity, sliding_windows

VOCAB = 97


def _tiny_gpt2(dropout: float = 0.0) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        vocab_size=VOCAB,
        n_positions=64,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
    )
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def model() -> GPT2LMHeadModel:
    return _tiny_gpt2()


@pytest.fixture(scope="module")
def stream() -> torch.Tensor:
    return torch.randint(0, VOCAB, (203,), generator=torch.Generator().manual_seed(1))


def _reference(model: nn.Module, ids: torch.Tensor, max_length: int, stride: int) -> tuple[float, int]:
    """Summed NLL and count, one window at a time, with the window bookkeeping written independently (HF guide)."""
    total, count, prev_end, n = 0.0, 0, 0, ids.numel()
    with torch.no_grad():
        for begin in range(0, n, stride):
            end = min(begin + max_length, n)
            window = ids[begin:end]
            logits = model(window[None]).logits[0]
            logp = torch.log_softmax(logits[:-1].double(), dim=-1)
            token_nll = -logp.gather(1, window[1:, None])[:, 0]  # entry j scores window position j + 1
            trg_len = min(end - prev_end, window.numel() - 1)  # position 0 of a window has no context
            if trg_len > 0:
                total += token_nll[-trg_len:].sum().item()
                count += trg_len
            prev_end = end
            if end == n:
                break
    return total, count


class _FixedLogits(nn.Module):
    """A parameter-free 'LM' predicting the same distribution everywhere, so perplexity has a closed form."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("row", logits)

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.row.expand(*input_ids.shape, -1))


def test_sliding_windows_by_hand() -> None:
    assert sliding_windows(10, 4, 4) == [(0, 4, 3), (4, 8, 3), (8, 10, 1)]
    assert sliding_windows(10, 4, 2) == [(0, 4, 3), (2, 6, 2), (4, 8, 2), (6, 10, 2)]
    assert sliding_windows(9, 4, 4) == [(0, 4, 3), (4, 8, 3)]  # the 1-token tail window can score nothing
    assert sliding_windows(3, 8, 8) == [(0, 3, 2)]


@pytest.mark.parametrize("n", [2, 3, 10, 57, 64])
@pytest.mark.parametrize(("max_length", "stride"), [(8, 1), (8, 3), (8, 4), (8, 7), (2, 1), (5, 2)])
def test_overlapping_windows_score_every_token_but_the_first(n: int, max_length: int, stride: int) -> None:
    windows = sliding_windows(n, max_length, stride)
    assert sum(t for _, _, t in windows) == n - 1
    assert windows[0][0] == 0 and windows[-1][1] == n
    scored = [i for b, e, t in windows for i in range(e - t, e)]
    assert scored == list(range(1, n))  # each token once, in order, never without context
    assert all(e - b <= max_length and e - t > b for b, e, t in windows)


def test_non_overlapping_windows_lose_each_window_start() -> None:
    windows = sliding_windows(10, 4, 4)
    assert sum(t for _, _, t in windows) == 10 - len(windows)


@pytest.mark.parametrize(("max_length", "stride"), [(32, 32), (32, 16), (32, 7)])
@pytest.mark.parametrize("batch_size", [1, 3, 8, 64])
def test_batched_matches_reference(
    model: GPT2LMHeadModel, stream: torch.Tensor, max_length: int, stride: int, batch_size: int
) -> None:
    ref_nll, ref_count = _reference(model, stream, max_length, stride)
    result = perplexity(model, stream, max_length, stride, batch_size=batch_size)
    assert result.scored_tokens == ref_count
    if stride < max_length:
        assert ref_count == stream.numel() - 1
    assert result.nll == pytest.approx(ref_nll / ref_count, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(ref_nll / ref_count), rel=1e-5)
    assert result.seconds > 0 and result.tokens_per_second == pytest.approx(ref_count / result.seconds)


def test_default_stride_is_max_length_and_2d_input(model: GPT2LMHeadModel, stream: torch.Tensor) -> None:
    a = perplexity(model, stream, 16)
    b = perplexity(model, stream[None], 16, 16, batch_size=5)
    assert a.scored_tokens == b.scored_tokens == sum(t for *_, t in sliding_windows(stream.numel(), 16, 16))
    assert a.nll == pytest.approx(b.nll, rel=1e-6)


def test_uniform_model_has_perplexity_vocab() -> None:
    ids = torch.randint(0, VOCAB, (50,), generator=torch.Generator().manual_seed(2))
    result = perplexity(_FixedLogits(torch.zeros(VOCAB)), ids, max_length=8, stride=3, batch_size=4)
    assert isinstance(result, PerplexityResult)
    assert result.scored_tokens == 49
    assert result.perplexity == pytest.approx(VOCAB, rel=1e-6)
    assert result.nll == pytest.approx(math.log(VOCAB), rel=1e-6)


def test_skewed_fixed_model_closed_form() -> None:
    probs = torch.tensor([0.5, 0.25, 0.125, 0.125])
    ids = torch.tensor([3, 0, 0, 1, 2, 0, 1])  # scored: 0 0 1 2 0 1 -> nll = (3 ln2 + 2*2 ln2 + 3 ln2) / 6
    result = perplexity(_FixedLogits(probs.log()), ids, max_length=3, stride=2, batch_size=2)
    assert result.scored_tokens == 6
    assert result.nll == pytest.approx(10 * math.log(2) / 6, rel=1e-6)
    assert result.perplexity == pytest.approx(2 ** (10 / 6), rel=1e-6)


def test_training_mode_restored_and_dropout_off(stream: torch.Tensor) -> None:
    noisy = _tiny_gpt2(dropout=0.5)
    ref_nll, ref_count = _reference(noisy, stream, 32, 16)
    noisy.train()
    result = perplexity(noisy, stream, 32, 16, batch_size=3)
    assert noisy.training
    assert result.nll == pytest.approx(ref_nll / ref_count, rel=1e-5)


def test_single_process_accelerator_unwraps(model: GPT2LMHeadModel, stream: torch.Tensor) -> None:
    wrapper = nn.Module()
    wrapper.module = model
    fake = SimpleNamespace(
        device=torch.device("cpu"), num_processes=1, process_index=0, unwrap_model=lambda m: m.module
    )
    ref_nll, ref_count = _reference(model, stream, 32, 7)
    result = perplexity(wrapper, stream, 32, 7, batch_size=4, accelerator=fake)  # type: ignore[arg-type]
    assert result.nll == pytest.approx(ref_nll / ref_count, rel=1e-5)


@pytest.mark.parametrize(
    ("n", "max_length", "stride", "match"),
    [
        (10, 4, 0, "stride=0"),
        (10, 4, 5, "stride=5"),
        (10, 4, -1, "stride=-1"),
        (10, 1, 1, "max_length=1"),
        (1, 4, 2, "n_tokens=1"),
        (0, 4, 2, "n_tokens=0"),
    ],
)
def test_bad_arguments(n: int, max_length: int, stride: int, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        sliding_windows(n, max_length, stride)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=match):
        perplexity(_FixedLogits(torch.zeros(VOCAB)), torch.zeros(n, dtype=torch.long), max_length, stride)


def test_bad_batch_size_and_shape() -> None:
    lm = _FixedLogits(torch.zeros(VOCAB))
    with pytest.raises(ValueError, match="batch_size=0"):
        perplexity(lm, torch.zeros(10, dtype=torch.long), 4, batch_size=0)
    with pytest.raises(ValueError, match=r"shape \(2, 5\)"):
        perplexity(lm, torch.zeros(2, 5, dtype=torch.long), 4)
