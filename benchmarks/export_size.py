"""Size of the compact sparse encoding vs the dense ``model.safetensors``, and the load time of each.

A GPT-2-small-sized model (124M parameters, random weights: file sizes depend only on shapes and sparsity, not on
values) is pruned by global magnitude over the attention and MLP matrices to 50/80/90% sparsity and written with
``gpt_tickets.export.write_weights`` in both formats, exactly as an export writes them. Reported per sparsity:

- prunable weights: (kept values in ``ticket_compact.safetensors`` + the bitmaps in ``ticket_masks.safetensors``)
  / those weights' bytes in ``model.safetensors``. The floor is (1 - sparsity) + 1/32 for fp32: 0.131 at 90%.
- whole model: (``ticket_compact.safetensors`` + ``ticket_masks.safetensors``) / ``model.safetensors``, file sizes
  on disk. The tied 50,257 x 768 embedding (31% of GPT-2 small) stays dense and bounds this ratio.
- load: ``load_ticket`` wall time of the compact folder / of the dense folder (median of 3, same run).

The tokenizer, config and model card are the same few kB in both formats and are left out.

    python -m benchmarks.export_size [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import GPT2Config

from benchmarks.common import publish
from gpt_tickets.config import RunConfig
from gpt_tickets.io import atomic_write_json
from gpt_tickets.models.build import random_init
from gpt_tickets.models.families import prunable_weights
from gpt_tickets.reporting.tables import markdown_table
from gpt_tickets.sparsity.apply import detach_masks
from gpt_tickets.sparsity.masks import Mask
from gpt_tickets.sparsity.select import magnitude_prune
from gpt_tickets.tickets.export import ticket_config, write_weights
from gpt_tickets.tickets.format import COMPACT_FILE, DENSE_FILE, MASKS_FILE, TICKET_CONFIG_FILE
from gpt_tickets.tickets.load import load_ticket

SPARSITIES = (0.5, 0.8, 0.9)
GPT2_SMALL = GPT2Config(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)
MiB = 2**20


def _write(model, mask: Mask, folder: Path, weights_format: str) -> Path:
    write_weights(model, mask, folder, weights_format)
    tcfg = ticket_config(RunConfig(), mask, model.config.model_type, weights_format)  # what load_ticket reads
    atomic_write_json(tcfg.to_dict(), folder / TICKET_CONFIG_FILE)
    return folder


def _load_seconds(folder: Path, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model = load_ticket(folder)
        times.append(time.perf_counter() - start)
        detach_masks(model)
        del model
    return statistics.median(times)


def measure(sparsity: float, model, full: Mask, workdir: Path) -> list[str]:
    trained = {n: model.get_parameter(n) for n in full}
    mask = magnitude_prune(trained, full, sparsity, "global")
    with torch.no_grad():
        for name, m in mask.items():
            model.get_parameter(name).mul_(m)
    dense = _write(model, mask, workdir / f"dense-{sparsity}", "dense")
    compact = _write(model, mask, workdir / f"compact-{sparsity}", "compact")

    values = load_file(str(compact / COMPACT_FILE))
    dense_prunable = sum(model.get_parameter(n).nbytes for n in mask)
    masks_bytes = (compact / MASKS_FILE).stat().st_size
    compact_prunable = sum(values[n].nbytes for n in mask) + masks_bytes
    dense_file = (dense / DENSE_FILE).stat().st_size
    compact_files = (compact / COMPACT_FILE).stat().st_size + masks_bytes
    actual = 1 - mask.num_remaining() / mask.numel()
    load_ratio = _load_seconds(compact) / _load_seconds(dense)
    return [
        f"{actual:.1%}",
        f"{dense_prunable / MiB:.1f} -> {compact_prunable / MiB:.1f}",
        f"**{compact_prunable / dense_prunable:.3f}x** (floor {1 - actual + 1 / 32:.3f})",
        f"{dense_file / MiB:.1f} -> {compact_files / MiB:.1f}",
        f"{compact_files / dense_file:.3f}x",
        f"{load_ratio:.2f}x",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", default=None, help="rewrite this benchmark's section of this Markdown file")
    args = parser.parse_args()

    model = random_init(GPT2_SMALL, seed=0)
    full = Mask.ones_like(model, prunable_weights(model, ["attention", "mlp"]))
    rows = [["sparsity", "prunable MiB", "prunable ratio", "whole model MiB", "whole ratio", "load time ratio"]]
    with tempfile.TemporaryDirectory() as tmp:
        for sparsity in SPARSITIES:  # each cut from the full mask: one-shot, the sizes are what IMP's would be
            rows.append(measure(sparsity, model, full, Path(tmp)))
    publish(
        "Export size: compact encoding vs dense model.safetensors",
        [
            f"GPT-2 small shape (124M parameters, {full.numel():,} prunable in attention + MLP), fp32, global "
            "magnitude pruning. Ratios are compact / dense; target at 90%: prunable <= 0.14x. Prunable: kept values + "
            "bitmaps vs those weights in model.safetensors; whole model: ticket_compact + ticket_masks files vs "
            "model.safetensors; load time: load_ticket of each folder, median of 3.",
            "",
            markdown_table(rows),
        ],
        args.write,
    )


if __name__ == "__main__":
    main()
