"""lm-evaluation-harness's rolling perplexity and ``gpt-tickets eval`` on the same text: both measured, and lm-eval's
numbers recomputed with gpt_tickets' own window code, so the stated relation between the two is checked.

``gpt-tickets eval`` joins the texts with "\\n\\n", tokenizes that stream once and scores it in windows of the
model's context L, ``sliding_windows(N, L, stride)``; at the default stride L a window's first token is context only.
It reports the token perplexity over the scored tokens.

lm-eval's ``loglikelihood_rolling`` (the task in configs/lm_eval/) scores each document on its own, as ``[prefix] +
tokens`` with the tokenizer's BOS id as prefix (its EOS id when there is no BOS). A window feeds L tokens and
predicts L, the first from the one token carried over from the window before: ``sliding_windows(n + 1, L + 1, L)``
over the prefixed document, except that a short last window reaches back to L inputs. Every document token is scored
once. The summed log-likelihood LL is divided by whitespace-split words (``len(re.split(r"\\s+", doc))``) or UTF-8
bytes: word_perplexity = exp(-LL / words), byte_perplexity = exp(-LL / bytes), bits_per_byte = -LL / (bytes ln 2).
Hence word_perplexity = token_perplexity ** (tokens / words), with lm-eval's own per-document token perplexity.

    python -m benchmarks.lm_eval_agreement TICKET TEXTS.jsonl [--lm-eval-python PY] [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from benchmarks.common import publish
from gpt_tickets.data.sources import load_files
from gpt_tickets.eval.models import evaluate_texts
from gpt_tickets.eval.perplexity import sliding_windows
from gpt_tickets.models.build import context_length

TASK = "gpt_tickets_perplexity"
TASK_DIR = Path(__file__).resolve().parents[1] / "configs" / "lm_eval"
TEXTS_NAME = "gpt_tickets_texts.jsonl"  # what the task reads, relative to the directory lm-eval runs in
METRICS = ("word_perplexity", "byte_perplexity", "bits_per_byte")
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1"}


def prefix_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token lm-eval's HF model puts before each document, so that its first token has a context."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def lm_eval_windows(n_doc_tokens: int, max_length: int) -> list[tuple[int, int, int]]:
    """lm-eval's rolling windows over ``[prefix] + document`` as (begin, end, n_target) in that stream.

    The model reads ``stream[begin:end - 1]`` and the last ``n_target`` tokens of ``stream[begin:end]`` are scored:
    our windows of L + 1 tokens at stride L, with a short last window reaching back to a full L inputs.
    """
    windows = sliding_windows(n_doc_tokens + 1, max_length + 1, max_length)
    _, end, n_target = windows[-1]
    windows[-1] = (max(0, end - max_length - 1), end, n_target)
    return windows


def windows_loglikelihood(model: nn.Module, stream: torch.Tensor, windows: list[tuple[int, int, int]]) -> float:
    """Summed log-probability of every window's targets, one plain forward per window, log-softmax in float64."""
    total = 0.0
    with torch.inference_mode():
        for begin, end, n_target in windows:
            logits = model(input_ids=stream[None, begin : end - 1]).logits[0, -n_target:]
            targets = stream[end - n_target : end, None]
            total += torch.log_softmax(logits.double(), dim=-1).gather(1, targets).sum().item()
    return total


@dataclass
class RollingScores:
    """lm-eval's sums over the documents, from which each of its metrics is one ratio."""

    loglikelihood: float
    tokens: int
    words: int
    bytes: int
    windows: int

    @property
    def token_perplexity(self) -> float:
        return math.exp(-self.loglikelihood / self.tokens)

    def metrics(self) -> dict[str, float]:
        return {
            "word_perplexity": math.exp(-self.loglikelihood / self.words),
            "byte_perplexity": math.exp(-self.loglikelihood / self.bytes),
            "bits_per_byte": -self.loglikelihood / self.bytes / math.log(2),
        }


def rolling_scores(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int
) -> RollingScores:
    """What lm-eval's task scores on ``texts``, recomputed here: each document alone, prefixed, in its windows."""
    model.eval()
    loglikelihood, tokens, n_windows = 0.0, 0, 0
    for text in texts:
        ids = tokenizer(text)["input_ids"]  # lm-eval's tok_encode: the tokenizer's own special-token default
        if ids:  # lm-eval gives an empty document no window and a log-likelihood of 0
            windows = lm_eval_windows(len(ids), max_length)
            loglikelihood += windows_loglikelihood(model, torch.tensor([prefix_token_id(tokenizer), *ids]), windows)
            tokens, n_windows = tokens + len(ids), n_windows + len(windows)
    words = sum(len(re.split(r"\s+", text)) for text in texts)
    n_bytes = sum(len(text.encode("utf-8")) for text in texts)
    return RollingScores(loglikelihood, tokens, words, n_bytes, n_windows)


def lm_eval_command(python: str, ticket: Path, batch_size: int, limit: int | None, output: Path) -> list[str]:
    """The README's lm-eval line for a ticket folder, with the shipped task."""
    limit_args = ["--limit", str(limit)] if limit is not None else []
    return [
        python, "-m", "lm_eval", "run", "--model", "hf", "--model_args", f"pretrained={ticket}",
        "--include_path", str(TASK_DIR), "--tasks", TASK, "--device", "cpu", "--batch_size", str(batch_size),
        "--output_path", str(output), *limit_args,
    ]


def run_lm_eval(
    python: str, ticket: str | Path, texts_path: str | Path, batch_size: int = 8, limit: int | None = None
) -> dict[str, Any]:
    """lm-eval's output JSON for the shipped task on ``texts_path``, run offline in a scratch directory."""
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        shutil.copyfile(texts_path, work / TEXTS_NAME)
        env = {**os.environ, **OFFLINE, "HF_DATASETS_CACHE": str(work / "datasets_cache")}
        command = lm_eval_command(python, Path(ticket).resolve(), batch_size, limit, work / "out")
        done = subprocess.run(command, cwd=work, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"lm-eval failed (exit {done.returncode}): {done.stderr[-3000:]}")
        (results,) = (work / "out").rglob("results_*.json")
        return json.loads(results.read_text())


def reported_metrics(output: dict[str, Any]) -> dict[str, float]:
    """The three metrics of the task from lm-eval's output JSON."""
    return {name: output["results"][TASK][f"{name},none"] for name in METRICS}


def _row(name: str, tokens: int | None, token_ppl: float | None, metrics: dict[str, float] | None) -> str:
    cells = [f"{tokens:,}" if tokens else "-", f"{token_ppl:.3f}" if token_ppl else "-"]
    cells += [f"{metrics[m]:.4f}" for m in METRICS] if metrics else ["-"] * len(METRICS)
    return f"| {name} | " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ticket", help="an exported ticket folder (or any local causal LM folder)")
    parser.add_argument("texts", help='a JSON-lines file of {"text": ...} documents')
    parser.add_argument("--lm-eval-python", default=None, help="a python with lm-eval installed: run it too")
    parser.add_argument("--write", default=None, help="rewrite this benchmark's section of this Markdown file")
    args = parser.parse_args()

    texts = load_files([args.texts])
    tokenizer = AutoTokenizer.from_pretrained(args.ticket)
    model = AutoModelForCausalLM.from_pretrained(args.ticket, dtype=torch.float32)
    max_length = context_length(model.config)
    ours = [(stride, evaluate_texts(args.ticket, texts, stride=stride)) for stride in (max_length, max_length // 2)]
    mine = rolling_scores(model, tokenizer, texts, max_length)
    joined = rolling_scores(model, tokenizer, ["\n\n".join(texts)], max_length)  # lm-eval's windows, our stream
    lines = [
        f"{len(texts)} documents of `{args.texts}`, {mine.words:,} words, {mine.bytes:,} bytes; model "
        f"`{args.ticket}`, context L = {max_length}. lm-eval: {mine.windows} windows, every document token scored.",
        "",
        "| scoring | scored tokens | token perplexity | " + " | ".join(METRICS) + " |",
        "|---|---|---|---|---|---|",
        *(_row(f"gpt-tickets eval, stride {s}", r.scored_tokens, r.perplexity, None) for s, r in ours),
        _row("lm-eval's windows over the joined stream", joined.tokens, joined.token_perplexity, None),
        _row("lm-eval's windows per document, recomputed here", mine.tokens, mine.token_perplexity, mine.metrics()),
    ]
    if args.lm_eval_python:
        reported = reported_metrics(run_lm_eval(args.lm_eval_python, args.ticket, args.texts))
        lines.append(_row("lm-eval as reported", None, None, reported))
        worst = max(abs(reported[m] / mine.metrics()[m] - 1) for m in METRICS)
        lines += ["", f"Largest relative difference, recomputed vs reported: {worst:.1e}."]
    publish("lm-evaluation-harness and gpt-tickets eval on the same text", lines, args.write)


if __name__ == "__main__":
    main()
