"""Wanda's calibration pass vs one training step, and its peak memory vs a plain forward of the same batches.

The pass is ``gpt_tickets.sparsity.calibration.input_norms`` as the ``wanda`` branch calls it: 128 blocks of the
config's ``data.block_size`` in batches of ``eval.batch_size``, in eval mode under no_grad, full precision (the
unwrapped model), forward hooks on every attention and MLP matrix. One training step is the real ``Trainer``'s
(Accelerate, the config's global batch and micro-batches, mixed precision, clipping, AdamW, masking under the full
mask), timed at steady state (the second and later steps of a phase). The model is the config's shape with a seeded
random init and random token ids: neither the cost nor the memory depends on the values.

Time: the pass and the step alternate in one process; the ratio is the median of per-repeat ratios. Memory: each
of three passes once in a fresh process: the calibration pass; the same batches through the model without hooks
and with ``logits_to_keep=1`` as the pass does (so the difference is what the hooks hold); and a plain forward with
full logits (what ``model(input_ids)`` costs). One block goes through the model first, so one-time library set-up
is not counted. Peak: on a GPU ``torch.cuda.max_memory_allocated`` minus what was
allocated before; on a CPU ``VmHWM`` minus the RSS just before (``MALLOC_MMAP_THRESHOLD_=65536``, as in
``benchmarks/selection.py``).

    python -m benchmarks.wanda_calibration [--configs configs/tiny.yaml ...] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import gc
import re
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from benchmarks.common import answer_child, parse_args, publish, run_child
from gpt_tickets.config import load_config
from gpt_tickets.config.schema import RunConfig
from gpt_tickets.models.build import random_init, scratch_config
from gpt_tickets.models.families import prunable_weights
from gpt_tickets.sparsity.apply import MaskedParameters
from gpt_tickets.sparsity.calibration import input_norms
from gpt_tickets.sparsity.masks import Mask
from gpt_tickets.train.trainer import Trainer

CALIBRATION_BLOCKS = 128  # the wanda branch's default
MiB = 2**20
PASSES = ("calibration", "forward_last_logits", "forward_full_logits")


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _setup(config_path: str) -> tuple[RunConfig, torch.nn.Module, list[str], torch.Tensor]:
    """The config, its model on the device, the names of its pruned weights, and enough random blocks."""
    cfg = load_config(config_path)
    config = scratch_config(cfg.model, vocab_size=cfg.data.vocab_size, bos_token_id=0, eos_token_id=0)
    model = random_init(config, seed=0)
    model.loss_type = "ForCausalLM"
    names = [w.name for w in prunable_weights(model, cfg.prune.groups)]
    count = max(CALIBRATION_BLOCKS, 4 * cfg.train.batch_size)
    generator = torch.Generator().manual_seed(0)
    blocks = torch.randint(cfg.data.vocab_size, (count, cfg.data.block_size), generator=generator)
    return cfg, model, names, blocks


def _calibrate(model: torch.nn.Module, names: list[str], blocks: torch.Tensor, batch_size: int) -> float:
    _sync()
    start = time.perf_counter()
    input_norms(model, names, blocks[:CALIBRATION_BLOCKS], batch_size)
    _sync()
    return time.perf_counter() - start


def _time_child(config_path: str, repeats: int) -> dict[str, Any]:
    cfg, model, names, blocks = _setup(config_path)
    acc = Accelerator(mixed_precision=cfg.train.mixed_precision if torch.cuda.is_available() else "no")
    trainer = Trainer(acc, model, blocks, replace(cfg.train, steps=3, warmup_steps=0), cfg.seed)
    plain = acc.unwrap_model(trainer.model)
    masked = MaskedParameters(plain, Mask.ones_like(plain, prunable_weights(plain, cfg.prune.groups)))
    calibration, step = [], []
    _calibrate(plain, names, blocks, cfg.eval.batch_size)  # warm-up: kernels, allocator
    for _ in range(repeats):
        calibration.append(_calibrate(plain, names, blocks, cfg.eval.batch_size))
        ends: list[float] = []

        def on_step(_step: int, _loss: torch.Tensor, ends: list[float] = ends) -> None:
            _sync()
            ends.append(time.perf_counter())

        trainer.train(masked, on_step)
        step.append(statistics.median(b - a for a, b in zip(ends, ends[1:], strict=False)))
        gc.collect()
    return {
        "calibration": calibration,
        "step": step,
        "parameters": sum(p.numel() for p in plain.parameters()),
        "pruned_matrices": len(names),
        "mixed_precision": acc.mixed_precision,
    }


def _resident(field: str) -> int:
    found = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    if found is None:
        raise RuntimeError(f"/proc/self/status has no {field}; this benchmark needs Linux on a CPU")
    return int(found.group(1)) * 1024


@torch.no_grad()
def _memory_child(config_path: str, which: str) -> dict[str, Any]:
    cfg, model, names, blocks = _setup(config_path)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    blocks = blocks[:CALIBRATION_BLOCKS]
    model(input_ids=blocks[:1].to(device), use_cache=False, logits_to_keep=1)  # one-time library set-up, not counted
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # the high-water mark restarts at the current RSS
        before = _resident("VmRSS")
    if which == "calibration":
        input_norms(model, names, blocks, cfg.eval.batch_size)
    else:
        keep = {"logits_to_keep": 1} if which == "forward_last_logits" else {}
        for batch in blocks.split(cfg.eval.batch_size):
            model(input_ids=batch.to(device), use_cache=False, **keep)
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = _resident("VmHWM") - before
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"peak_extra": peak, "weights": weights}


def _child(spec: dict[str, Any], threads: int) -> dict[str, Any]:
    return run_child("benchmarks.wanda_calibration", spec, threads, {"MALLOC_MMAP_THRESHOLD_": "65536"})


def _report(config_path: str, timing: dict[str, Any], memory: dict[str, dict[str, Any]]) -> list[str]:
    cfg = load_config(config_path)
    ratios = [c / s for c, s in zip(timing["calibration"], timing["step"], strict=True)]
    calibration, step = statistics.median(timing["calibration"]), statistics.median(timing["step"])
    peaks = {which: memory[which]["peak_extra"] / MiB for which in PASSES}
    tokens = CALIBRATION_BLOCKS * cfg.data.block_size
    return [
        f"### {config_path}",
        "",
        f"{timing['parameters']:,} parameters, {timing['pruned_matrices']} pruned matrices; calibration: "
        f"{CALIBRATION_BLOCKS} blocks x {cfg.data.block_size} tokens = {tokens:,} tokens in batches of "
        f"{cfg.eval.batch_size}; one step: a global batch of {cfg.train.batch_size} blocks "
        f"({cfg.train.batch_size * cfg.data.block_size:,} tokens; mixed precision {timing['mixed_precision']}). "
        f"{len(ratios)} alternating repeats.",
        "",
        "| | seconds (median) | peak extra memory, MiB |",
        "|---|---|---|",
        f"| calibration pass (hooks, logits_to_keep=1) | {calibration:.3f} | {peaks['calibration']:,.1f} |",
        f"| the same forward without hooks | | {peaks['forward_last_logits']:,.1f} |",
        f"| a plain forward with full logits | | {peaks['forward_full_logits']:,.1f} |",
        f"| one training step | {step:.3f} | |",
        "",
        f"**calibration / one training step: {statistics.median(ratios):.2f}** (per-repeat "
        f"{', '.join(f'{r:.2f}' for r in ratios)}); **calibration peak / the same forward without hooks: "
        f"{peaks['calibration'] / peaks['forward_last_logits']:.2f}**, / a plain forward with full logits: "
        f"{peaks['calibration'] / peaks['forward_full_logits']:.2f} (the weights, "
        f"{memory['calibration']['weights'] / MiB:,.1f} MiB, are not counted).",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["configs/tiny.yaml"], help="run configs whose shape to use")
    parser.add_argument("--repeats", type=int, default=5, help="alternating repeats of the pass and the step")
    args = parse_args(parser)
    children = {
        "time": lambda spec: _time_child(spec["config"], spec["repeats"]),
        "memory": lambda spec: _memory_child(spec["config"], spec["which"]),
    }
    if answer_child(args, children):
        return

    lines = [
        "Wanda's calibration pass (`gpt_tickets.sparsity.calibration.input_norms`, 128 blocks, as the `wanda` "
        "branch makes it) against one training step of the same model at the config's global batch, and its peak "
        "memory against a forward of the same batches (see the script's docstring for how each is measured).",
        "",
    ]
    for config in args.configs:
        timing = _child({"config": config, "mode": "time", "repeats": args.repeats}, args.threads)
        memory = {which: _child({"config": config, "mode": "memory", "which": which}, args.threads) for which in PASSES}
        lines += [*_report(config, timing, memory), ""]
    publish("Wanda calibration vs one training step", lines[:-1], args.write)


if __name__ == "__main__":
    main()
