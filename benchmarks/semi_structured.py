"""2:4 semi-structured sparse vs dense matmul on a GPU, at GPT-2 layer shapes: what an N:M ticket could gain.

Sparse tensor cores (Ampere and later) multiply a weight that keeps 2 of every 4 consecutive input entries at up to
twice the dense rate; torch exposes them as ``torch.sparse.to_sparse_semi_structured`` (cuSPARSELt, or CUTLASS).
Each row: ``F.linear(x, W)`` with W dense vs the same 2:4-pruned W converted, in half precision, median of CUDA
event timings, and the largest difference of the two outputs (the same arithmetic up to summation order).

    python -m benchmarks.semi_structured [--write BENCHMARKS.md]

On a machine without a CUDA GPU (or a torch without semi-structured support) it says so and measures nothing.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

from .common import publish

# (what, out features, in features): GPT-2 small's and GPT-2 XL's MLP and attention projections (nn.Linear layout).
SHAPES = [
    ("GPT-2 small c_fc", 3072, 768),
    ("GPT-2 small mlp.c_proj", 768, 3072),
    ("GPT-2 small c_attn", 2304, 768),
    ("GPT-2 XL c_fc", 6400, 1600),
    ("GPT-2 XL mlp.c_proj", 1600, 6400),
]
TOKENS = (2048, 65536)


def two_four(weight: torch.Tensor) -> torch.Tensor:
    """Keep the 2 largest |w| of every 4 consecutive entries along the input dimension."""
    groups = weight.reshape(weight.shape[0], -1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.abs().topk(2, dim=-1).indices, True)
    return (groups * keep).reshape(weight.shape)


def median_ms(fn, repeats: int = 50) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def measure(dtype: torch.dtype, cutlass: bool) -> list[str]:
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    SparseSemiStructuredTensor._FORCE_CUTLASS = cutlass
    rows = []
    for what, out_features, in_features in SHAPES:
        weight = two_four(torch.randn(out_features, in_features, device="cuda", dtype=dtype))
        sparse = to_sparse_semi_structured(weight)
        for tokens in TOKENS:
            x = torch.randn(tokens, in_features, device="cuda", dtype=dtype)
            xt = x.t().contiguous()
            dense_ms = median_ms(lambda: F.linear(x, weight))  # noqa: B023
            sparse_ms = median_ms(lambda: F.linear(x, sparse))  # noqa: B023
            mm_ms = median_ms(lambda: torch.mm(sparse, xt))  # noqa: B023  (the sparse operand first: no transpose)
            error = (F.linear(x, weight) - F.linear(x, sparse)).abs().max().item()
            scale = F.linear(x, weight).abs().max().item()
            rows.append(
                f"| {what} | {'CUTLASS' if cutlass else 'cuSPARSELt'} | {str(dtype).removeprefix('torch.')} | {tokens} "
                f"| {dense_ms:.4f} | {sparse_ms:.4f} | **{dense_ms / sparse_ms:.2f}x** | {mm_ms:.4f} | "
                f"{dense_ms / mm_ms:.2f}x | {error / scale:.1e} |"
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", default=None, help="rewrite this benchmark's section of a Markdown file")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU: 2:4 sparse tensor cores cannot be measured here")
        return
    lines = [
        "`python -m benchmarks.semi_structured`: `F.linear(x, W)` with W dense vs the same 2:4-pruned W as "
        "`torch.sparse.to_sparse_semi_structured` (random weights and inputs, median of 50 CUDA-event timings after "
        "5 warm-ups). Speedup = dense ms / sparse ms; error = max |dense - sparse| / max |dense|.",
        "",
        "| weight | kernel | dtype | tokens | dense ms | 2:4 `F.linear` ms | speedup | 2:4 `mm(W, x^T)` ms | speedup | "
        "error |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    torch.manual_seed(0)
    for cutlass in (False, True):
        try:
            lines += measure(torch.bfloat16, cutlass)
        except RuntimeError as err:  # CUTLASS's 2:4 kernels are built for compute capability 8.x only
            lines.append(f"| all | {'CUTLASS' if cutlass else 'cuSPARSELt'} | not run: {str(err).splitlines()[0]} |")
    publish("2:4 semi-structured sparse matmul (GPU)", lines, args.write)


if __name__ == "__main__":
    main()
