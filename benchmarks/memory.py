"""Peak memory (CPU RSS) of one IMP round, dense vs masked, each measured in a fresh process.

The claim under test: the peak memory of a round is that of dense training plus the masks (at most 1 byte per
prunable weight); the rewind weights live on disk and are loaded at rewind. Each child process goes through a
round as ``gpt_tickets.lottery`` does, with the real ``Trainer`` and ``MaskedParameters``:

1. train the previous round (dense), which leaves AdamW's state resident, as it is when the next round starts;
2. prune + rewind: cut the mask by magnitude where the weights live (masked run only; one cut from a full
   mask straight to 1-0.8^5 = 67.2%, so pruning's temporaries are those of round 1, the largest), then load the
   step-k weights from their file on disk;
3. train the round through ``MaskedParameters`` (an empty mask for the dense run).

The high-water mark of the resident set (``VmHWM``) is reset before step 2 and again before step 3 (Linux
``/proc/self/clear_refs``), so each phase's peak is its own; the round's peak is the larger of the two. Model,
gradient, AdamW and mask bytes are counted from the tensors themselves, so the reader can check
peak(masked) - peak(dense) against the mask budget. RSS is CPU memory: on a GPU the same tensors live in device
memory instead.

    python -m benchmarks.memory [--steps 2] [--repeats 1] [--write BENCHMARKS.md]
    python -m benchmarks.memory --quick     # smoke check (~1.5 min on 2 cores); its numbers mean nothing
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GPT2_SMALL_CONFIG = ROOT / "configs" / "gpt2_small_wikitext103.yaml"
SPARSITY = 1 - 0.8**5  # the tiny default's final ticket: 5 rounds at p = 0.2
MODES = ("dense", "masked")
MiB = 2**20


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


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
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

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
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

    with tempfile.TemporaryDirectory() as tmp:
        rewind_file = Path(tmp) / "rewind.safetensors"
        save_parameters(plain, rewind_file)  # round 0 keeps the step-k weights on disk, not in memory
        trainer.train(MaskedParameters(plain, Mask()), desc="previous round")
        after_previous = _status_kib("VmRSS") * 1024

        _reset_peak()
        if spec["mode"] == "masked":
            mask = magnitude_prune(dict(plain.named_parameters()), Mask.ones_like(plain, weights), SPARSITY, "global")
        else:
            mask = Mask()
        load_parameters(plain, rewind_file)
        prune_rewind_peak = _peak_bytes()

        _reset_peak()
        masked = MaskedParameters(plain, mask)
        trainer.train(masked, desc=f"{spec['mode']} round")
        train_peak = _peak_bytes()

    params = list(plain.parameters())
    return {
        "baseline": baseline,
        "after_previous_round": after_previous,
        "prune_rewind_peak": prune_rewind_peak,
        "train_peak": train_peak,
        "round_peak": max(prune_rewind_peak, train_peak),
        "parameters": sum(p.numel() for p in params),
        "parameter_bytes": _nbytes(params),
        "adamw_bytes": _nbytes(v for state in trainer.optimizer.state.values() for v in state.values()),
        "prunable_weights": sum(plain.get_parameter(w.name).numel() for w in weights),
        "mask_bytes": _nbytes(mask.values()),
        "masked_parameters_bytes": _nbytes(m for _, m in masked.pairs),
        "masked_parameters_dtype": str(masked.pairs[0][1].dtype) if masked.pairs else None,
        "sparsity": 1 - mask.num_remaining() / mask.numel() if mask else 0.0,
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
        "block_size": 1024,
        "batch_size": args.gpt2_batch_size,
        "steps": args.steps,
    }
    if args.quick:
        tiny["steps"] = 1
        gpt2.update(model_overrides={"n_layer": 2}, block_size=128, batch_size=1, steps=1)
    return {"tiny": tiny, "gpt2-small": gpt2}


def _measure(spec: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", "--child", json.dumps(spec)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"child {spec['size']}/{spec['mode']} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _mib(n: float) -> str:
    return f"{n / MiB:,.1f}"


def _report(size: str, spec: dict[str, Any], runs: dict[str, list[dict[str, Any]]], quick: bool) -> list[str]:
    first = runs["masked"][0]
    peak = {mode: statistics.median(r["round_peak"] for r in runs[mode]) for mode in MODES}
    phase = {
        (mode, key): statistics.median(r[key] for r in runs[mode])
        for mode in MODES
        for key in ("baseline", "prune_rewind_peak", "train_peak")
    }
    n_prunable = first["prunable_weights"]
    held = first["mask_bytes"] + first["masked_parameters_bytes"]
    extra = peak["masked"] - peak["dense"]
    extra_training = phase["masked", "train_peak"] - phase["dense", "train_peak"]
    shrunk = " (--quick: shrunk, numbers mean nothing)" if quick else ""
    lines = [
        f"### {size}{shrunk}",
        "",
        f"GPT-2 {first['n_layer']} layers x {first['n_embd']} wide, vocabulary {first['vocab_size']:,}: "
        f"{first['parameters']:,} parameters, {n_prunable:,} prunable (attention + MLP); random tokens, batch "
        f"{spec['batch_size']} x {spec['block_size']} tokens, {spec['steps']} AdamW step(s) per round, fp32; mask at "
        f"{first['sparsity']:.1%} sparsity.",
        "",
        "| tensors | MiB |",
        "|---|---|",
        f"| parameters | {_mib(first['parameter_bytes'])} |",
        f"| gradients (alive from backward to the optimizer step) | {_mib(first['parameter_bytes'])} |",
        f"| AdamW state (exp_avg, exp_avg_sq, step) | {_mib(first['adamw_bytes'])} |",
        f"| masks at 1 byte per prunable weight (the budget) | {_mib(n_prunable)} |",
        f"| masks held while training: bool `Mask` {_mib(first['mask_bytes'])} + `MaskedParameters` copies "
        f"{_mib(first['masked_parameters_bytes'])} ({first['masked_parameters_dtype']}) | {_mib(held)} |",
        "",
        "| run | RSS before the model | peak, prune + rewind | peak, training | peak of the round |",
        "|---|---|---|---|---|",
    ]
    for mode in MODES:
        lines.append(
            f"| {mode} | {_mib(phase[mode, 'baseline'])} | {_mib(phase[mode, 'prune_rewind_peak'])} | "
            f"{_mib(phase[mode, 'train_peak'])} | {_mib(peak[mode])} |"
        )
    lines += [
        "",
        f"**masked - dense peak: {_mib(extra)} MiB = {extra / n_prunable:.2f} bytes per prunable weight** (budget: "
        f"1 byte; mask tensors held: {held / n_prunable:.2f} bytes per prunable weight). Training phase alone: "
        f"{_mib(extra_training)} MiB = {extra_training / n_prunable:.2f} bytes per prunable weight.",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps", type=int, default=2, help="optimizer steps per round (2: the first whose backward meets AdamW state)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="processes per (size, run); medians are reported")
    parser.add_argument("--gpt2-batch-size", type=int, default=2, help="blocks of 1024 tokens per step, GPT-2 small")
    parser.add_argument("--sizes", nargs="+", default=["tiny", "gpt2-small"], choices=["tiny", "gpt2-small"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads in each child (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="smoke check: 1 step, GPT-2 small cut to 2 layers")
    parser.add_argument("--write", default=None, help="update this Markdown file's section")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(run_child(json.loads(args.child))))
        return
    if args.quick and args.write:
        parser.error("--quick numbers mean nothing; run without --quick to --write them")

    from benchmarks.common import publish

    specs = _specs(args)
    lines = [
        "Peak resident memory (CPU RSS) of one IMP round, each run in a fresh process: the previous round leaves "
        "AdamW's state resident, then prune + rewind (the rewind weights are read from disk), then training "
        "through the real `Trainer` and `MaskedParameters`. Claim: peak = dense training + masks "
        "(<= 1 byte per prunable weight). The tiny model's masks (a few MiB) are within the run-to-run noise of RSS "
        "(raise --repeats for medians); GPT-2 small's are not.",
        "",
    ]
    for size in args.sizes:
        spec = specs[size]
        runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
        for _ in range(args.repeats):
            for mode in MODES:  # alternated, so drift in the machine's state hits both alike
                runs[mode].append(_measure({**spec, "size": size, "mode": mode, "threads": args.threads}))
                print(f"{size} {mode}: round peak {_mib(runs[mode][-1]['round_peak'])} MiB", file=sys.stderr)
        lines += [*_report(size, spec, runs, args.quick), ""]
    publish("Peak memory of a round: masked vs dense", lines[:-1], args.write)


if __name__ == "__main__":
    main()
