"""Batched sliding-window perplexity must equal the batch-1 reference, and both must equal closed-form cases."""

from __future__ import annotations

import contextlib
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from gpt_tickets.eval.perplexity import PerplexityResult, perplexity, perplexity_reference, sliding_windows

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
    """Summed NLL and count of the package's batch-1 reference (itself checked against closed forms below)."""
    result = perplexity_reference(model, ids, max_length, stride)
    return result.nll * result.scored_tokens, result.scored_tokens


class _FixedLogits(nn.Module):
    """A parameter-free 'LM' predicting the same distribution everywhere, so perplexity has a closed form."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("row", logits)

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.row.expand(*input_ids.shape, -1))


class _LastTokenBigram(nn.Module):
    """An 'LM' whose next-token distribution depends on the current token only: a closed form that still needs the
    right positions and labels. It honours ``logits_to_keep`` like a transformers model, so it drives both paths."""

    def __init__(self, table: torch.Tensor, takes_logits_to_keep: bool) -> None:
        super().__init__()
        self.register_buffer("table", table)  # [vocab, vocab] log-probabilities, row = current token
        if not takes_logits_to_keep:
            self.forward = self._forward_all  # type: ignore[method-assign]

    def forward(self, input_ids: torch.Tensor, logits_to_keep: torch.Tensor | int = 0) -> SimpleNamespace:
        logits = self.table[input_ids]
        return SimpleNamespace(logits=logits if isinstance(logits_to_keep, int) else logits[:, logits_to_keep])

    def _forward_all(self, input_ids: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.table[input_ids])


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


@pytest.mark.parametrize("method", ["batched", "reference"])
def test_skewed_fixed_model_closed_form(method: str) -> None:
    probs = torch.tensor([0.5, 0.25, 0.125, 0.125])
    ids = torch.tensor([3, 0, 0, 1, 2, 0, 1])  # scored: 0 0 1 2 0 1 -> nll = (3 ln2 + 2*2 ln2 + 3 ln2) / 6
    lm = _FixedLogits(probs.log())
    if method == "batched":
        result = perplexity(lm, ids, max_length=3, stride=2, batch_size=2)
    else:
        result = perplexity_reference(lm, ids, max_length=3, stride=2)
    assert result.scored_tokens == 6
    assert result.nll == pytest.approx(10 * math.log(2) / 6, rel=1e-6)
    assert result.perplexity == pytest.approx(2 ** (10 / 6), rel=1e-6)


# Bigram table: after token a the next is b with probability P[a][b]. Stream 0 1 2 1 0 2 2 (n=7).
BIGRAM = torch.tensor([[0.5, 0.25, 0.25], [0.125, 0.5, 0.375], [0.25, 0.25, 0.5]]).log()
STREAM = torch.tensor([0, 1, 2, 1, 0, 2, 2])


def _bigram_nll(pairs: list[tuple[int, int]]) -> float:
    return -sum(BIGRAM[a, b].item() for a, b in pairs)


@pytest.mark.parametrize("method", ["batched", "batched-logits_to_keep", "reference"])
@pytest.mark.parametrize(
    ("max_length", "stride", "scored"),
    [
        # stride < max_length: every token but the first, each once (windows (0,4),(2,6),(4,7))
        (4, 2, [1, 2, 3, 4, 5, 6]),
        # stride = max_length: windows (0,3),(3,6),(6,7); each window's first token has no context, the tail is empty
        (3, 3, [1, 2, 4, 5]),
    ],
)
def test_bigram_model_by_hand(method: str, max_length: int, stride: int, scored: list[int]) -> None:
    """Every scored token t is predicted from token t - 1, so the exact NLL is a sum over hand-picked pairs."""
    pairs = [(int(STREAM[t - 1]), int(STREAM[t])) for t in scored]
    if method == "reference":
        result = perplexity_reference(_LastTokenBigram(BIGRAM, False), STREAM, max_length, stride)
    else:
        lm = _LastTokenBigram(BIGRAM, takes_logits_to_keep=method.endswith("logits_to_keep"))
        result = perplexity(lm, STREAM, max_length, stride, batch_size=2)
    assert result.scored_tokens == len(scored)
    assert result.nll == pytest.approx(_bigram_nll(pairs) / len(scored), rel=1e-6)


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
        device=torch.device("cpu"),
        num_processes=1,
        process_index=0,
        unwrap_model=lambda m: m.module,
        autocast=contextlib.nullcontext,
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


@pytest.mark.parametrize("stride", [16, 7])
def test_llama_body_and_head_path_equals_the_reference(stride: int) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from gpt_tickets.eval.perplexity import _body_and_head

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    ids = torch.randint(0, 97, (150,), generator=torch.Generator().manual_seed(1))
    assert _body_and_head(model) is not None  # the chunked body-and-head path, not the full-logits one
    reference = perplexity_reference(model, ids, 16, stride)
    batched = perplexity(model, ids, 16, stride, batch_size=3)
    assert batched.scored_tokens == reference.scored_tokens
    assert batched.nll == pytest.approx(reference.nll, rel=1e-5)
