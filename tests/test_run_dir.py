"""A run directory that notices its own damage: kills at every write, ownership and lock, damaged files, divergence."""

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from gpt_tickets.config import load_config
from gpt_tickets.errors import ConfigError, RunError
from gpt_tickets.lottery import RunDir, find_ticket
from gpt_tickets.lottery.results import RoundResult, RunResults

from .conftest import MICRO, error_lines, flip_a_bit

# Every kind of write a run makes: round and branch files, checkpoints inside phases, the ticket, results.
KILLED = [
    *MICRO,
    "--prune.rounds", "1",
    "--prune.rewind_points", "[2, 6]",  # one saved before round 0's checkpoint at step 4, one after
    "--controls", "[random_prune]",
    "--train.checkpoint_every", "4",
]  # fmt: skip


def outcome(run: pathlib.Path) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """What must not depend on where a run was killed: every phase's result and every saved mask and weight."""
    results = RunResults.load(run / "results.json")
    assert results.complete
    phases = [{k: v for k, v in p.to_dict().items() if k != "wall_seconds"} for p in results.phases]
    tensors = {}
    for path in [*run.glob("round_*/mask.safetensors"), *run.glob("branches/*/*/mask.safetensors")]:
        tensors |= {f"{path.parent.name}/{k}": v for k, v in load_file(str(path)).items()}
    for path in [run / "rewind.safetensors", *run.glob("rewind_points/*.safetensors")]:
        tensors |= {f"{path.stem}/{k}": v for k, v in load_file(str(path)).items()}
    for name in ("model.safetensors", "ticket_masks.safetensors"):
        tensors |= {f"ticket/{name}/{k}": v for k, v in load_file(str(run / "ticket" / name)).items()}
    return phases, tensors


def writes_then_die(cfg, kill_at: int | None) -> tuple[int, int]:
    """Run ``cfg`` in a forked child that dies (``os._exit``, like SIGKILL: nothing is cleaned up) at write event
    ``kill_at``: just before or just after a rename into place, or just after a deletion. Returns (exit code, events).
    """
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: count write events, die at the chosen one
        os.close(read)
        events = [0]

        def event() -> None:
            events[0] += 1
            if events[0] == kill_at:
                os._exit(9)

        replace, unlink, rmtree = os.replace, pathlib.Path.unlink, shutil.rmtree

        def counted_replace(src, dst, *args, **kwargs):
            event()
            replace(src, dst, *args, **kwargs)
            event()

        def counted_unlink(path, missing_ok=False):
            existed = path.exists()
            unlink(path, missing_ok=missing_ok)
            if existed:
                event()

        def counted_rmtree(path, *args, **kwargs):
            existed = os.path.exists(path)
            rmtree(path, *args, **kwargs)
            if existed:
                event()

        os.replace, pathlib.Path.unlink, shutil.rmtree = counted_replace, counted_unlink, counted_rmtree
        try:
            find_ticket(cfg)
            code = 0
        except BaseException:
            code = 3
        os.write(write, str(events[0]).encode())
        os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    events = os.read(read, 32).decode()
    os.close(read)
    return os.waitstatus_to_exitcode(status), int(events or 0)


@pytest.fixture
def one_thread():
    """Thread count changes float reduction order; the killed and resumed runs must match the reference bitwise."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_kill_at_every_write_boundary_resumes_to_the_identical_run(tmp_path, one_thread):
    reference = tmp_path / "reference"
    code, events = writes_then_die(load_config(None, [*KILLED, "--output_dir", str(reference)]), kill_at=None)
    assert code == 0 and events > 30
    expected_phases, expected_tensors = outcome(reference)
    for kill_at in range(1, events + 1):
        run = tmp_path / f"killed_{kill_at}"
        cfg = load_config(None, [*KILLED, "--output_dir", str(run)])
        assert writes_then_die(cfg, kill_at)[0] == 9
        find_ticket(cfg)  # the same command again, in a fresh Accelerator
        phases, tensors = outcome(run)
        assert phases == expected_phases, f"killed at write {kill_at}"
        assert tensors.keys() == expected_tensors.keys(), f"killed at write {kill_at}"
        assert all(torch.equal(tensors[k], expected_tensors[k]) for k in tensors), f"killed at write {kill_at}"
        leftovers = [p.name for p in run.rglob(".*") if p.name != ".lock"]
        assert leftovers == [], f"killed at write {kill_at}: temporary files left behind"
        shutil.rmtree(run)


# ------------------------------------------------------------------------------------------- damage on disk


def rewrite_number(path: pathlib.Path) -> None:
    path.write_text(path.read_text().replace('"train_steps": 8', '"train_steps": 9'))


def swap_masks(run: pathlib.Path) -> None:
    shutil.copy(run / "round_1" / "mask.safetensors", run / "round_2" / "mask.safetensors")


DAMAGE = {
    "final mask, a bit": (lambda run: flip_a_bit(run / "round_2" / "mask.safetensors"), "find", "is damaged"),
    "final mask, another round's": (swap_masks, "find", "is not the mask round 2 finished with"),
    "final trained weights": (lambda run: flip_a_bit(run / "round_2" / "trained.safetensors"), "find", "is damaged"),
    "final trained weights, truncated": (
        lambda run: (run / "round_2" / "trained.safetensors").write_bytes(b"\x00" * 40),
        "find",
        "is unreadable (truncated or damaged?)",
    ),
    "a round's result": (lambda run: rewrite_number(run / "round_1" / "result.json"), "find", "is damaged"),
    "config.yaml truncated": (
        lambda run: (run / "config.yaml").write_text((run / "config.yaml").read_text()[:300]),
        "find",
        "config.yaml is damaged",
    ),
    "rewind weights": (lambda run: flip_a_bit(run / "rewind.safetensors"), "branch", "rewind.safetensors is damaged"),
    "an earlier round's mask": (lambda run: flip_a_bit(run / "round_1" / "mask.safetensors"), "branch", "is damaged"),
}


@pytest.mark.parametrize("case", DAMAGE, ids=list(DAMAGE))
def test_damage_a_run_cannot_recompute_stops_it_in_one_line(micro_run, tmp_path, case, capsys):
    from gpt_tickets.cli import main

    damage, command, message = DAMAGE[case]
    run = tmp_path / "run"
    shutil.copytree(micro_run, run)
    damage(run)
    if command == "find":
        argv = ["find", *MICRO, "--output_dir", str(run), "--export.format", "both"]
    else:
        argv = ["branch", str(run), "random_prune", "--round", "1", "--seeds", "5"]
    assert main(argv) == 2
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and message in errors[0], errors
    assert not (run / "branches" / "random_prune" / "round_1-seed_5").exists()


def test_a_damaged_branch_result_is_trained_again_to_the_same_result(micro_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(micro_run, run)
    before = RunResults.load(run / "results.json").branches
    rewrite_number(run / "branches" / "random_prune" / "round_2-seed_1" / "result.json")
    after = find_ticket(load_config(None, [*MICRO, "--output_dir", str(run), "--export.format", "both"])).branches
    assert "is damaged" in capsys.readouterr().out
    assert [b.to_dict() | {"wall_seconds": 0} for b in after] == [b.to_dict() | {"wall_seconds": 0} for b in before]


def test_the_loaders_check_what_they_read(micro_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(micro_run, run)
    flip_a_bit(run / "round_1" / "result.json")
    with pytest.raises(RunError, match="result.json is (damaged|unreadable)"):
        RoundResult.load(run / "round_1" / "result.json")
    assert RunDir(run).stored_config().fingerprint() == load_config(None, MICRO).fingerprint()


# -------------------------------------------------------------------------------------- ownership and lock


def test_a_second_process_on_a_run_directory_is_refused(tmp_path):
    cfg = load_config(None, [*MICRO, "--output_dir", str(tmp_path / "run")])
    first = RunDir(cfg.output_dir)
    first.claim(cfg)
    try:
        with pytest.raises(ConfigError, match=rf"is in use by another gpt_tickets process \(pid {os.getpid()}\)"):
            RunDir(cfg.output_dir).claim(cfg)
    finally:
        first.unlock()
    second = RunDir(cfg.output_dir)
    second.claim(cfg)  # free again once the first let go
    second.unlock()


def test_a_killed_process_does_not_leave_its_directory_locked(tmp_path):
    run = tmp_path / "run"
    holder = (
        "import sys, time; from gpt_tickets.lottery import RunDir; from gpt_tickets.config import load_config; "
        f"cfg = load_config(None, ['--output_dir', {str(run)!r}]); RunDir(cfg.output_dir).claim(cfg); "
        "print('locked', flush=True); time.sleep(300)"
    )
    process = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    with pytest.raises(ConfigError, match=f"pid {process.pid}"):
        RunDir(run).lock()
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 10
    while True:  # the kernel drops a dead process's flock at once; allow for a slow reaper all the same
        try:
            RunDir(run).lock()
            break
        except ConfigError:
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_two_finds_into_one_directory_at_once_one_is_refused(tmp_path):
    long_run = ["--train.steps", "5000", "--prune.rounds", "1", "--controls", "[]"]  # still running when the 2nd starts
    run = ["--output_dir", str(tmp_path / "run")]
    command = [sys.executable, "-m", "gpt_tickets.cli", "find", *MICRO, *long_run, *run]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "run" / "config.yaml").exists():
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        second = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert first.poll() is None, "the first run ended before the second could meet its lock"
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2 and "is in use by another gpt_tickets process" in second.stderr
    assert f"(pid {first.pid})" in second.stderr and "Traceback" not in second.stderr


# ------------------------------------------------------------------------------------------------ divergence


def test_a_non_finite_loss_stops_the_round_in_one_line(tmp_path, capsys):
    from gpt_tickets.cli import main

    run = tmp_path / "run"
    assert main(["find", *MICRO, "--output_dir", str(run), "--train.lr", "1e30"]) == 2
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "round 0: the training loss became non-finite" in errors[0]
    assert not (run / "round_0" / "result.json").exists() and not (run / "round_0" / "trained.safetensors").exists()


# ------------------------------------------------------------------------------------------------- full disk


def test_a_full_disk_is_one_line_naming_the_file(tmp_path, monkeypatch, capsys):
    import errno

    from gpt_tickets import io as run_io
    from gpt_tickets.cli import main

    def no_space(tensors, filename, metadata=None):
        pathlib.Path(filename).write_bytes(b"\x00" * 10)  # part of it was written
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run_io, "save_file", no_space)
    run = tmp_path / "run"
    assert main(["find", *MICRO, "--output_dir", str(run)]) == 2
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "init.safetensors: no space left on the device" in errors[0], errors
    assert not [p for p in run.rglob("*") if ".tmp" in p.name]  # the partial file is not left behind


def test_a_checkpoint_that_cannot_be_written_is_one_line(tmp_path, monkeypatch, capsys):
    from accelerate import Accelerator

    from gpt_tickets.cli import main

    def failing_save_state(self, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(Accelerator, "save_state", failing_save_state)
    run = tmp_path / "run"
    assert main(["find", *MICRO, "--output_dir", str(run), "--train.checkpoint_every", "4"]) == 2
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "cannot write checkpoint" in errors[0] and "MiB free on its device" in errors[0]
    assert not (run / "checkpoints" / ".0.tmp").exists()


def test_a_config_of_another_version_is_refused_naming_both_versions(tmp_path):
    import yaml

    from gpt_tickets.tickets.export import package_version

    run = RunDir(tmp_path / "run")
    run.claim(load_config(None, [*MICRO, "--output_dir", str(run.root)]))
    run.unlock()
    stored = yaml.safe_load(run.config.read_text())
    assert stored["gpt_tickets_version"] == package_version() and run.stored_config().fingerprint()
    stored["fingerprint"] = "0123456789abcdef"  # what another version's keys would hash to
    run.config.write_text(yaml.safe_dump(stored, sort_keys=False))
    with pytest.raises(RunError, match="does not match its fingerprint"):  # this version wrote it: damage
        run.stored_config()
    del stored["gpt_tickets_version"]  # written by 0.2, which did not record its version
    run.config.write_text(yaml.safe_dump(stored, sort_keys=False))
    with pytest.raises(RunError, match=rf"written by gpt_tickets 0.2 or older, .* \({package_version()}\)"):
        run.stored_config()
