"""Peak memory (CPU RSS) of one IMP round: dense, ours and the ``torch.nn.utils.prune`` peer, each in a fresh process.

The claim under test: the peak memory of a round is that of dense training plus the masks (at most 1 byte per
prunable weight); the rewind weights live on disk and are loaded at rewind. Each child process goes through a
round as ``gpt_tickets.lottery`` does, with the real ``Trainer`` and ``MaskedParameters``:

1. train the previous round (dense), which leaves AdamW's state resident, as it is when the next round starts;
2. prune + rewind: cut the mask by magnitude where the weights live (ours and peer; one cut from a full mask
   straight to 1-0.8^5 = 67.2%, so pruning's temporaries are those of round 1, the largest), then load the
   step-k weights from their file on disk; the peer then moves its masks into the model the way an IMP written on
   ``torch.nn.utils.prune`` does (BERT-Tickets): ``prune.custom_from_mask`` on each pruned weight, i.e.
   ``weight_orig`` + a float ``weight_mask`` buffer + a forward pre-hook computing ``weight`` from them;
3. train the round through ``MaskedParameters``: our mask for ours, an empty mask for dense and for the peer (whose
   masks act inside the model), so the only difference is the masking mechanism.

The high-water mark of the resident set (``VmHWM``) is reset before step 2 and again before step 3 (Linux
``/proc/self/clear_refs``), so each phase's peak is its own; the round's peak is the larger of the two. Model,
gradient, AdamW and mask bytes are counted from the tensors themselves, so the reader can check
peak(ours) - peak(dense) against the mask budget. RSS is CPU memory: on a GPU the same tensors live in device
memory instead. Children run with ``MALLOC_MMAP_THRESHOLD_=65536``: glibc then maps every allocation of 64 KiB or
more on its own and returns it when freed, so the RSS follows the live tensors, not the allocator's adaptive threshold.

    python -m benchmarks.memory [--steps 2] [--repeats 1] [--write BENCHMARKS.md]
    python -m benchmarks.memory --quick     # smoke check (~1 min on 2 cores); its numbers mean nothing
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import re
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, answer_child, parse_args, publish, run_child

GPT2_SMALL_CONFIG = ROOT / "configs" / "gpt2_small_wikitext103.yaml"
SPARSITY = 1 - 0.8**5  # the tiny default's final ticket: 5 rounds at p = 0.2
MODES = ("dense", "ours", "peer")
MiB = 2**20
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}  # a fixed threshold: freed tensors (>= 64 KiB) leave the RSS


# ---------------------------------------------------------------------------------------------- in the child


def _status_kib(field: str) -> int:
    found = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    if found is None:
        raise RuntimeError(f"/proc/self/status has no {field}; this benchmark needs Linux")
    return int(found.group(1))


def _reset_peak() -> None:
    """Start a new high-water mark at the current RSS, so the next phase's peak is not hidden by an earlier one."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")


def _peak_bytes() -> int:
    return _status_kib("VmHWM") * 1024


def _nbytes(tensors: Any) -> int:
    import torch

    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def _unique_nbytes(tensors: Any) -> int:
    """Bytes of the distinct storages behind ``tensors`` (a CPU ``MaskedParameters`` shares the ``Mask``'s)."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def _peer_masking_tensors(module: Any) -> list[Any]:
    """What the peer's masking keeps per weight: the float ``weight_mask`` buffer, the ``weight`` its pre-hook
    recomputes at every forward, and the mask given to ``custom_from_mask``, which the hook holds on to."""
    hooks = [hook for hook in module._forward_pre_hooks.values() if hasattr(hook, "mask")]
    return [module.weight_mask, module.weight, *(hook.mask for hook in hooks)]


def _hook_masks(model: Any, mask: Any) -> list[Any]:
    """The peer's masking: ``torch.nn.utils.prune.custom_from_mask`` on each pruned weight; returns the modules."""
    import torch.nn.utils.prune as torch_prune

    modules = []
    for name, m in mask.items():
        module_name, _, attr = name.rpartition(".")
        modules.append(torch_prune.custom_from_mask(model.get_submodule(module_name), attr, m))
    return modules


def _round_in_this_process(spec: dict[str, Any]) -> dict[str, Any]:
    """One round as the lottery runner does it, in this (fresh) process; returns the bytes it measured."""
    import torch
    from accelerate import Accelerator

    from gpt_tickets.config import TrainConfig, load_config
    from gpt_tickets.models.build import random_init, scratch_config
    from gpt_tickets.models.families import prunable_weights
    from gpt_tickets.models.params import load_parameters, save_parameters
    from gpt_tickets.sparsity.apply import MaskedParameters
    from gpt_tickets.sparsity.masks import Mask
    from gpt_tickets.sparsity.select import magnitude_prune
    from gpt_tickets.train.trainer import Trainer

    baseline = _status_kib("VmRSS") * 1024
    cfg = load_config(spec["config"])
    model_cfg = dataclasses.replace(cfg.model, config={**cfg.model.config, **spec["model_overrides"]})
    config = scratch_config(model_cfg, vocab_size=cfg.data.vocab_size, bos_token_id=0, eos_token_id=0)
    model = random_init(config, seed=0)
    torch.manual_seed(0)
    blocks = torch.randint(0, cfg.data.vocab_size, (2 * spec["batch_size"], spec["block_size"]))
    train_cfg = TrainConfig(steps=spec["steps"], batch_size=spec["batch_size"], max_grad_norm=1.0)
    trainer = Trainer(Accelerator(cpu=True), model, blocks, train_cfg, seed=0)
    plain = trainer.accelerator.unwrap_model(trainer.model)
    weights = prunable_weights(plain, ["attention", "mlp"])
    n_prunable = sum(plain.get_parameter(w.name).numel() for w in weights)  # before the peer renames them

    with tempfile.TemporaryDirectory() as tmp:
        rewind_file = Path(tmp) / "rewind.safetensors"
        save_parameters(plain, rewind_file)  # round 0 keeps the step-k weights on disk, not in memory
        trainer.train(MaskedParameters(plain, Mask()), desc="previous round")
        after_previous = _status_kib("VmRSS") * 1024

        _reset_peak()
        if spec["mode"] == "dense":
            mask = Mask()
        else:
            mask = magnitude_prune(dict(plain.named_parameters()), Mask.ones_like(plain, weights), SPARSITY, "global")
        load_parameters(plain, rewind_file)
        sparsity = 1 - mask.num_remaining() / mask.numel() if mask else 0.0
        hooked = _hook_masks(plain, mask) if spec["mode"] == "peer" else []
        if hooked:
            mask = Mask()  # the peer's masks now live in the model
        prune_rewind_peak = _peak_bytes()

        _reset_peak()
        masked = MaskedParameters(plain, mask)
        trainer.train(masked, desc=f"{spec['mode']} round")
        train_peak = _peak_bytes()

    params = list(plain.parameters())
    held = [*mask.values(), *(m for _, m in masked.pairs)]
    held += [t for module in hooked for t in _peer_masking_tensors(module)]
    return {
        "baseline": baseline,
        "after_previous_round": after_previous,
        "prune_rewind_peak": prune_rewind_peak,
        "train_peak": train_peak,
        "round_peak": max(prune_rewind_peak, train_peak),
        "parameters": sum(p.numel() for p in params),
        "parameter_bytes": _nbytes(params),
        "adamw_bytes": _nbytes(v for state in trainer.optimizer.state.values() for v in state.values()),
        "prunable_weights": n_prunable,
        "masking_bytes": _unique_nbytes(held),
        "masking_dtypes": sorted({str(t.dtype) for t in held}),
        "sparsity": sparsity,
        "n_layer": config.n_layer,
        "n_embd": config.n_embd,
        "vocab_size": config.vocab_size,
        "threads": torch.get_num_threads(),
    }


# --------------------------------------------------------------------------------------------- in the parent


def _specs(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """What each size trains; --quick shrinks GPT-2 small to 2 layers and short blocks so it runs in seconds."""
    tiny = {"config": None, "model_overrides": {}, "block_size": 128, "batch_size": 16, "steps": args.steps}
    gpt2 = {
        "config": str(GPT2_SMALL_CONFIG),
        "model_overrides": {},
        "block_size": args.gpt2_block_size,
        "batch_size": args.gpt2_batch_size,
        "steps": args.steps,
    }
    if args.quick:
        tiny["steps"] = 1
        gpt2.update(model_overrides={"n_layer": 2}, block_size=128, batch_size=1, steps=1)
    return {"tiny": tiny, "gpt2-small": gpt2}


def _mib(n: float) -> str:
    return f"{n / MiB:,.1f}"


def _per_weight(n_bytes: float, n_prunable: int) -> str:
    return f"{_mib(n_bytes)} MiB = {n_bytes / n_prunable:.2f} bytes per prunable weight"


def _report(size: str, spec: dict[str, Any], runs: dict[str, list[dict[str, Any]]], quick: bool) -> list[str]:
    first = {mode: runs[mode][0] for mode in MODES}
    info = first["ours"]
    phase = {
        (mode, key): statistics.median(r[key] for r in runs[mode])
        for mode in MODES
        for key in ("baseline", "prune_rewind_peak", "train_peak", "round_peak")
    }
    n_prunable = info["prunable_weights"]
    shrunk = " (--quick: shrunk, numbers mean nothing)" if quick else ""

    def row(label: str, key: str) -> str:
        return f"| {label} | " + " | ".join(_mib(phase[mode, key]) for mode in MODES) + " |"

    def extra(mode: str, key: str) -> str:
        return _per_weight(phase[mode, key] - phase["dense", key], n_prunable)

    def held(mode: str) -> str:
        return f"{first[mode]['masking_bytes'] / n_prunable:.2f} bytes per prunable weight"

    lines = [
        f"### {size}{shrunk}",
        "",
        f"GPT-2 {info['n_layer']} layers x {info['n_embd']} wide, vocabulary {info['vocab_size']:,}: "
        f"{info['parameters']:,} parameters, {n_prunable:,} prunable (attention + MLP); random tokens, batch "
        f"{spec['batch_size']} x {spec['block_size']} tokens, {spec['steps']} AdamW step(s) per round, fp32; mask at "
        f"{info['sparsity']:.1%} sparsity.",
        "",
        "| tensors | MiB |",
        "|---|---|",
        f"| parameters | {_mib(info['parameter_bytes'])} |",
        f"| gradients (alive from backward to the optimizer step) | {_mib(info['parameter_bytes'])} |",
        f"| AdamW state (exp_avg, exp_avg_sq, step) | {_mib(info['adamw_bytes'])} |",
        f"| masks at 1 byte per prunable weight (the budget) | {_mib(n_prunable)} |",
        f"| ours: masks held while training (the `Mask` and `MaskedParameters`, one storage on CPU; "
        f"{', '.join(first['ours']['masking_dtypes'])}) | {_mib(first['ours']['masking_bytes'])} |",
        f"| peer: `weight_mask` buffers + the `weight` tensors its pre-hooks recompute each forward + the masks "
        f"the hooks keep ({', '.join(first['peer']['masking_dtypes'])}) | {_mib(first['peer']['masking_bytes'])} |",
        "",
        "| MiB | " + " | ".join(MODES) + " |",
        "|---" * (len(MODES) + 1) + "|",
        row("RSS before the model", "baseline"),
        row("peak, prune + rewind", "prune_rewind_peak"),
        row("peak, training", "train_peak"),
        row("**peak of the round**", "round_peak"),
        "",
        f"**ours - dense peak: {extra('ours', 'round_peak')}** (budget: 1 byte; its masking tensors: "
        f"{held('ours')}); **peer - dense peak: {extra('peer', 'round_peak')}** (its masking tensors: "
        f"{held('peer')}). Training phase alone: ours {extra('ours', 'train_peak')}, peer "
        f"{extra('peer', 'train_peak')}.",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps", type=int, default=2, help="optimizer steps per round (2: the first whose backward meets AdamW state)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="processes per (size, run); medians are reported")
    parser.add_argument("--gpt2-batch-size", type=int, default=1, help="blocks per step, GPT-2 small")
    parser.add_argument("--gpt2-block-size", type=int, default=512, help="tokens per block, GPT-2 small")
    parser.add_argument("--sizes", nargs="+", default=["tiny", "gpt2-small"], choices=["tiny", "gpt2-small"])
    parser.add_argument("--quick", action="store_true", help="smoke check: 1 step, GPT-2 small cut to 2 layers")
    args = parse_args(parser, default_threads=0)
    if answer_child(args, dict.fromkeys(MODES, _round_in_this_process)):
        return
    if args.quick and args.write:
        parser.error("--quick numbers mean nothing; run without --quick to --write them")

    specs = _specs(args)
    lines = [
        "Peak resident memory (CPU RSS) of one IMP round, each run in a fresh process with "
        "`MALLOC_MMAP_THRESHOLD_=65536` (a freed tensor of 64 KiB or more leaves the RSS at once): the previous "
        "round leaves AdamW's state resident, then prune + rewind (the rewind weights are read from disk), then "
        "training through the real `Trainer`. Dense: an empty mask. Ours: `MaskedParameters`. Peer: the masking of "
        "an IMP written on `torch.nn.utils.prune` (BERT-Tickets): `prune.custom_from_mask` on each pruned weight "
        "after the rewind (`weight_orig`, a float32 `weight_mask` buffer and a forward pre-hook computing `weight = "
        "weight_orig * weight_mask`), then the same `Trainer` with an empty mask; its masks are cut by our "
        "selection, so only the masking mechanism differs (the selection benchmark compares selections, "
        "`global_unstructured` included). Claim: ours peaks at dense training + masks (<= 1 byte per prunable "
        "weight). The tiny model's masks (a few MiB) are within the run-to-run noise of RSS (raise --repeats for "
        "medians); GPT-2 small's are not.",
        "",
    ]
    for size in args.sizes:
        spec = specs[size]
        runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
        for _ in range(args.repeats):
            for mode in MODES:  # alternated, so drift in the machine's state hits all alike
                child = {**spec, "size": size, "mode": mode}
                runs[mode].append(run_child("benchmarks.memory", child, args.threads, MALLOC_ENV))
                print(f"{size} {mode}: round peak {_mib(runs[mode][-1]['round_peak'])} MiB", file=sys.stderr)
        lines += [*_report(size, spec, runs, args.quick), ""]
    publish("Peak memory of a round: ours vs dense vs torch.nn.utils.prune", lines[:-1], args.write)


if __name__ == "__main__":
    main()
