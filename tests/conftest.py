"""Every test runs offline: without these a Hub lookup hangs ~25 s before failing."""

import os

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_var] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

# A run small enough for tests (seconds on 2 cores) that still goes through every phase of the real loop.
MICRO = [
    "--model.config",
    "{n_layer: 2, n_embd: 32, n_head: 2, n_positions: 32, resid_pdrop: 0.0, embd_pdrop: 0.0, attn_pdrop: 0.0}",
    "--data.block_size", "32",
    "--data.vocab_size", "300",
    "--data.max_validation_tokens", "1024",
    "--train.steps", "8",
    "--train.batch_size", "4",
    "--prune.rounds", "2",
    "--prune.fraction", "0.5",
    "--prune.rewind_step", "3",
    "--eval.batch_size", "8",
    "--control_seeds", "[1]",  # one seed per control keeps the tests fast; the default runs two
    "--controls", "[random_reinit, random_prune]",  # the default's one-shot baselines: tests/test_oneshot.py
]  # fmt: skip


@pytest.fixture
def micro(tmp_path):
    """Overrides for a micro run into a fresh directory."""
    return [*MICRO, "--output_dir", str(tmp_path / "run")]


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory):
    """One finished micro run exported in both weight formats, shared read-only by the ticket tests (copy to edit)."""
    from gpt_tickets.config import load_config
    from gpt_tickets.lottery import find_ticket

    root = tmp_path_factory.mktemp("micro_run") / "run"
    cfg = load_config(None, [*MICRO, "--output_dir", str(root), "--export.format", "both"])
    find_ticket(cfg)
    return root


def table_rows(text: str) -> list[list[str]]:
    """The cells of every Markdown table row in ``text`` (header included, separator lines left out), stripped."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("|") and not set(line) <= set("|-: "):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def flip_a_bit(path) -> None:
    """One bit of the data near the end of a file, as a bad sector or a faulty copy would: the file still loads."""
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))


def error_lines(stderr: str) -> list[str]:
    """The CLI's one-line errors in ``stderr``."""
    return [line for line in stderr.splitlines() if line.startswith("gpt-tickets: error")]
