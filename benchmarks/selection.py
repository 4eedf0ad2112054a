"""Pruning selection: the radix select vs the old bisection, torch's global pruning and ``torch.cat`` + ``kthvalue``.

One IMP selection as the lottery runner makes it: a GPT-2 whose attention + MLP mask is already at 48.8% sparsity
(3 rounds at p = 0.2, the pruned weights zeroed as training leaves them) loses 20% of its remaining weights,
ranked globally by magnitude. Four ways of doing it:

(a) the bisection over float32 bit patterns that ``gpt_tickets.sparsity.select`` used before (~31 counting passes;
    a private copy is kept here for the comparison);
(b) the radix select, ``gpt_tickets.sparsity.select.magnitude_prune`` (3 passes);
(c) ``torch.nn.utils.prune.global_unstructured`` with ``L1Unstructured``, the mask so far installed first with
    ``custom_from_mask`` (its own way of remembering it; that setup is not counted);
(d) ``torch.cat`` of the surviving magnitudes, ``torch.kthvalue`` for the cut, and one pass keeping what lies above.

Time: all four alternate in one process (a, b, c, d, a, b, ...) so drift in the shared machine's speed hits all
alike; the ratio is the median of the per-repeat ratios. Peak extra memory: each method once in a fresh process that
builds the model and the mask, then resets the resident set's high-water mark (Linux ``/proc/self/clear_refs``) and
runs the method; peak = ``VmHWM`` - the RSS just before, with glibc's mmap threshold fixed at 64 KiB
(``MALLOC_MMAP_THRESHOLD_``) so freed temporaries go back to the system instead of hiding in the heap. The new mask
counts: it is what the method makes. Differing entries: mask entries where a method's new mask differs from (b)'s.

One torch thread by default: on the shared 2-core machine a neighbour's load makes two-thread timings scatter by
10x and more from repeat to repeat (each parallel op waits for a descheduled sibling thread); ``--threads 0`` keeps
torch's default.

    python -m benchmarks.selection [--repeats 5] [--tiny-repeats 15] [--threads 1] [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import copy
import gc
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.utils.prune as torch_prune
from transformers import GPT2Config

from benchmarks.common import answer_child, parse_args, publish, run_child
from gpt_tickets.config import TINY_GPT2
from gpt_tickets.models.build import random_init
from gpt_tickets.models.families import prunable_weights
from gpt_tickets.sparsity.masks import Mask
from gpt_tickets.sparsity.select import magnitude_prune

METHODS = ("bisection", "radix", "torch_prune", "kthvalue")
LABELS = {
    "bisection": "(a) old bisection (~31 passes)",
    "radix": "(b) radix select (`magnitude_prune`)",
    "torch_prune": "(c) `prune.global_unstructured` (L1)",
    "kthvalue": "(d) `torch.cat` + `torch.kthvalue`",
}
GROUPS = ["attention", "mlp"]
FRACTION, ROUNDS_BEFORE = 0.2, 3  # a mask at 1 - 0.8^3 = 48.8%, then 20% of what remains
MiB = 2**20
Weights = dict[str, torch.Tensor]


# ----------------------------------------------------------------------- (a) the old bisection, kept for comparison

_INF_BITS = 0x7F800000


def _bisection_bits(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().float().abs().contiguous().view(torch.int32)


def _bisection_count_at_most(weights: Weights, keep: Mask, bits: int) -> int:
    return sum(int((keep[n] & (_bisection_bits(w) <= bits)).sum()) for n, w in weights.items())


def _bisection_prune(weights: Weights, mask: Mask, fraction: float) -> Mask:
    """The selection as it was: bisection for the k-th smallest bit pattern, ties in parameter then index order."""
    weights = {n: weights[n] for n in mask}
    keep = mask
    n_prune = round(fraction * sum(int(m.sum()) for m in keep.values()))
    lo, hi = 0, _INF_BITS
    while lo < hi:
        mid = (lo + hi) // 2
        if _bisection_count_at_most(weights, keep, mid) >= n_prune:
            hi = mid
        else:
            lo = mid + 1
    ties_left = n_prune - _bisection_count_at_most(weights, keep, lo - 1)
    new = Mask()
    for n, w in weights.items():
        bits = _bisection_bits(w)
        survives = keep[n] & (bits > lo)
        tied = (keep[n] & (bits == lo)).flatten().nonzero().squeeze(1)
        survives.view(-1)[tied[ties_left:]] = True
        ties_left = max(0, ties_left - tied.numel())
        new[n] = survives
    return new


# --------------------------------------------------------------------------------------- the four methods


def _kthvalue_prune(weights: Weights, mask: Mask, fraction: float) -> Mask:
    """The short way: all surviving magnitudes in one vector, its k-th smallest as the cut; ties at the cut all go."""
    scores = torch.cat([weights[n].detach().abs()[m] for n, m in mask.items()])
    cut = torch.kthvalue(scores, round(fraction * scores.numel())).values
    del scores
    return Mask({n: m & (weights[n].detach().abs() > cut) for n, m in mask.items()})


def _torch_prune_setup(model: torch.nn.Module, mask: Mask) -> list[tuple[torch.nn.Module, str]]:
    """Install the mask so far the way torch's pruning remembers one (not timed, not counted)."""
    targets = []
    for name, m in mask.items():
        module = model.get_submodule(name.rsplit(".", 1)[0])
        torch_prune.custom_from_mask(module, "weight", m)
        targets.append((module, "weight"))
    return targets


def _torch_prune(targets: list[tuple[torch.nn.Module, str]]) -> None:
    torch_prune.global_unstructured(targets, pruning_method=torch_prune.L1Unstructured, amount=FRACTION)


def _torch_prune_mask(mask: Mask, targets: list[tuple[torch.nn.Module, str]]) -> Mask:
    return Mask({n: module.weight_mask.bool() for n, (module, _) in zip(mask, targets, strict=True)})


def _run(method: str, model: torch.nn.Module, mask: Mask) -> Mask:
    """Run (a), (b) or (d) once and return its new mask ((c) reparametrises the model, so it has its own path)."""
    weights = dict(model.named_parameters())
    if method == "bisection":
        return _bisection_prune(weights, mask, FRACTION)
    if method == "radix":
        return magnitude_prune(weights, mask, FRACTION, "global")
    if method == "kthvalue":
        return _kthvalue_prune(weights, mask, FRACTION)
    raise ValueError(method)


# ------------------------------------------------------------------------------------------------ in the child


def _shape(size: str) -> dict[str, Any]:
    if size == "tiny":
        return {"vocab_size": 2048, **TINY_GPT2}
    return {"vocab_size": 50257, "n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 1024}


def _setup(size: str) -> tuple[torch.nn.Module, Mask]:
    """The model (seeded random init) and its mask at 48.8%, with the pruned weights zeroed as IMP leaves them."""
    model = random_init(GPT2Config(bos_token_id=0, eos_token_id=0, **_shape(size)), seed=0)
    mask = Mask.ones_like(model, prunable_weights(model, GROUPS))
    for _ in range(ROUNDS_BEFORE):
        mask = magnitude_prune(dict(model.named_parameters()), mask, FRACTION, "global")
    with torch.no_grad():
        for name, m in mask.items():
            model.get_parameter(name).mul_(m)
    return model, mask


def _status_bytes(field: str) -> int:
    found = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    if found is None:
        raise RuntimeError(f"/proc/self/status has no {field}; this benchmark needs Linux")
    return int(found.group(1)) * 1024


def _memory_child(size: str, method: str) -> dict[str, Any]:
    """Peak extra resident memory of one run of ``method``, the model and mask already built."""
    model, mask = _setup(size)
    targets = _torch_prune_setup(model, mask) if method == "torch_prune" else None
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # the high-water mark restarts at the current RSS
    before = _status_bytes("VmRSS")
    new = _torch_prune(targets) if targets is not None else _run(method, model, mask)
    peak = _status_bytes("VmHWM")
    del new
    return {"peak_extra": peak - before, "rss_before": before, "prunable": mask.numel()}


def _timed(method: str, model: torch.nn.Module, mask: Mask) -> tuple[float, Mask]:
    """Seconds of one run of ``method`` and its new mask; (c) runs on a fresh copy with the mask so far installed."""
    if method != "torch_prune":
        start = time.perf_counter()
        new = _run(method, model, mask)
        return time.perf_counter() - start, new
    twin = copy.deepcopy(model)
    targets = _torch_prune_setup(twin, mask)
    start = time.perf_counter()
    _torch_prune(targets)
    seconds = time.perf_counter() - start
    return seconds, _torch_prune_mask(mask, targets)


def _time_child(size: str, repeats: int) -> dict[str, Any]:
    """Seconds per method, alternating; and how each method's mask differs from the radix select's."""
    model, mask = _setup(size)
    seconds: dict[str, list[float]] = {m: [] for m in METHODS}
    masks: dict[str, Mask] = {}
    for _ in range(repeats):
        for method in METHODS:
            elapsed, masks[method] = _timed(method, model, mask)
            seconds[method].append(elapsed)
            gc.collect()
    magnitudes = {n: model.get_parameter(n).detach().abs() for n in mask}
    ours = masks["radix"]
    cut = torch.cat([magnitudes[n][mask[n] & ~ours[n]] for n in mask]).max()  # the largest magnitude we removed
    return {
        "seconds": seconds,
        "differing": {m: sum(int((masks[m][n] != ours[n]).sum()) for n in ours) for m in METHODS},
        "only_at_cut": {
            m: all(bool((magnitudes[n][masks[m][n] != ours[n]] == cut).all()) for n in ours) for m in METHODS
        },
        "removed": {m: mask.num_remaining() - masks[m].num_remaining() for m in METHODS},
        "n_prune": round(FRACTION * mask.num_remaining()),
        "surviving": mask.num_remaining(),
        "prunable": mask.numel(),
        "sparsity": 1 - mask.num_remaining() / mask.numel(),
        "matrices": len(mask),
        "threads": torch.get_num_threads(),
    }


# ----------------------------------------------------------------------------------------------- in the parent


def _child(spec: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    return run_child("benchmarks.selection", spec, torch.get_num_threads(), env)


def _measure(size: str, repeats: int) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    timing = _child({"size": size, "mode": "time", "repeats": repeats})
    print(f"{size}: timed {repeats} repeats", file=sys.stderr)
    memory = {}
    for method in METHODS:
        memory[method] = _child({"size": size, "mode": "memory", "method": method}, {"MALLOC_MMAP_THRESHOLD_": "65536"})
        print(f"{size} {method}: peak extra {memory[method]['peak_extra'] / MiB:,.1f} MiB", file=sys.stderr)
    return timing, memory


def _per_repeat(timing: dict[str, Any], method: str, other: str) -> list[float]:
    """Seconds of ``method`` / seconds of ``other`` in each repeat (both ran back to back)."""
    return [a / b for a, b in zip(timing["seconds"][method], timing["seconds"][other], strict=True)]


def _report(size: str, timing: dict[str, Any], memory: dict[str, dict[str, Any]], repeats: int) -> list[str]:
    seconds = {m: statistics.median(timing["seconds"][m]) for m in METHODS}
    ratios = {m: statistics.median(_per_repeat(timing, m, "kthvalue")) for m in METHODS}
    prunable = timing["prunable"]
    lines = [
        f"### {size}",
        "",
        f"GPT-2 {size}: {timing['matrices']} attention + MLP matrices, {prunable:,} prunable weights, mask at "
        f"{timing['sparsity']:.1%} ({timing['surviving']:,} surviving); selecting round(0.2 x surviving) = "
        f"{timing['n_prune']:,} to remove, globally. {repeats} alternating repeats, "
        f"torch threads: {timing['threads']}.",
        "",
        "| method | seconds (median) | time / (d) (median of per-repeat ratios) | peak extra memory, MiB | "
        "bytes per prunable weight | entries removed | entries differing from (b) | all of them tied at the cut |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in METHODS:
        peak = memory[m]["peak_extra"]
        lines.append(
            f"| {LABELS[m]} | {seconds[m]:.3f} | {ratios[m]:.2f} | {peak / MiB:,.1f} | {peak / prunable:.2f} | "
            f"{timing['removed'][m]:,} | {timing['differing'][m]:,} | "
            f"{'yes' if timing['only_at_cut'][m] else '**no**'} |"
        )
    radix_ratios = ", ".join(f"{r:.2f}" for r in _per_repeat(timing, "radix", "kthvalue"))
    lines += [
        "",
        f"**radix / kthvalue time: {ratios['radix']:.2f}** (target <= 1; per-repeat ratios {radix_ratios}); "
        f"**radix peak extra memory: {memory['radix']['peak_extra'] / prunable:.2f} bytes per prunable weight**, "
        f"the new mask (1 byte) included (target <= 2); old bisection / radix time: "
        f"{statistics.median(_per_repeat(timing, 'bisection', 'radix')):.1f}.",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="alternating repeats, GPT-2 small")
    parser.add_argument("--tiny-repeats", type=int, default=15, help="alternating repeats, tiny GPT-2")
    parser.add_argument("--sizes", nargs="+", default=["tiny", "gpt2-small"], choices=["tiny", "gpt2-small"])
    args = parse_args(parser)
    children = {
        "time": lambda spec: _time_child(spec["size"], spec["repeats"]),
        "memory": lambda spec: _memory_child(spec["size"], spec["method"]),
    }
    if answer_child(args, children):
        return

    lines = [
        "One global selection of IMP: 20% of the remaining attention + MLP weights of a GPT-2 whose mask is at "
        "48.8% (3 rounds at p = 0.2; pruned weights zeroed), by (a) the old bisection over float32 bit patterns, "
        "(b) the radix select now in `gpt_tickets.sparsity.select`, (c) torch's `global_unstructured` and (d) "
        "`torch.cat` + `torch.kthvalue`. Times: the four alternate in one process, the ratio to (d) is the median "
        f"of per-repeat ratios (seconds are CPU figures for scale only), {torch.get_num_threads()} torch thread(s) "
        "(the default 1: a neighbour's load on this shared 2-core machine scatters two-thread timings by 10x). "
        "Peak extra memory: each method once in a fresh process, VmHWM minus the RSS just before it ran, new mask "
        "included, `MALLOC_MMAP_THRESHOLD_=65536`. (a) and (b) give bitwise equal masks (tests/test_pruning.py "
        "checks it on planted ties); (c) and (d) can differ from (b) only among weights whose magnitude equals the "
        "cut (the last column checks it): (c) removes exactly as many, choosing among the tied in `torch.topk`'s "
        "order instead of parameter-then-index order, and (d) as written removes every weight tied at the cut, so it "
        "may remove a few more.",
        "",
    ]
    for size in args.sizes:
        repeats = args.tiny_repeats if size == "tiny" else args.repeats
        timing, memory = _measure(size, repeats)
        lines += [*_report(size, timing, memory, repeats), ""]
    publish("Pruning selection: radix select vs bisection, torch pruning, kthvalue", lines[:-1], args.write)


if __name__ == "__main__":
    main()
