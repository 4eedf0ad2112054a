"""Shrink export speed: inference tokens/s of the shrunk model vs the dense (masked) one, measured in one run.

Random-weight models; a uniform structured mask removes 25 / 50 / 75% of every layer's MLP neurons (and, for the
Llama-family model, half of its KV groups). The dense model runs with the mask's zeros, as a ticket loads; the shrunk
one is ``tickets.shrink.shrink_model`` of it. Forwards (fp32, no grad, a fixed batch x sequence) alternate dense,
shrunk, dense, ... so drift in the machine's speed hits both alike; the speedup is the median of the per-pair ratios,
and every pair's logits must agree to 1e-4.

The limit a shrink can give is dense FLOPs / shrunk FLOPs, counting the matmuls per token: the LM head (embedding
lookups are no matmul), the attention projections, the attention scores (q.k and the weighted sum of values over the
average causal context (seq + 1) / 2) and the MLP. The LM head and the scores do not shrink with the neurons.
Target: the measured speedup within 10% of that limit.

File size: ``model.safetensors`` of the dense model (``save_pretrained``, zeros included) and of the shrunk export
(``write_shrunk``). Peak memory: the peak resident set (VmHWM) of a fresh process loading the folder with plain
``from_pretrained`` and running one forward, minus its resident set after importing torch, transformers and the
model's code, with glibc's mmap threshold fixed (``MALLOC_MMAP_THRESHOLD_``) so that the resident set follows live
memory. One torch thread by default: on a shared, busy machine two threads wait on each other's descheduling and the
timings scatter.

    python -m benchmarks.shrink_speed [--repeats 9] [--threads 1] [--write BENCHMARKS.md]
    python -m benchmarks.shrink_speed --quick    # seconds: checks the script, numbers meaningless
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PretrainedConfig, PreTrainedModel

from benchmarks.common import publish
from gpt_tickets.config import TINY_GPT2
from gpt_tickets.data.tokenizer import train_tokenizer
from gpt_tickets.models.families import unit_layouts
from gpt_tickets.quiet import library_bars_off
from gpt_tickets.sparsity.masks import Mask
from gpt_tickets.tickets.shrink import shrink_model, unit_mask, write_shrunk

NEURON_FRACTIONS = (0.25, 0.5, 0.75)


@dataclass
class Setup:
    name: str
    config: PretrainedConfig
    batch: int
    seq: int


@dataclass
class Case:
    neurons: float  # fraction of each layer's MLP neurons removed
    kv_groups: float = 0.0  # fraction of each layer's KV groups removed (Llama family)

    def label(self) -> str:
        groups = f" + {self.kv_groups:.0%} KV groups" if self.kv_groups else ""
        return f"{self.neurons:.0%} neurons{groups}"


def setups(quick: bool) -> list[Setup]:
    tiny = GPT2Config(vocab_size=2048, bos_token_id=0, eos_token_id=0, **TINY_GPT2)  # configs/tiny.yaml's model
    small = GPT2Config(bos_token_id=0, eos_token_id=0)  # GPT-2 small: 12 layers, 768 wide, 124M
    llama = LlamaConfig(  # a Llama-family model of the tiny one's size, with grouped-query attention
        vocab_size=2048,
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=128,
        bos_token_id=0,
        eos_token_id=0,
    )
    if quick:
        return [Setup("tiny GPT-2", tiny, 2, 32), Setup("tiny Llama (GQA 4/2)", llama, 2, 32)]
    return [
        Setup("tiny GPT-2 (configs/tiny.yaml)", tiny, 16, 128),
        Setup("tiny Llama (GQA 4/2)", llama, 16, 128),
        Setup("GPT-2 small (124M)", small, 1, 128),
    ]


def cases(config: PretrainedConfig) -> list[Case]:
    found = [Case(f) for f in NEURON_FRACTIONS]
    if config.model_type != "gpt2":  # GPT-2 heads cannot shrink (fixed head size)
        found += [Case(0.0, 0.5), Case(0.5, 0.5)]
    return found


def random_unit_mask(model: PreTrainedModel, case: Case, seed: int = 0) -> Mask:
    """The same number of random units removed in every layer (uniform allocation)."""
    rng = random.Random(seed)
    fractions = {"neurons": case.neurons, "heads": case.kv_groups}  # a Llama-family "heads" unit is a KV group
    removed = {
        layout.kind: [sorted(rng.sample(range(layout.count), count)) for _ in range(layout.layers)]
        for layout in unit_layouts(model.config)
        if (count := round(fractions[layout.kind] * layout.count))
    }
    return unit_mask(model, removed)


def flops_per_token(config: PretrainedConfig, seq: int) -> float:
    """Matmul FLOPs per token: LM head, attention projections, attention scores (average causal context), MLP."""
    context = (seq + 1) / 2
    if config.model_type == "gpt2":
        e, inner = config.n_embd, config.n_inner or 4 * config.n_embd
        layer = 2 * e * 3 * e + 2 * e * e + 2 * 2 * context * e + 2 * 2 * e * inner
        return config.n_layer * layer + 2 * e * config.vocab_size
    h, d = config.hidden_size, config.head_dim
    q, kv = config.num_attention_heads * d, config.num_key_value_heads * d
    layer = 2 * h * (q + 2 * kv) + 2 * q * h + 2 * 2 * context * q + 3 * 2 * h * config.intermediate_size
    return config.num_hidden_layers * layer + 2 * h * config.vocab_size


@torch.no_grad()
def timed(model: PreTrainedModel, ids: torch.Tensor) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    logits = model(ids).logits
    return time.perf_counter() - start, logits


def compare(dense: PreTrainedModel, shrunk: PreTrainedModel, ids: torch.Tensor, repeats: int) -> dict:
    """Alternating timed forwards; the shrunk logits must equal the dense ones (1e-4) in every pair."""
    timed(dense, ids), timed(shrunk, ids)  # warm-up: allocator, thread pool, lazy init
    pairs, worst = [], 0.0
    for _ in range(repeats):
        (t_dense, a), (t_shrunk, b) = timed(dense, ids), timed(shrunk, ids)
        worst = max(worst, float((a - b).abs().max()))
        pairs.append((t_dense, t_shrunk))
    assert worst <= 1e-4, f"shrunk and dense logits differ by {worst:.2e}"
    return {
        "dense_s": statistics.median(p[0] for p in pairs),
        "shrunk_s": statistics.median(p[1] for p in pairs),
        "speedup": statistics.median(p[0] / p[1] for p in pairs),
        "worst": worst,
    }


PEAK_RSS_SCRIPT = """
import sys, torch, transformers
torch.set_num_threads(int(sys.argv[4]))
def status(key):
    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(key + ':'))
with torch.device('meta'):  # imports the modeling code, in no memory
    transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.from_pretrained(sys.argv[1]))
open('/proc/self/clear_refs', 'w').write('5')  # reset the peak to the current resident set
before = status('VmRSS')
model = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1])
with torch.no_grad():
    model(torch.zeros(int(sys.argv[2]), int(sys.argv[3]), dtype=torch.long))
print((status('VmHWM') - before) / 1024)
"""


def peak_rss_mib(folder: Path, batch: int, seq: int) -> float:
    """Peak resident set of a fresh process loading ``folder`` and running one forward, over its post-import RSS."""
    threads = str(torch.get_num_threads())
    # A fixed mmap threshold: every large block is mapped and unmapped when freed, so the resident set follows live
    # memory (with glibc's adaptive threshold the same run's peak varies by +-20 MiB).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    run = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_SCRIPT, str(folder), str(batch), str(seq), threads],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return float(run.stdout.split()[-1])


def file_mib(folder: Path) -> float:
    return (folder / "model.safetensors").stat().st_size / 2**20


def measure(setup: Setup, repeats: int, tokenizer, scratch: Path) -> list[str]:
    """One table row per case of ``setup``; the dense model's size and memory in the first row's columns."""
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(setup.config).eval()
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, setup.config.vocab_size, (setup.batch, setup.seq), generator=generator)
    dense_folder = scratch / "dense"
    with library_bars_off():
        base.save_pretrained(dense_folder)
    dense_mib, dense_rss = file_mib(dense_folder), peak_rss_mib(dense_folder, setup.batch, setup.seq)
    dense_flops = flops_per_token(setup.config, setup.seq)
    rows = []
    for case in cases(setup.config):
        dense = copy.deepcopy(base)
        mask = random_unit_mask(dense, case)
        with torch.no_grad():
            for name, m in mask.items():
                dense.get_parameter(name).mul_(m)
        shrunk = shrink_model(dense, mask)
        result = compare(dense, shrunk, ids, repeats)
        limit = dense_flops / flops_per_token(shrunk.config, setup.seq)
        folder = write_shrunk(dense, tokenizer, mask, scratch / "shrunk")
        tokens = setup.batch * setup.seq
        rows.append(
            f"| {setup.name} | {case.label()} | {setup.batch} x {setup.seq} | {tokens / result['dense_s']:,.0f} "
            f"| {tokens / result['shrunk_s']:,.0f} | **{result['speedup']:.2f}x** | {limit:.2f}x "
            f"| {result['speedup'] / limit:.0%} | {dense_mib:.1f} -> {file_mib(folder):.1f} "
            f"| {dense_rss:.0f} -> {peak_rss_mib(folder, setup.batch, setup.seq):.0f} | {result['worst']:.1e} |"
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9, help="alternating dense/shrunk pairs per case")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared, busy machine two threads wait on each other's descheduling)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny settings that only check the script runs")
    parser.add_argument("--write", default=None, help="update this Markdown file's section")
    args = parser.parse_args()
    if args.write and args.quick:
        raise SystemExit("--quick numbers are meaningless; run without --quick to --write")
    repeats = 1 if args.quick else args.repeats
    torch.set_num_threads(args.threads)
    tokenizer = train_tokenizer(["the shrink benchmark needs a tokenizer to write complete folders"], 257)

    rows = [
        "| model | removed per layer | batch x seq | dense tok/s | shrunk tok/s | speedup | FLOP limit "
        "| speedup / limit | file MiB (dense -> shrunk) | peak RSS MiB (dense -> shrunk) | max logit diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as scratch:
        for setup in setups(args.quick):
            rows += measure(setup, repeats, tokenizer, Path(scratch))
    lines = [
        f"Random-weight models, fp32 forwards without grad on the CPU ({args.threads} torch thread(s)); medians of "
        f"{repeats} alternating dense/shrunk pairs per row (speedup: the median of the per-pair time ratios). "
        "Dense: the model with the mask's zeros, as a ticket loads; shrunk: `tickets.shrink.shrink_model` (the "
        "`gpt-tickets shrink` export), removing the same random units in every layer. GPT-2's heads cannot shrink "
        "(fixed head size), so only its MLP neurons are removed; the Llama-family model also loses whole KV groups "
        "(with their query heads). Target: speedup within 10% of the FLOP limit.",
        "",
        *rows,
        "",
        "FLOP limit = dense / shrunk matmul FLOPs per token: LM head, attention projections, attention scores over the "
        "average causal context (seq + 1) / 2, MLP (embedding lookups, norms and activations not counted). File: "
        "`model.safetensors` (the dense one with its zeros; the GPT-2 head is tied to the embedding, the Llama one "
        "is not). Peak RSS: the resident-set peak (VmHWM) of a fresh process loading the folder with plain "
        "`from_pretrained` and running one forward of the row's batch, minus its resident set after importing torch, "
        "transformers and the model's code; glibc's mmap threshold fixed at 64 KiB so that freed blocks leave the "
        "resident set (with the adaptive default the same run's peak varies by +-20 MiB).",
    ]
    publish("Shrink export: shrunk vs dense inference speed", lines, args.write)


if __name__ == "__main__":
    main()
