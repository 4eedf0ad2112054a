"""Evaluation throughput: batched sliding-window perplexity vs the batch-1 reference loop, measured in one run.

Both score the same random-weight model on the same random token stream; runs alternate (reference, batched,
reference, ...) so drift in the machine's speed hits both alike, and every pair must agree to 1e-5 relative.
Target: batched >= 1.5x the reference's tokens/s.

FLOPs are counted as 2 x N x T for both methods: N = parameters of the weight matrices (the token embedding once,
as the tied output projection; position embeddings, biases and LayerNorms left out), T = tokens fed through the
model (window lengths summed, so context re-read by overlapping windows counts again). Attention scores are not
counted, so the figures are a lower bound. That is the work of the plain loop; the batched path skips the output
projection at positions that predict nothing, so at stride < max length its figure is an effective one. Each is
shown as a fraction of a large fp32 matmul's FLOP/s measured in the same run.

    python -m benchmarks.eval_throughput [--repeats 3] [--write BENCHMARKS.md]
    python -m benchmarks.eval_throughput --quick    # seconds: checks the script, numbers meaningless
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from benchmarks.common import publish
from gpt_tickets.config import TINY_GPT2
from gpt_tickets.eval.perplexity import PerplexityResult, perplexity, perplexity_reference, sliding_windows


@dataclass
class Setup:
    name: str
    config: GPT2Config
    n_tokens: int
    max_length: int
    batch_size: int


def setups(quick: bool) -> list[Setup]:
    tiny = GPT2Config(vocab_size=2048, bos_token_id=0, eos_token_id=0, **TINY_GPT2)
    small = GPT2Config(bos_token_id=0, eos_token_id=0)  # GPT-2 small: 12 layers, 768 wide, 1024 context, 124M
    if quick:
        return [Setup("tiny", tiny, 4 * 128, 128, 8), Setup("GPT-2 small (124M)", small, 256, 128, 2)]
    return [Setup("tiny", tiny, 64 * 128, 128, 32), Setup("GPT-2 small (124M)", small, 3 * 1024, 1024, 4)]


def matmul_flops(n: int = 2048, repeats: int = 5) -> float:
    """Best fp32 FLOP/s of an n x n matmul: what this machine's BLAS reaches on a plain, large problem."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def matmul_params(model: torch.nn.Module) -> int:
    """N: parameters that enter a matmul per token (named_parameters lists the tied embedding/head once)."""
    return sum(p.numel() for name, p in model.named_parameters() if p.dim() == 2 and "wpe" not in name)


def tokens_processed(n_tokens: int, max_length: int, stride: int) -> int:
    return sum(end - begin for begin, end, _ in sliding_windows(n_tokens, max_length, stride))


def compare(model: torch.nn.Module, stream: torch.Tensor, setup: Setup, stride: int, repeats: int) -> dict:
    """Alternating timed runs of both methods; every batched result must match its reference to 1e-5."""
    args = (model, stream, setup.max_length, stride)
    perplexity(*args, batch_size=setup.batch_size)  # warm-up: allocator, thread pool, lazy init
    runs: dict[str, list[PerplexityResult]] = {"reference": [], "batched": []}
    for _ in range(repeats):
        runs["reference"].append(perplexity_reference(*args))
        runs["batched"].append(perplexity(*args, batch_size=setup.batch_size))
    worst = 0.0
    for ref, bat in zip(runs["reference"], runs["batched"], strict=True):
        assert ref.scored_tokens == bat.scored_tokens, (ref, bat)
        worst = max(worst, abs(bat.nll - ref.nll) / ref.nll)
    assert worst <= 1e-5, f"batched and reference disagree: relative NLL difference {worst:.2e}"
    seconds = {name: statistics.median(r.seconds for r in results) for name, results in runs.items()}
    return {"seconds": seconds, "scored": runs["batched"][0].scored_tokens, "worst": worst}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="alternating reference/batched pairs per case")
    parser.add_argument("--quick", action="store_true", help="tiny settings that only check the script runs")
    parser.add_argument("--write", default=None, help="update this Markdown file's section")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats

    matmul_n = 512 if args.quick else 2048
    peak = matmul_flops(matmul_n)
    rows = [
        "| model | N (matmul params) | max length | stride | batch | scored tokens | reference tok/s | batched tok/s "
        "| speedup | reference % of matmul | batched % of matmul | max rel. NLL diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for setup in setups(args.quick):
        torch.manual_seed(0)
        model = GPT2LMHeadModel(setup.config).eval()
        generator = torch.Generator().manual_seed(1)
        stream = torch.randint(0, setup.config.vocab_size, (setup.n_tokens,), generator=generator)
        n_params = matmul_params(model)
        for stride in (setup.max_length, setup.max_length // 2):
            result = compare(model, stream, setup, stride, repeats)
            flops = 2 * n_params * tokens_processed(setup.n_tokens, setup.max_length, stride)
            ref_s, bat_s = result["seconds"]["reference"], result["seconds"]["batched"]
            rows.append(
                f"| {setup.name} | {n_params / 1e6:.1f}M | {setup.max_length} | {stride} | {setup.batch_size} "
                f"| {result['scored']:,} | {result['scored'] / ref_s:,.0f} | {result['scored'] / bat_s:,.0f} "
                f"| **{ref_s / bat_s:.2f}x** | {flops / ref_s / peak:.0%} | {flops / bat_s / peak:.0%} "
                f"| {result['worst']:.1e} |"
            )
            print(rows[-1], flush=True)
        del model

    lines = [
        f"Random-weight GPT-2s on a random token stream, medians of {repeats} alternating pairs per row; tokens/s "
        "counts scored tokens over the scoring loop's wall time (no loading or tokenization). Reference: "
        "`evaluation.perplexity_reference`, one window per forward, log-softmax over every position in float64. "
        "Batched: `evaluation.perplexity`, right-padded windows through the transformer body, then the output "
        "projection and float32 cross-entropy at scored positions only, ~64 MiB of logits at a time (the logits of "
        "a batch are never materialised). Target: speedup >= 1.5x.",
        "",
        *rows,
        "",
        "FLOPs = 2 x N x tokens fed through the model (window lengths summed; the token embedding counted once, as "
        "the tied output projection; attention scores not counted), as a share of the FLOP/s of a "
        f"{matmul_n} x {matmul_n} fp32 matmul measured in the same run: {peak / 1e9:.1f} GFLOP/s.",
    ]
    if args.write and args.quick:
        raise SystemExit("--quick numbers are meaningless; run without --quick to --write")
    publish("Evaluation throughput: batched vs batch-1 reference", lines, args.write)


if __name__ == "__main__":
    main()
