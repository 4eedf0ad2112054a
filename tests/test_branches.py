"""Branches on a finished run: what random_reinit and random_prune start from, resume, bad input, the registry."""

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from gpt_tickets.lottery import RunDir, run_branch
from gpt_tickets.lottery.branches import BRANCHES, FinishedRound, get_branch
from gpt_tickets.lottery.results import BranchResult, RunResults
from gpt_tickets.models.build import random_init
from gpt_tickets.sparsity.masks import Mask
from gpt_tickets.train.trainer import Trainer

from .conftest import MICRO, table_rows


def finished_round(run: Path, r: int) -> FinishedRound:
    return FinishedRound(RunDir(run), r, AutoModelForCausalLM.from_pretrained(run / "ticket"))


def test_registry_holds_both_branches_and_names_their_folders():
    assert {"random_reinit", "random_prune"} <= set(BRANCHES)
    params = get_branch("random_prune").Params(round=3, seed=7)
    assert params.key() == "round_3-seed_7"
    assert RunDir("x").branch("random_prune", params.key()) == Path("x/branches/random_prune/round_3-seed_7")


@pytest.mark.parametrize("r", [1, 2])
def test_random_prune_keeps_each_matrix_sparsity_on_the_rewind_weights(micro_run, r):
    branch = get_branch("random_prune")
    source = finished_round(micro_run, r)
    weights, mask = branch.start(source, branch.Params(round=r, seed=1))
    ticket = source.mask()
    assert mask.keys() == ticket.keys()
    for name in ticket:  # exactly the same count per matrix, so the same sparsity per matrix and per layer
        assert int(mask[name].sum()) == int(ticket[name].sum())
    differing = sum(int((mask[n] != ticket[n]).sum()) for n in ticket)
    assert differing > 0.3 * ticket.numel()  # random at 50-75% sparsity: far from the ticket's mask
    rewind = load_file(str(micro_run / "rewind.safetensors"))
    assert weights.keys() == rewind.keys() and all(torch.equal(weights[n], rewind[n]) for n in rewind)
    again = branch.start(source, branch.Params(round=r, seed=1))[1]
    other = branch.start(source, branch.Params(round=r, seed=2))[1]
    assert all(torch.equal(again[n], mask[n]) for n in mask)  # a seed decides the mask
    assert any(not torch.equal(other[n], mask[n]) for n in mask)


def test_random_reinit_has_the_rounds_mask_on_fresh_weights(micro_run):
    branch = get_branch("random_reinit")
    source = finished_round(micro_run, 2)
    weights, mask = branch.start(source, branch.Params(round=2, seed=1))
    ticket = source.mask()
    assert all(torch.equal(mask[n], ticket[n]) for n in ticket) and mask.keys() == ticket.keys()
    init = load_file(str(micro_run / "init.safetensors"))
    assert weights.keys() == init.keys()
    for name in ticket:  # unlike the run's initialisation (seed 0) in every pruned matrix
        assert not torch.equal(weights[name], init[name])
    fresh = dict(random_init(source.model.config, seed=1).named_parameters())
    assert all(torch.equal(weights[n], fresh[n]) for n in weights)


def test_find_records_both_controls_with_their_masks(micro_run):
    results = RunResults.load(micro_run / "results.json")
    assert [(b.branch, b.round, b.params) for b in results.branches] == [
        ("random_reinit", 2, {"round": 2, "seed": 1}),
        ("random_prune", 2, {"round": 2, "seed": 1}),
    ]
    final = Mask.load(micro_run / "round_2" / "mask.safetensors")
    for b in results.branches:
        folder = RunDir(micro_run).branch(b.branch, "round_2-seed_1")
        assert BranchResult.load(folder / "result.json") == b
        saved = Mask.load(folder / "mask.safetensors")
        assert b.sparsity == results.rounds[-1].sparsity
        assert b.per_layer_sparsity == results.rounds[-1].per_layer_sparsity  # per matrix kept, so per layer too
        same = all(torch.equal(saved[n], final[n]) for n in final)
        assert same == (b.branch == "random_reinit")


def test_rerunning_a_finished_branch_trains_nothing(micro_run, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(micro_run, run)
    monkeypatch.setattr(Trainer, "__init__", lambda *a, **k: pytest.fail("a finished branch must not be retrained"))
    [result] = run_branch(run, "random_prune", round=2, seeds=[1])
    assert result == RunResults.load(run / "results.json").branches[1]


def test_a_new_branch_on_an_earlier_round_trains_and_is_recorded(micro_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(micro_run, run)
    [result] = run_branch(run, "random_prune", round=1, seeds=[5])
    folder = run / "branches" / "random_prune" / "round_1-seed_5"
    assert BranchResult.load(folder / "result.json") == result
    assert result.round == 1 and result.sparsity == 0.5 and result.train_steps == 8
    assert not (run / "checkpoints").exists()  # a finished branch leaves no checkpoint behind


def cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "gpt_tickets.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["random_prnue"], "unknown branch 'random_prnue'; did you mean random_prune? allowed: dense_long, oneshot_"),
        (["random_prune", "--round", "3"], "round 3 of the run in"),
        (["random_prune", "--seeds", "-1"], "seed -1 is not allowed; choose integers 0..9223372036854775807"),
        (["random_prune", "--round", "-2"], "round=-2 is not allowed"),
    ],
)
def test_cli_branch_bad_input_one_line_exit_2_nothing_written(micro_run, tmp_path, args, message):
    run = tmp_path / "run"
    shutil.copytree(micro_run, run)
    before = tree(run)
    result = cli("branch", str(run), *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert tree(run) == before


def test_cli_branch_on_a_folder_without_a_run(tmp_path):
    result = cli("branch", str(tmp_path), "random_prune")
    assert result.returncode == 2
    assert f"{str(tmp_path)!r} holds no run (no config.yaml)" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_cli_branch_on_an_unfinished_round_says_which_rounds_are_done(micro_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(micro_run, run)
    (run / "round_2" / "result.json").unlink()
    result = cli("branch", str(run), "random_reinit", "--round", "2", "--seeds", "9")
    assert result.returncode == 2
    assert "round 2 of the run in" in result.stderr and "finished rounds: 0, 1" in result.stderr
    assert not (run / "branches" / "random_reinit" / "round_2-seed_9").exists()


# ----------------------------------------------------------------------------------------------- kill -9


def checkpoints(run: Path) -> list[Path]:
    folder = run / "checkpoints"
    return [p for p in folder.iterdir() if p.name.isdigit()] if folder.exists() else []


def test_branch_killed_with_sigkill_then_rerun_ends_identical(tmp_path):
    """A micro run with checkpoints every 2 steps; its random_prune branch is killed mid-training and re-run."""
    from gpt_tickets.config import load_config
    from gpt_tickets.lottery import find_ticket

    reference = tmp_path / "reference"
    find_ticket(load_config(None, [*MICRO, "--train.checkpoint_every", "2", "--output_dir", str(reference)]))
    run = tmp_path / "run"
    shutil.copytree(reference, run, ignore=shutil.ignore_patterns("branches", "results.json", "ticket"))
    command = [sys.executable, "-m", "gpt_tickets.cli", "branch", str(run), "random_prune"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if checkpoints(run):
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the branch ended before it could be killed mid-training"
    folder = run / "branches" / "random_prune" / "round_2-seed_1"
    assert not (folder / "result.json").exists() and (folder / "mask.safetensors").exists()

    resumed = cli("branch", str(run), "random_prune")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming branch random_prune round_2-seed_1" in resumed.stdout
    mine = BranchResult.load(folder / "result.json").to_dict()
    theirs = BranchResult.load(reference / "branches" / "random_prune" / "round_2-seed_1" / "result.json").to_dict()
    assert mine.pop("wall_seconds") >= 0 and theirs.pop("wall_seconds") >= 0
    assert mine == theirs
    assert table_rows(resumed.stdout)[1][:3] == ["2", "random_prune (seed 1)", "75.0%"]
