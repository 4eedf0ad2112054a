"""An exported ticket loads in the clients people still run: plain transformers 4.x (tokenizer and model).

The old client lives in its own environment (``.ci/run`` builds it and names its python in
``GPT_TICKETS_OLD_CLIENT_PYTHON``); the ticket is scored there and here, and both must agree.
"""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
OLD_PYTHON = os.environ.get("GPT_TICKETS_OLD_CLIENT_PYTHON")
TEXT = "def f(x):\n    return x + 1  # the for statement iterates over a sequence"

CLIENT = """
import json, sys
import torch, transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, text = sys.argv[1], sys.argv[2]
tokenizer = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder).eval()
ids = tokenizer(text).input_ids
with torch.no_grad():
    logits = model(torch.tensor([ids[: model.config.n_positions]])).logits[0]
print(json.dumps({"version": transformers.__version__, "ids": ids, "decoded": tokenizer.decode(ids),
                  "eos": tokenizer.eos_token, "logits": logits.tolist()}))
"""


def pinned_old_version() -> str:
    """The transformers version ``.ci/run`` installs in the old client's environment."""
    return re.search(r'"transformers==([0-9.]+)"', (ROOT / ".ci/run").read_text()).group(1)


def test_readme_states_the_tested_old_version():
    assert f"transformers >= {pinned_old_version()}" in (ROOT / "README.md").read_text()


@pytest.mark.skipif(
    OLD_PYTHON is None and os.environ.get("CI") != "true",
    reason="set GPT_TICKETS_OLD_CLIENT_PYTHON to a python with the old transformers (.ci/run does)",
)
def test_ticket_loads_in_old_transformers(micro_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert OLD_PYTHON, "CI must build the old client's environment (.ci/run)"
    ticket = micro_run / "ticket"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([OLD_PYTHON, "-c", CLIENT, str(ticket), TEXT], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    old = json.loads(done.stdout.strip().splitlines()[-1])
    assert old["version"] == pinned_old_version()

    tokenizer = AutoTokenizer.from_pretrained(ticket)
    model = AutoModelForCausalLM.from_pretrained(ticket).eval()
    ids = tokenizer(TEXT).input_ids
    assert old["ids"] == ids and old["decoded"] == TEXT and old["eos"] == tokenizer.eos_token
    with torch.no_grad():
        logits = model(torch.tensor([ids[: model.config.n_positions]])).logits[0]
    torch.testing.assert_close(torch.tensor(old["logits"]), logits, rtol=0, atol=1e-5)
