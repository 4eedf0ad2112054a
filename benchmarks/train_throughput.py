"""Training throughput of our masking vs the same dense model and vs masking by ``torch.nn.utils.prune``, in one run.

All three train through the real ``Trainer`` (Accelerate, AdamW, clipping) from the same initial weights:

- dense: an empty mask;
- ours: ``MaskedParameters`` zeroes the pruned gradients before and the pruned weights after every optimizer step;
- peer: what a researcher without gpt_tickets writes (BERT-Tickets does): ``prune.custom_from_mask`` on every pruned
  weight, i.e. ``weight_orig`` + a float ``weight_mask`` buffer + a forward pre-hook that recomputes
  ``weight = weight_orig * weight_mask`` at every forward. Its masks live inside its model, so it gets an empty mask
  for ours, as the dense run does: the only difference is the masking mechanism.

Runs alternate (dense, ours, peer, dense, ...) so drift in the machine's speed hits all alike; each ratio is the
median of the per-repeat ratios (robust to a stall of the shared machine in one run), with the ratio of total
throughputs beside it. Target: ours / peer >= 1.0.

    python -m benchmarks.train_throughput [--steps 60] [--repeats 9] [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
import torch.nn.utils.prune as torch_prune
import transformers
from accelerate import Accelerator
from transformers import GPT2Config, GPT2LMHeadModel

from benchmarks.common import publish
from gpt_tickets.config import TINY_GPT2, TrainConfig
from gpt_tickets.models.families import prunable_weights
from gpt_tickets.sparsity.apply import MaskedParameters
from gpt_tickets.sparsity.masks import Mask
from gpt_tickets.sparsity.select import magnitude_prune
from gpt_tickets.train.trainer import Trainer

RUNS = ("dense", "ours", "peer")
ADAMW_WEIGHTS = 10_000_000  # the size of the isolated AdamW timing
WIDE_GPT2 = {"n_layer": 6, "n_embd": 512, "n_head": 8, "n_positions": 512}  # where the masking cost was first seen


def imp_mask(model: torch.nn.Module, rounds: int) -> Mask:
    """The mask of ``rounds`` global IMP rounds at p = 0.2 over the attention and MLP weights."""
    mask = Mask.ones_like(model, prunable_weights(model, ["attention", "mlp"]))
    for _ in range(rounds):
        mask = magnitude_prune(dict(model.named_parameters()), mask, 0.2, "global")
    return mask


def peer_model(model: torch.nn.Module, mask: Mask) -> torch.nn.Module:
    """A copy of ``model`` masked the ``torch.nn.utils.prune`` way: weight_orig, weight_mask and a pre-hook each."""
    peer = copy.deepcopy(model)
    for name, m in mask.items():
        module, _, attr = name.rpartition(".")
        torch_prune.custom_from_mask(peer.get_submodule(module), attr, m)
    return peer


def reload_report(model: GPT2LMHeadModel) -> dict[str, int]:
    """Save ``model`` with ``save_pretrained`` and count what plain ``from_pretrained`` finds missing or unexpected."""
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()
        try:
            _, info = GPT2LMHeadModel.from_pretrained(folder, output_loading_info=True)
        finally:
            transformers.logging.set_verbosity(verbosity)
    return {key: len(info[key]) for key in ("missing_keys", "unexpected_keys")}


def our_masking(masked: MaskedParameters) -> None:
    """Both masking calls of our training step: pruned gradients before the optimizer step, weights after it."""
    masked.zero_grads()
    masked.zero_weights()


@torch.no_grad()
def bool_multiplies(masked: MaskedParameters) -> None:
    """The previous masking calls: one float x bool ``mul_`` per gradient, then one per weight."""
    for param, m in masked.pairs:
        param.grad.mul_(m)
    for param, m in masked.pairs:
        param.mul_(m)


def peer_masking(peer: torch.nn.Module, mask: Mask) -> Callable[[], None]:
    """The peer's masking work in a step: each pre-hook's ``weight_orig * weight_mask`` (under autograd, as in
    training) and the backward's ``grad * weight_mask`` for ``weight_orig``."""
    modules = [peer.get_submodule(name.rpartition(".")[0]) for name in mask]
    grads = [torch.zeros_like(module.weight_orig) for module in modules]

    def calls() -> None:
        for module, grad in zip(modules, grads, strict=True):
            for hook in module._forward_pre_hooks.values():
                hook(module, ())
            torch.mul(grad, module.weight_mask)

    return calls


def per_call_ms(calls: Callable[[], None], repeats: int) -> float:
    for _ in range(max(2, repeats // 20)):
        calls()
    start = time.perf_counter()
    for _ in range(repeats):
        calls()
    return (time.perf_counter() - start) / repeats * 1e3


def isolated_masking_ms(
    masked: MaskedParameters, peer: torch.nn.Module, mask: Mask, repeats: int, rounds: int = 5
) -> dict[str, float]:
    """Milliseconds per step of each method's masking work (gradients present), alternated ``rounds`` times;
    medians. Ours and the previous bool multiplies: both calls of a step; the peer: its hooks and backward."""
    for param, _ in masked.pairs:
        param.grad = torch.zeros_like(param)
    methods = {
        "ours": functools.partial(our_masking, masked),
        "bool": functools.partial(bool_multiplies, masked),
        "peer": peer_masking(peer, mask),
    }
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(rounds):
        for name, calls in methods.items():
            times[name].append(per_call_ms(calls, repeats))
    for param, _ in masked.pairs:
        param.grad = None
    return {name: statistics.median(values) for name, values in times.items()}


def adamw_step_ms(n: int, zero_fraction: float, steps: int = 8) -> float:
    """Median ms of an AdamW step over ``n`` weights whose gradients, hence moments, are zero on ``zero_fraction``."""
    generator = torch.Generator().manual_seed(0)
    keep = (torch.rand(n, generator=generator) >= zero_fraction).float()
    param = torch.nn.Parameter(torch.randn(n, generator=generator) * keep)
    optimizer = torch.optim.AdamW([param], lr=1e-3, weight_decay=0.1)
    times = []
    for _ in range(steps):
        param.grad = torch.randn(n, generator=generator) * keep
        start = time.perf_counter()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:]) * 1e3


def adamw_zero_moments_ms(n: int, zero_fraction: float, rounds: int = 3) -> tuple[float, float]:
    """AdamW step ms with none vs ``zero_fraction`` of the moments exactly zero, alternated; medians of each."""
    times: dict[float, list[float]] = {0.0: [], zero_fraction: []}
    for _ in range(rounds):
        for fraction, values in times.items():
            values.append(adamw_step_ms(n, fraction))
    return statistics.median(times[0.0]), statistics.median(times[zero_fraction])


def wide_masking_ms(vocab_size: int, rounds: int) -> tuple[int, dict[str, float]]:
    """Prunable weights and isolated masking costs on the wider GPT-2, where the masking cost was first seen."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, bos_token_id=0, eos_token_id=0, **WIDE_GPT2))
    mask = imp_mask(model, rounds)
    return mask.numel(), isolated_masking_ms(MaskedParameters(model, mask), peer_model(model, mask), mask, repeats=20)


def time_runs(runs: dict[str, tuple[Trainer, MaskedParameters]], repeats: int, steps: int) -> dict[str, list[float]]:
    """Seconds of each run, alternated ``repeats`` times after one warm-up of each."""
    for trainer, params in runs.values():
        trainer.train(params, desc="warm-up")
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, (trainer, params) in runs.items():
            seconds[name].append(trainer.train(params, desc=name).seconds)
    return seconds


def ratio_line(label: str, faster: list[float], slower: list[float], target: str) -> str:
    """``label``: throughput of the first over the second, from the seconds of each repeat."""
    ratios = [s / f for f, s in zip(faster, slower, strict=True)]
    return (
        f"**{label}: {statistics.median(ratios):.3f}** (median of per-repeat ratios; ratio of totals "
        f"{sum(slower) / sum(faster):.3f}; per-repeat {', '.join(f'{r:.3f}' for r in ratios)}; {target})."
    )


def setup_lines(config: GPT2Config, args: argparse.Namespace, mask: Mask) -> list[str]:
    sparsity = 1 - mask.num_remaining() / mask.numel()
    return [
        f"Tiny GPT-2 ({config.n_layer} layers, {config.n_embd} wide, vocabulary {args.vocab_size}), batch 16 x "
        f"{config.n_positions} tokens, AdamW, {args.steps} steps per run, {args.repeats} alternating triples "
        f"(dense, ours, peer); mask at {sparsity:.1%} sparsity over {mask.numel():,} attention + MLP weights. "
        "Dense: an empty mask. Ours: `MaskedParameters` (pruned gradients zeroed before the optimizer step, pruned "
        "weights after it). Peer: `torch.nn.utils.prune.custom_from_mask` on each pruned weight (`weight_orig`, a "
        "float32 `weight_mask` and a forward pre-hook computing `weight = weight_orig * weight_mask`), as an IMP "
        "written on torch's pruning module does it (BERT-Tickets); all three go through the same `Trainer` from "
        "the same initial weights.",
    ]


def throughput_lines(seconds: dict[str, list[float]], steps: int) -> list[str]:
    rates = {name: statistics.median(steps / s for s in values) for name, values in seconds.items()}
    return [
        "| run | steps/s (median) |",
        "|---|---|",
        *(f"| {name} | {rates[name]:.2f} |" for name in RUNS),
        "",
        ratio_line("ours / peer throughput", seconds["ours"], seconds["peer"], "target >= 1.0"),
        ratio_line("ours / dense throughput", seconds["ours"], seconds["dense"], "on a CPU, see below"),
        "Steps/s are CPU figures for scale only; the ratios are the result.",
    ]


def optimizer_lines(mask: Mask, step_ms: float) -> tuple[list[str], float]:
    """AdamW's own slowdown over exactly-zero moments, measured here; returns the lines and its ms per step."""
    sparsity = 1 - mask.num_remaining() / mask.numel()
    dense_ms, sparse_ms = adamw_zero_moments_ms(ADAMW_WEIGHTS, sparsity)
    extra_ms = (sparse_ms - dense_ms) / (ADAMW_WEIGHTS * sparsity) * (mask.numel() - mask.num_remaining())
    lines = [
        "Both masked runs keep the Adam moments of pruned weights at exactly zero (the peer because its "
        "`weight_orig` gets zero gradient there), and AdamW's CPU step is slower over exactly-zero moments: one "
        f"step over {ADAMW_WEIGHTS / 1e6:.0f}M weights took {sparse_ms:.1f} ms with {sparsity:.1%} of gradients and "
        f"moments zero vs {dense_ms:.1f} ms with none ({sparse_ms / dense_ms:.2f}x; measured in this run), i.e. "
        f"~{extra_ms:.2f} ms a step over this model's {mask.numel() - mask.num_remaining():,} pruned weights, an "
        f"expected masked / dense of {step_ms / (step_ms + extra_ms):.3f} from the optimizer alone. That is the "
        "optimizer's work, not the masking's; no masking that keeps pruned moments at zero avoids it on a CPU. On a "
        "GPU, masked / dense >= 0.99 is still to be measured (no GPU machine was available).",
    ]
    return lines, extra_ms


def isolated_lines(costs: dict[str, tuple[int, dict[str, float]]], step_ms: float, adamw_ms: float) -> list[str]:
    ours_ms = costs["tiny (above)"][1]["ours"]
    return [
        "The masking work alone, timed in isolation, ms per step (medians of 5 alternations, gradients present). "
        "Ours: `zero_grads` + `zero_weights`, one list multiply each by the bool masks' uint8 views; previous: the "
        "same two calls as one float x bool `mul_` per tensor (torch's slow mixed-dtype path); peer: its pre-hooks' "
        "`weight_orig * weight_mask` (under autograd) and the backward's `grad * weight_mask`:",
        "",
        "| model | prunable weights | ours | previous `mul_(bool)` | peer |",
        "|---|---|---|---|---|",
        *(
            f"| {model} | {n:,} | {cost['ours']:.2f} | {cost['bool']:.2f} | {cost['peer']:.2f} |"
            for model, (n, cost) in costs.items()
        ),
        "",
        f"On the tiny model ours is {ours_ms:.2f} ms against a {step_ms:.0f} ms dense step; with the optimizer's "
        f"~{adamw_ms:.2f} ms above, an expected ours / dense of {step_ms / (step_ms + ours_ms + adamw_ms):.3f}. On a "
        "shared 2-core machine the whole-step ratios above scatter by several percent from repeat to repeat; the "
        "isolated figures are the low-noise ones.",
    ]


def state_dict_line(plain: GPT2LMHeadModel, peer: GPT2LMHeadModel) -> str:
    """Shows that ours saves a plain model and the peer does not, by reloading each with plain ``from_pretrained``."""
    ours, theirs = reload_report(plain), reload_report(peer)
    return (
        f"State dict: ours keeps the plain model's {len(plain.state_dict())} keys (plain `from_pretrained` of its "
        f"`save_pretrained`: {ours['missing_keys']} missing, {ours['unexpected_keys']} unexpected); the peer's has "
        f"{len(peer.state_dict())} keys, each pruned `weight` stored as `weight_orig` + `weight_mask`, so plain "
        f"`from_pretrained` finds {theirs['missing_keys']} missing (it initialises them at random) and "
        f"{theirs['unexpected_keys']} unexpected."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per timed run")
    parser.add_argument("--repeats", type=int, default=9, help="dense/ours/peer triples")
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--sparsity-rounds", type=int, default=5, help="IMP rounds at p=0.2 for the mask")
    parser.add_argument("--write", default=None, help="update this Markdown file's section")
    args = parser.parse_args()

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=args.vocab_size, bos_token_id=0, eos_token_id=0, **TINY_GPT2)
    model = GPT2LMHeadModel(config)
    mask = imp_mask(model, args.sparsity_rounds)
    peer = peer_model(model, mask)
    blocks = torch.randint(0, args.vocab_size, (64 * 16, config.n_positions))
    accelerator, train_cfg = Accelerator(), TrainConfig(steps=args.steps, batch_size=16)
    trainer = Trainer(accelerator, model, blocks, train_cfg, seed=0)
    peer_trainer = Trainer(accelerator, peer, blocks, train_cfg, seed=0)
    plain = accelerator.unwrap_model(trainer.model)
    masked, empty = MaskedParameters(plain, mask), MaskedParameters(plain, Mask())
    runs = {"dense": (trainer, empty), "ours": (trainer, masked), "peer": (peer_trainer, empty)}

    seconds = time_runs(runs, args.repeats, args.steps)
    step_ms = 1e3 * statistics.median(seconds["dense"]) / args.steps
    costs = {
        "tiny (above)": (mask.numel(), isolated_masking_ms(masked, peer, mask, repeats=200)),
        f"{WIDE_GPT2['n_layer']} layers x {WIDE_GPT2['n_embd']} wide": wide_masking_ms(
            args.vocab_size, args.sparsity_rounds
        ),
    }
    adamw, adamw_ms = optimizer_lines(mask, step_ms)
    lines = [
        *setup_lines(config, args, mask),
        "",
        *throughput_lines(seconds, args.steps),
        "",
        *adamw,
        "",
        *isolated_lines(costs, step_ms, adamw_ms),
        "",
        state_dict_line(plain, accelerator.unwrap_model(peer_trainer.model)),
    ]
    publish("Training throughput: ours vs dense vs torch.nn.utils.prune", lines, args.write)


if __name__ == "__main__":
    main()
