"""dense_long: the dense model trained as long as the ticket's lineage, in segments evaluated at every round's step
count, resumable and never retrained."""

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from gpt_tickets.config import load_config
from gpt_tickets.lottery import RunDir, find_ticket, run_branch
from gpt_tickets.lottery.context import RunContext, accelerator_for
from gpt_tickets.lottery.imp import _round
from gpt_tickets.lottery.results import BranchResult, RoundResult, RunResults
from gpt_tickets.sparsity.masks import Mask
from gpt_tickets.train.trainer import Trainer

from .conftest import MICRO
from .test_branches import checkpoints, cli

STEPS = 8  # MICRO's train.steps


def segment(folder: Path, j: int) -> Path:
    return folder / f"segment_{j}"


def same_weights(a: Path, b: Path) -> bool:
    mine, theirs = load_file(str(a)), load_file(str(b))
    return mine.keys() == theirs.keys() and all(mine[n].equal(theirs[n]) for n in mine)


def without_wall_time(result: BranchResult) -> dict:
    data = result.to_dict()
    assert data.pop("wall_seconds") >= 0
    return data


@pytest.fixture(scope="module")
def long_run(micro_run, tmp_path_factory):
    """A copy of the micro run (2 rounds) with dense_long from round 2, seed 1: the folder and the result."""
    run = tmp_path_factory.mktemp("dense_long") / "run"
    shutil.copytree(micro_run, run)
    (result,) = run_branch(run, "dense_long", round=2, seeds=[1])
    return run, result


def test_trains_the_whole_lineages_steps_in_segments_under_the_full_mask(long_run):
    run, result = long_run
    folder = RunDir(run).branch("dense_long", "round_2-seed_1")
    assert BranchResult.load(RunDir.done(folder)) == result
    segments = [BranchResult.load(RunDir.done(segment(folder, j))) for j in range(3)]
    assert [s.train_steps for s in segments] == [STEPS] * 3
    assert result.train_steps == sum(s.train_steps for s in segments) == 3 * STEPS
    assert result.evaluations == [
        {"steps": (j + 1) * STEPS, "val_perplexity": s.val_perplexity, "val_nll": s.val_nll}
        for j, s in enumerate(segments)
    ]
    assert result.val_perplexity == segments[-1].val_perplexity and result.val_nll == segments[-1].val_nll
    assert len({s.val_perplexity for s in segments}) == 3  # each segment trained on from where the last one ended
    full = Mask.load(run / "round_0" / "mask.safetensors")
    for j, s in enumerate(segments):
        mask = Mask.load(segment(folder, j) / "mask.safetensors")
        assert mask.keys() == full.keys() and all(bool(m.all()) for m in mask.values())
        assert s.sparsity == 0.0 and s.branch == "dense_long" and s.params == {"round": 2, "seed": 1}
    kept = [(segment(folder, j) / "trained.safetensors").exists() for j in range(3)]
    assert kept == [False, False, True]  # each segment's weights are kept until the next one is done
    assert not (run / "checkpoints").exists()


def test_with_the_runs_seed_segment_0_is_round_0_bitwise(tmp_path):
    cfg = load_config(None, [*MICRO, "--output_dir", str(tmp_path / "run")])
    with RunContext(cfg, accelerator_for(cfg)) as ctx:
        round_0 = _round(ctx, 0)  # only round 0: its trained weights are still there
    (result,) = run_branch(cfg.output_dir, "dense_long", round=0, seeds=[cfg.seed])
    folder = RunDir(cfg.output_dir).branch("dense_long", f"round_0-seed_{cfg.seed}")
    first = BranchResult.load(RunDir.done(segment(folder, 0)))
    assert first.val_perplexity == round_0.val_perplexity and first.val_nll == round_0.val_nll
    assert first.final_train_loss == round_0.final_train_loss and first.mask_checksum == round_0.mask_checksum
    assert result.evaluations == [{"steps": STEPS, "val_perplexity": first.val_perplexity, "val_nll": first.val_nll}]
    round_0_weights = RunDir(cfg.output_dir).round(0) / "trained.safetensors"
    assert same_weights(segment(folder, 0) / "trained.safetensors", round_0_weights)


def test_another_seed_trains_on_another_data_order(long_run):
    run, result = long_run
    round_0 = RoundResult.load(RunDir.done(RunDir(run).round(0)))
    assert result.evaluations[0]["val_perplexity"] != round_0.val_perplexity  # same start, same steps, other batches


def test_evaluations_equal_those_of_a_shorter_dense_long_in_another_directory(
    long_run, micro_run, tmp_path, monkeypatch
):
    shutil.copytree(micro_run, tmp_path / "run")
    train, streams = Trainer.train, []

    def recording(self, *args, **kwargs):
        streams.append((kwargs["data_seed"], kwargs["data_offset"], kwargs["start_step"]))
        return train(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train", recording)
    (shorter,) = run_branch(tmp_path / "run", "dense_long", round=1, seeds=[1])
    assert streams == [(1, 0, 0), (1, STEPS, 0)]  # segment 1 goes on with the data after segment 0's
    assert shorter.train_steps == 2 * STEPS
    assert shorter.evaluations == long_run[1].evaluations[:2]


def test_a_finished_branch_is_read_back_and_finished_segments_are_not_retrained(long_run, tmp_path, monkeypatch):
    monkeypatch.setattr(Trainer, "train", lambda *a, **k: pytest.fail("nothing here may be trained again"))
    run, result = long_run
    assert run_branch(run, "dense_long", round=2, seeds=[1]) == [result]
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    RunDir.done(RunDir(copy).branch("dense_long", "round_2-seed_1")).unlink()  # killed after its last segment
    assert run_branch(copy, "dense_long", round=2, seeds=[1]) == [result]


def test_trackers_see_each_segment_after_the_one_before_and_the_next_branch_after_all(micro_run, tmp_path, monkeypatch):
    shutil.copytree(micro_run, tmp_path / "run")
    train, offsets = RunContext.train, []

    def recording(self, phase):
        offsets.append((phase.key, phase.log_offset))
        return train(self, phase)

    monkeypatch.setattr(RunContext, "train", recording)
    run_branch(tmp_path / "run", "dense_long", round=1, seeds=[1, 2])
    after_rounds = 3 * STEPS
    assert offsets == [
        (f"branch dense_long round_1-seed_{seed} segment {j}", after_rounds + (2 * i + j) * STEPS)
        for i, seed in enumerate([1, 2])
        for j in range(2)
    ]


# ----------------------------------------------------------------------------------------------- kill -9


def test_killed_mid_segment_then_rerun_ends_identical(tmp_path):
    """dense_long as a control of find (checkpoints every 2 steps); then again from the CLI, killed mid-segment."""
    reference = tmp_path / "reference"
    args = [*MICRO, "--train.checkpoint_every", "2", "--controls", "[dense_long]", "--output_dir", str(reference)]
    results = find_ticket(load_config(None, args))
    assert [(b.branch, b.train_steps, len(b.evaluations)) for b in results.branches] == [("dense_long", 24, 3)]
    assert RunResults.load(reference / "results.json").branches == results.branches

    run = tmp_path / "run"
    shutil.copytree(reference, run, ignore=shutil.ignore_patterns("branches", "results.json", "ticket"))
    folder = RunDir(run).branch("dense_long", "round_2-seed_1")
    command = [sys.executable, "-m", "gpt_tickets.cli", "branch", str(run), "dense_long", "--seeds", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if (segment(folder, 1) / "mask.safetensors").exists() and checkpoints(run):  # inside segment 1 or 2
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the branch ended before it could be killed mid-segment"
    assert not RunDir.done(folder).exists() and RunDir.done(segment(folder, 0)).exists()
    first_segment = RunDir.done(segment(folder, 0)).read_bytes()

    resumed = cli("branch", str(run), "dense_long", "--seeds", "1")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming branch dense_long round_2-seed_1 segment" in resumed.stdout
    assert RunDir.done(segment(folder, 0)).read_bytes() == first_segment  # a finished segment is not retrained
    theirs = RunDir(reference).branch("dense_long", "round_2-seed_1")
    for j in range(3):
        mine_j, theirs_j = (BranchResult.load(RunDir.done(segment(f, j))) for f in (folder, theirs))
        assert without_wall_time(mine_j) == without_wall_time(theirs_j)
    mine, reference_result = BranchResult.load(RunDir.done(folder)), BranchResult.load(RunDir.done(theirs))
    assert without_wall_time(mine) == without_wall_time(reference_result)
    assert same_weights(segment(folder, 2) / "trained.safetensors", segment(theirs, 2) / "trained.safetensors")
