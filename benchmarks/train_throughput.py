"""Training throughput of the masked model vs the same dense model, measured in one run.

Both go through the real ``Trainer`` (Accelerate, AdamW, clipping); the dense run uses an empty mask, so the
only difference is the masking work in the step. Runs alternate (dense, masked, dense, ...) so drift in the
machine's speed hits both alike; the ratio is the median of the per-pair ratios (robust to a
stall of the shared machine in one run), with the ratio of total throughputs beside it. Target: >= 0.97.

    python -m benchmarks.train_throughput [--steps 60] [--repeats 9] [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from accelerate import Accelerator
from transformers import GPT2Config, GPT2LMHeadModel

from benchmarks.common import publish
from gpt_tickets.config import TINY_GPT2, TrainConfig
from gpt_tickets.models.families import prunable_weights
from gpt_tickets.sparsity.apply import MaskedParameters
from gpt_tickets.sparsity.masks import Mask
from gpt_tickets.sparsity.select import magnitude_prune
from gpt_tickets.train.trainer import Trainer


def masking_cost_ms(masked: MaskedParameters, repeats: int = 200) -> float:
    """Milliseconds of the two per-step masking calls (gradients, then weights), with gradients present."""
    for param, _ in masked.pairs:
        param.grad = torch.zeros_like(param)
    for _ in range(10):
        masked.zero_grads()
        masked.zero_weights()
    start = time.perf_counter()
    for _ in range(repeats):
        masked.zero_grads()
        masked.zero_weights()
    elapsed = time.perf_counter() - start
    for param, _ in masked.pairs:
        param.grad = None
    return elapsed / repeats * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per timed run")
    parser.add_argument("--repeats", type=int, default=9, help="dense/masked pairs")
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--sparsity-rounds", type=int, default=5, help="IMP rounds at p=0.2 for the mask")
    parser.add_argument("--write", default=None, help="update this Markdown file's section")
    args = parser.parse_args()

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=args.vocab_size, bos_token_id=0, eos_token_id=0, **TINY_GPT2)
    model = GPT2LMHeadModel(config)
    blocks = torch.randint(0, args.vocab_size, (64 * 16, config.n_positions))
    trainer = Trainer(Accelerator(), model, blocks, TrainConfig(steps=args.steps, batch_size=16), seed=0)
    plain = trainer.accelerator.unwrap_model(trainer.model)

    mask = Mask.ones_like(plain, prunable_weights(plain, ["attention", "mlp"]))
    for _ in range(args.sparsity_rounds):
        mask = magnitude_prune(dict(plain.named_parameters()), mask, 0.2, "global")
    sparsity = 1 - mask.num_remaining() / mask.numel()
    dense, masked = MaskedParameters(plain, Mask()), MaskedParameters(plain, mask)

    trainer.train(dense, desc="warm-up")
    seconds: dict[str, list[float]] = {"dense": [], "masked": []}
    for _ in range(args.repeats):
        for name, params in (("dense", dense), ("masked", masked)):
            seconds[name].append(trainer.train(params, desc=name).seconds)
    rates = {name: [args.steps / s for s in values] for name, values in seconds.items()}
    ratios = [d / m for m, d in zip(seconds["masked"], seconds["dense"], strict=True)]
    ratio, total_ratio = statistics.median(ratios), sum(seconds["dense"]) / sum(seconds["masked"])
    mask_ms = masking_cost_ms(masked)
    step_ms = 1e3 / statistics.median(rates["dense"])

    lines = [
        f"Tiny GPT-2 ({config.n_layer} layers, {config.n_embd} wide, vocabulary {args.vocab_size}), batch 16 x "
        f"{config.n_positions} tokens, AdamW, {args.steps} steps per run, {args.repeats} alternating pairs; "
        f"mask at {sparsity:.1%} sparsity over {mask.numel():,} attention + MLP weights.",
        "",
        "| run | steps/s (median) |",
        "|---|---|",
        f"| dense | {statistics.median(rates['dense']):.2f} |",
        f"| masked | {statistics.median(rates['masked']):.2f} |",
        "",
        f"**masked / dense throughput: {ratio:.3f}** (median of per-pair ratios; ratio of totals {total_ratio:.3f}; "
        f"per-pair ratios "
        f"{', '.join(f'{r:.3f}' for r in ratios)}; "
        f"target >= 0.97). Steps/s are CPU figures for scale only; the ratio is the result.",
        "",
        f"The masking work alone, timed in isolation (both calls of a step, 200 repetitions): {mask_ms:.2f} ms "
        f"per step "
        f"against a {step_ms:.0f} ms dense step, i.e. an expected ratio of {step_ms / (step_ms + mask_ms):.3f}. On a "
        "shared 2-core machine the whole-step ratios above scatter by several percent from pair to pair; this "
        "isolated figure is the low-noise one.",
    ]
    publish("Training throughput: masked vs dense", lines, args.write)


if __name__ == "__main__":
    main()
