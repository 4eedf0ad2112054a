"""Multi-process runs and crash-safe resume, through the real launchers, in subprocesses."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gpt_tickets.sparsity.masks import Mask

from .conftest import MICRO, flip_a_bit

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "find_ticket.py"
RESUMABLE = [*MICRO, "--train.checkpoint_every", "2"]


def find(output_dir: Path, *extra: str, launcher: list[str] | None = None, env: dict | None = None):
    command = [*(launcher or [sys.executable]), str(SCRIPT), *RESUMABLE, "--output_dir", str(output_dir), *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})


def outcome(run: Path) -> tuple[list[dict], dict[str, Mask]]:
    summary = json.loads((run / "results.json").read_text())
    assert summary["complete"]
    entries = [{k: v for k, v in e.items() if k != "wall_seconds"} for e in summary["rounds"] + summary["branches"]]
    masks = {d.name: Mask.load(d / "mask.safetensors") for d in sorted(run.glob("round_*"))}
    return entries, masks


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("reference") / "run"
    result = find(run)
    assert result.returncode == 0, result.stderr
    return run


def two_cpu_processes(port: int) -> list[str]:
    """The launcher line that really starts two CPU ranks over gloo (``--cpu --num_processes 2`` starts one)."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port),
    ]


def checkpoints(run: Path) -> list[Path]:
    folder = run / "checkpoints"
    return (
        sorted((p for p in folder.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)) if folder.exists() else []
    )


def start_and_kill_mid_round(run: Path, wanted_checkpoints: int) -> None:
    """Start a run and SIGKILL it inside round 1 once it has written ``wanted_checkpoints`` checkpoints."""
    command = [sys.executable, str(SCRIPT), *RESUMABLE, "--output_dir", str(run)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        # Round 1's mask is written when it starts, after round 0's checkpoints are cleared: the ones counted are
        # round 1's (counting right after round 0's result.json could catch round 0's, about to be cleared).
        if (run / "round_1" / "mask.safetensors").exists() and len(checkpoints(run)) >= wanted_checkpoints:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed mid-round"
    assert not (run / "round_2" / "result.json").exists()


def assert_same(run: Path, reference: Path) -> None:
    entries, masks = outcome(run)
    ref_entries, ref_masks = outcome(reference)
    assert entries == ref_entries
    assert masks.keys() == ref_masks.keys()
    for name in masks:
        assert all(torch.equal(masks[name][w], ref_masks[name][w]) for w in masks[name])


def test_kill_9_mid_round_then_rerun_ends_identical(tmp_path, reference):
    run = tmp_path / "run"
    start_and_kill_mid_round(run, wanted_checkpoints=1)
    resumed = find(run)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming round" in resumed.stdout
    assert "round 0: sparsity" not in resumed.stdout  # finished rounds are never recomputed
    assert_same(run, reference)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage", [truncate, flip_a_bit], ids=["truncated", "one-bit"])
def test_corrupted_checkpoint_falls_back_to_the_previous_one(tmp_path, reference, damage):
    run = tmp_path / "run"
    start_and_kill_mid_round(run, wanted_checkpoints=2)
    damage(checkpoints(run)[-1] / "model.safetensors")
    resumed = find(run)
    assert resumed.returncode == 0, resumed.stderr
    assert "is damaged" in resumed.stdout and "trying the previous one" in resumed.stdout
    assert "resuming round" in resumed.stdout
    assert_same(run, reference)


def test_two_processes_over_gloo_match_one_process(tmp_path, reference):
    launcher = two_cpu_processes(port=29533)
    result = find(tmp_path / "run", launcher=launcher, env={"ACCELERATE_USE_CPU": "true"})
    assert result.returncode == 0, result.stderr
    assert "2 per device x 2 processes x 1 accumulation" in result.stdout
    assert "1 thread per process (OMP_NUM_THREADS)" in result.stdout  # the launcher's choice, respected and logged
    summary = json.loads((tmp_path / "run" / "results.json").read_text())
    assert summary["num_processes"] == 2  # world size 2 was really reached
    entries, masks = outcome(tmp_path / "run")
    ref_entries, ref_masks = outcome(reference)
    for name in masks:  # same global batch, same data: the same masks (they could differ only at magnitude ties)
        assert all(torch.equal(masks[name][w], ref_masks[name][w]) for w in masks[name])
    for mine, theirs in zip(entries, ref_entries, strict=True):
        assert mine["mask_checksum"] == theirs["mask_checksum"]
        assert mine["val_perplexity"] == pytest.approx(theirs["val_perplexity"], rel=1e-6)  # measured: <= 2e-8


def test_world_size_that_does_not_divide_the_global_batch_is_refused(tmp_path):
    launcher = two_cpu_processes(port=29534)
    result = find(tmp_path / "run", "--train.batch_size", "5", launcher=launcher, env={"ACCELERATE_USE_CPU": "true"})
    assert result.returncode != 0
    assert "train.batch_size=5 is not a multiple of micro_batch_size=2 x 2 processes" in result.stderr
    assert "gpt_tickets/" not in result.stderr  # the launcher reports the failed ranks; ours print one line each
    assert not (tmp_path / "run").exists()


RANK_CHECK = """
import sys, torch
from accelerate import Accelerator
from gpt_tickets.lottery.context import check_ranks_agree
from gpt_tickets.sparsity.masks import Mask

acc = Accelerator()
mask = Mask({"w": torch.ones(4, dtype=torch.bool)})
if sys.argv[1] == "differ" and acc.process_index == 1:
    mask["w"][0] = False  # one process derived another mask
check_ranks_agree(acc, "round 1", mask)
acc.print("agreed")
acc.wait_for_everyone()
torch.distributed.destroy_process_group()  # gloo's threads must stop before the interpreter exits
"""


@pytest.mark.parametrize("case", ["agree", "differ"])
def test_processes_with_different_masks_stop_the_run(tmp_path, case):
    script = tmp_path / "check.py"
    script.write_text(RANK_CHECK)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*torchrun, str(script), case], capture_output=True, text=True, timeout=300, env=env)
    if case == "agree":
        assert result.returncode == 0 and "agreed" in result.stdout, result.stderr
    else:
        assert result.returncode != 0 and "agreed" not in result.stdout
        assert "round 1: the processes hold different masks (checksums" in result.stderr
