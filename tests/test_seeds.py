"""Several seeds per branch, controls with parameters, rewind points and the rewind_step branch, on micro runs."""

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from gpt_tickets.cli import main
from gpt_tickets.config import ConfigError, load_config
from gpt_tickets.io import load_tensors
from gpt_tickets.lottery import RunDir, find_ticket, run_branch
from gpt_tickets.lottery.branches import FinishedRound, get_branch
from gpt_tickets.lottery.results import BranchResult, RunResults
from gpt_tickets.sparsity.masks import Mask, mask_checksum
from gpt_tickets.train.checkpoints import Checkpoints

from .conftest import MICRO, error_lines

# MICRO rewinds to step 3 of 8; round 0 also keeps steps 0, 3 (again) and 6.
SEEDED = [
    *MICRO,
    "--prune.rewind_points", "[0, 3, 6]",
    "--control_seeds", "[1, 2]",
    "--controls", "[random_reinit, random_prune, {rewind_step: {rewind: 6}}]",
]  # fmt: skip


@pytest.fixture(scope="module")
def seeded_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("seeded") / "run"
    find_ticket(load_config(None, [*SEEDED, "--output_dir", str(root)]))
    return root


def branch_folder(run: Path, name: str, key: str) -> Path:
    return RunDir(run).branch(name, key)


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_find_runs_every_control_at_every_seed_in_order(seeded_run):
    branches = RunResults.load(seeded_run / "results.json").branches
    assert [(b.branch, b.params) for b in branches] == [
        ("random_reinit", {"round": 2, "seed": 1}),
        ("random_reinit", {"round": 2, "seed": 2}),
        ("random_prune", {"round": 2, "seed": 1}),
        ("random_prune", {"round": 2, "seed": 2}),
        ("rewind_step", {"round": 2, "seed": 1, "rewind": 6}),
        ("rewind_step", {"round": 2, "seed": 2, "rewind": 6}),
    ]
    for b in branches:  # each in the folder its parameters name, e.g. round_2-seed_1-rewind_6
        key = "-".join(f"{k}_{v}" for k, v in b.params.items())
        assert BranchResult.load(branch_folder(seeded_run, b.branch, key) / "result.json") == b


def test_run_branch_returns_one_result_per_seed_in_order_and_reads_finished_ones_back(seeded_run):
    recorded = RunResults.load(seeded_run / "results.json").branches
    assert run_branch(seeded_run, "random_prune", seeds=[2, 1]) == [recorded[3], recorded[2]]
    assert run_branch(seeded_run, "random_reinit") == recorded[:2]  # default: the run's seed + 1 and + 2


def test_random_prune_seeds_keep_each_matrix_count_with_different_masks(seeded_run):
    ticket = RunDir(seeded_run).round_mask(2)
    folders = [branch_folder(seeded_run, "random_prune", f"round_2-seed_{s}") for s in (1, 2)]
    masks = [Mask.load(folder / "mask.safetensors") for folder in folders]
    for mask in masks:
        assert mask.keys() == ticket.keys()
        assert all(int(mask[n].sum()) == int(ticket[n].sum()) for n in ticket)
    assert all(not torch.equal(masks[0][n], masks[1][n]) for n in ticket)  # each matrix drawn anew per seed


def test_random_reinit_seeds_start_from_different_weights_under_the_same_mask(seeded_run):
    branch = get_branch("random_reinit")
    source = FinishedRound(RunDir(seeded_run), 2, AutoModelForCausalLM.from_pretrained(seeded_run / "ticket"))
    (weights_1, mask_1), (weights_2, mask_2) = (branch.start(source, branch.Params(round=2, seed=s)) for s in (1, 2))
    ticket = source.mask()
    assert all(torch.equal(mask_1[n], ticket[n]) and torch.equal(mask_2[n], ticket[n]) for n in ticket)
    assert all(not torch.equal(weights_1[n], weights_2[n]) for n in ticket)
    reinit = RunResults.load(seeded_run / "results.json").branches[:2]
    assert reinit[0].mask_checksum == reinit[1].mask_checksum == mask_checksum(ticket)
    assert reinit[0].val_perplexity != reinit[1].val_perplexity


def test_rewind_points_hold_the_weights_of_their_steps(seeded_run):
    run = RunDir(seeded_run)
    saved = {k: load_tensors(run.rewind_point(k)) for k in (0, 3, 6)}  # each checked against its digest
    init, rewind = load_tensors(run.init), load_tensors(run.rewind)
    assert all(torch.equal(saved[0][n], init[n]) for n in init)  # step 0: the initial weights
    assert all(torch.equal(saved[3][n], rewind[n]) for n in rewind)  # step 3: the run's rewind step
    assert all(not torch.equal(saved[6][n], rewind[n]) for n in RunDir(seeded_run).round_mask(0))
    cfg = run.stored_config()
    assert run.saved_steps(cfg) == {0: run.init, 3: run.rewind, 6: run.rewind_point(6)}


def test_rewind_step_at_the_run_rewind_step_and_seed_reproduces_the_round_exactly(seeded_run, capsys):
    argv = ["branch", str(seeded_run), "rewind_step", "--round", "2", "--seeds", "0", "--rewind", "3"]
    assert main(argv) == 0
    assert "rewind_step (seed 0, rewind 3)" in capsys.readouterr().out
    result = BranchResult.load(branch_folder(seeded_run, "rewind_step", "round_2-seed_0-rewind_3") / "result.json")
    round_2 = RunResults.load(seeded_run / "results.json").rounds[2]
    assert result.val_perplexity == round_2.val_perplexity and result.final_train_loss == round_2.final_train_loss
    assert result.mask_checksum == round_2.mask_checksum

    [later] = run_branch(seeded_run, "rewind_step", round=2, seeds=[0], rewind=6)  # a rewind point: other weights
    assert later.mask_checksum == round_2.mask_checksum
    assert abs(later.val_perplexity - round_2.val_perplexity) > 1e-3 * round_2.val_perplexity


@pytest.mark.parametrize(
    "args, message",
    [
        (["random_prune", "--seeds", "1,1"], "--seeds=[1, 1] lists seed 1 twice; give distinct seeds"),
        (["random_prune", "--seeds", "-1"], "--seeds=[-1]: seed -1 is not allowed; choose integers 0..922337203685477"),
        (["random_prune", "--seeds", "9223372036854775808"], "seed 9223372036854775808 is not allowed"),
        (["random_prune", "--seeds", "a"], "--seeds='a' is not a comma-separated list of integers"),
        (["random_prune", "--seeds", ""], "--seeds='' is not a comma-separated list of integers"),
        (["random_prune", "--seeds", "1,,2"], "--seeds='1,,2' is not a comma-separated list of integers"),
        (["rewind_step", "--rewind", "5"], "saved no weights at step 5; saved steps: 0, 3, 6"),
        (["rewind_step"], "branch rewind_step needs a value for its parameter rewind"),
        (["rewind_step", "--rewnd", "3"], "for branch rewind_step: --rewnd 3; did you mean --rewind?"),
        (["rewind_step", "--rewind", "three"], "rewind='three' must be an integer"),
        (["rewind_step", "--rewind", "3", "--seeds", "4294967296"], "seed=4294967296 is not allowed for branch rewind"),
        (["random_prune", "--rewind", "3"], "for branch random_prune: --rewind 3; its own parameters: none beyond"),
    ],
)
def test_cli_branch_bad_input_is_one_line_exit_2_nothing_written(seeded_run, args, message, capsys):
    before = tree(seeded_run)
    assert main(["branch", str(seeded_run), *args]) == 2
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and message in errors[0], errors
    assert tree(seeded_run) == before


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--control_seeds", "[1, 1]"], "control_seeds=[1, 1] lists seed 1 twice"),
        (["--control_seeds", "[-1]"], "control_seeds=[-1]: seed -1 is not allowed"),
        (["--control_seeds", "[]"], "control_seeds=[] lists no seed"),
        (["--control_seeds", "[true]"], "control_seeds[]=True must be of type int"),
        (["--controls", "[{rewind_step: 3}]"], "controls entry {'rewind_step': 3} is not allowed"),
        (["--controls", "[{random_prune: {}, random_reinit: {}}]"], "is not allowed; write a branch name or a one-key"),
        (["--controls", "[random_prune, {random_prune: {}}]"], "lists a branch twice with the same parameters"),
        (["--prune.rewind_points", "[3, 3]"], "prune.rewind_points=[3, 3] lists a step twice"),
        (["--prune.rewind_points", "[9]"], "prune.rewind_points=[9]: step 9 is beyond train.steps=8"),
        (["--prune.rewind_points", "[-1]"], "prune.rewind_points=[-1]: step -1 must be >= 0"),
    ],
)
def test_bad_seeds_controls_and_rewind_points_fail_when_the_config_loads(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [*MICRO, *overrides])
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "controls, message",
    [
        ("[{rewind_step: {rewnd: 3}}]", "branch rewind_step has no parameter 'rewnd'; did you mean rewind?"),
        ("[{rewind_step: {rewind: 5}}]", "saved no weights at step 5; saved steps: 0, 3"),
        ("[{rewind_step: {}}]", "branch rewind_step needs a value for its parameter rewind"),
        ("[{random_prune: {seed: 3}}]", "branch random_prune has no parameter 'seed'"),
        ("[{rewind_step: {rewind: 3.5}}]", "rewind=3.5 must be an integer"),
    ],
)
def test_find_refuses_bad_control_parameters_before_writing(micro, tmp_path, controls, message, capsys):
    assert main(["find", *micro, "--controls", controls]) == 2
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and message in errors[0], errors
    assert not (tmp_path / "run").exists()


def test_rewind_points_are_in_the_fingerprint_control_seeds_are_not():
    plain = load_config(None, MICRO).fingerprint()
    assert load_config(None, [*MICRO, "--control_seeds", "[4, 5]"]).fingerprint() == plain
    assert load_config(None, [*MICRO, "--prune.rewind_points", "[6]"]).fingerprint() != plain


class Killed(Exception):
    """Stands in for a kill right after a checkpoint is written."""


def test_rewind_points_survive_a_run_killed_in_round_0(seeded_run, tmp_path, monkeypatch):
    shorter = ["--prune.rounds", "1", "--controls", "[]"]  # round 0 trains the same whatever comes after it
    cfg = load_config(None, [*SEEDED, *shorter, "--train.checkpoint_every", "4", "--output_dir", str(tmp_path)])
    save = Checkpoints.save

    def save_then_die(self, key, step):
        save(self, key, step)
        raise Killed

    monkeypatch.setattr(Checkpoints, "save", save_then_die)
    with pytest.raises(Killed):
        find_ticket(cfg)  # killed after step 4's checkpoint: steps 0 and 3 saved, step 6 not yet
    assert sorted(p.name for p in RunDir(tmp_path).rewind_point(0).parent.iterdir()) == [
        "step_0.safetensors",
        "step_3.safetensors",
    ]
    monkeypatch.setattr(Checkpoints, "save", save)
    find_ticket(cfg)  # resumes round 0 from step 4
    for step in (0, 3, 6):
        mine = load_tensors(RunDir(tmp_path).rewind_point(step))
        theirs = load_tensors(RunDir(seeded_run).rewind_point(step))
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[n], theirs[n]) for n in theirs)
