"""An exported ticket loads in lm-evaluation-harness as it is, and lm-eval's rolling perplexity is the one we recompute.

lm-eval lives in its own environment (``.ci/run`` builds it and names its python in ``GPT_TICKETS_LM_EVAL_PYTHON``).
There the shipped task (configs/lm_eval/) scores the micro ticket, and its word perplexity, byte perplexity and bits
per byte must equal ``benchmarks.lm_eval_agreement``'s recomputation with gpt_tickets' windows, which is what the
README's account of how lm-eval's numbers relate to ``gpt-tickets eval`` rests on.
"""

import json
import os
import subprocess
from pydoc_data.topics import topics

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from benchmarks.lm_eval_agreement import (
    METRICS,
    TASK,
    lm_eval_windows,
    reported_metrics,
    rolling_scores,
    run_lm_eval,
)
from gpt_tickets.models.build import context_length

LM_EVAL_PYTHON = os.environ.get("GPT_TICKETS_LM_EVAL_PYTHON")
needs_lm_eval = pytest.mark.skipif(
    LM_EVAL_PYTHON is None and os.environ.get("CI") != "true",
    reason="set GPT_TICKETS_LM_EVAL_PYTHON to a python with lm-eval installed (.ci/run does)",
)

# Several windows of the micro ticket's 32 tokens with a short last one, one window, whitespace runs and a trailing
# newline (lm-eval counts words by re.split), an empty document (no window, one word), and one cut by --limit.
DOCUMENTS = [topics["for"][:400], "x = 1", "  two   spaces\tand a tab\n", "", topics["while"][:200]]
LIMIT = 4

# lm-eval's own windows for (n document tokens, L): token i of the document is stream position i, the prefix is 0.
LAYOUT = """
import json, sys
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
found = []
for n, max_length in json.loads(sys.argv[1]):
    windows = get_rolling_token_windows(list(range(1, n + 1)), 0, max_length, 1)
    pairs = [make_disjoint_window(w) for w in windows]
    # the HF model feeds (context + continuation)[-(L + 1):][:-1] and scores the continuation
    found.append([[(c + t)[-(max_length + 1):][0], t[-1] + 1, len(t)] for c, t in pairs])
print(json.dumps(found))
"""
SIZES = [(1, 4), (3, 4), (4, 4), (5, 4), (8, 4), (9, 4), (10, 4), (11, 4), (5, 1), (31, 32), (33, 32), (100, 32)]


@pytest.mark.parametrize("n, max_length", SIZES)
def test_lm_eval_windows_score_each_document_token_once(n, max_length):
    windows = lm_eval_windows(n, max_length)
    targets = [i for _, end, n_target in windows for i in range(end - n_target, end)]
    assert targets == list(range(1, n + 1))  # every token after the prefix, once, in order
    assert all(1 <= end - 1 - begin <= max_length and begin >= 0 for begin, end, _ in windows)  # inputs fit


@needs_lm_eval
def test_lm_eval_windows_equal_lm_evals_own():
    assert LM_EVAL_PYTHON, "CI must build lm-eval's environment (.ci/run)"
    done = subprocess.run([LM_EVAL_PYTHON, "-c", LAYOUT, json.dumps(SIZES)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    theirs = json.loads(done.stdout.strip().splitlines()[-1])
    assert [[list(w) for w in lm_eval_windows(n, length)] for n, length in SIZES] == theirs


@needs_lm_eval
def test_lm_eval_scores_a_ticket_as_we_recompute_it(micro_run, tmp_path):
    assert LM_EVAL_PYTHON, "CI must build lm-eval's environment (.ci/run)"
    ticket = micro_run / "ticket"
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": doc}) + "\n" for doc in DOCUMENTS))

    output = run_lm_eval(LM_EVAL_PYTHON, ticket, texts, batch_size=4, limit=LIMIT)
    config = output["configs"][TASK]  # the shipped task, loaded by lm-eval from configs/lm_eval/
    assert (config["dataset_path"], config["output_type"]) == ("json", "loglikelihood_rolling")
    assert output["n-samples"][TASK]["effective"] == LIMIT

    tokenizer = AutoTokenizer.from_pretrained(ticket)
    model = AutoModelForCausalLM.from_pretrained(ticket, dtype=torch.float32)
    mine = rolling_scores(model, tokenizer, DOCUMENTS[:LIMIT], context_length(model.config))
    assert mine.windows >= LIMIT + 2  # the first document really spans several windows
    reported, recomputed = reported_metrics(output), mine.metrics()
    for name in METRICS:
        assert reported[name] == pytest.approx(recomputed[name], rel=1e-6), name
