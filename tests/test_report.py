"""`gpt-tickets report`: every seed of replicate runs, and each group's mean and spread, checked by hand."""

import json
import math
import shutil
import statistics

import pytest

import gpt_tickets
from gpt_tickets.cli import main
from gpt_tickets.config import load_config
from gpt_tickets.lottery import RunDir, find_ticket
from gpt_tickets.lottery.combine import report
from gpt_tickets.lottery.results import BranchResult, RoundResult

from .conftest import MICRO, error_lines, flip_a_bit, table_rows


@pytest.fixture(scope="module")
def seed_1_run(tmp_path_factory):
    """A replicate of ``micro_run`` (seed 0) with seed 1 and no controls: only rounds."""
    root = tmp_path_factory.mktemp("seed_1_run") / "run"
    find_ticket(load_config(None, [*MICRO, "--seed", "1", "--controls", "[]", "--output_dir", str(root)]))
    return root


def perplexity(result_json) -> float:
    """Read by hand, not through the package."""
    return json.loads(result_json.read_text())["val_perplexity"]


def sections(text: str) -> dict[str, list[list[str]]]:
    """The table rows of each ``## `` section of a report, by its title."""
    return {part.splitlines()[0]: table_rows(part) for part in text.split("\n## ")[1:]}


def by_key(summary):
    return {(g.round, g.name): g for g in summary.groups}


def test_round_groups_are_the_mean_and_sample_std_of_each_runs_result(micro_run, seed_1_run, tmp_path):
    summary, path = report([micro_run, seed_1_run], out=tmp_path / "out")
    groups = by_key(summary)
    for r in range(3):
        a, b = (perplexity(run / f"round_{r}" / "result.json") for run in (micro_run, seed_1_run))
        assert a != b  # two seeds: a spread to measure
        group = groups[(r, "dense" if r == 0 else "imp")]
        assert group.n == 2 and group.perplexities == (a, b)
        assert group.mean == pytest.approx((a + b) / 2, rel=1e-12) and group.mean == statistics.mean([a, b])
        assert group.std == pytest.approx(abs(a - b) / math.sqrt(2), rel=1e-12)  # ddof = 1
        assert group.std == statistics.stdev([a, b]) and (group.min, group.max) == (min(a, b), max(a, b))
        assert group.row()[3] == f"{(a + b) / 2:.2f} ± {abs(a - b) / math.sqrt(2):.2f} (2)"
    assert path == tmp_path / "out" / "report.md"
    assert summary.runs == ((str(micro_run), 0), (str(seed_1_run), 1))


def write_branch(run, branch: str, params: dict, ppl: float) -> None:
    """A branch result written by hand (with its digest), as a finished branch would leave it."""
    base = RoundResult.load(RunDir.done(run / f"round_{params['round']}"))
    key = "-".join(f"{k}_{v}" for k, v in params.items())
    folder = run / "branches" / branch / key
    folder.mkdir(parents=True)
    BranchResult(**{**base.to_dict(), "val_perplexity": ppl}, branch=branch, params=params).save(folder / "result.json")


def test_branch_groups_gather_seeds_of_every_run_and_part_other_params(micro_run, seed_1_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(seed_1_run, run)
    mine = {2: 300.0, 3: 310.0, 10: 330.0}  # seed 10 sorts after 3 by number, not as text
    for seed, ppl in mine.items():
        write_branch(run, "random_prune", {"round": 2, "seed": seed}, ppl)
    write_branch(run, "random_prune", {"round": 2, "seed": 5, "rewind": 50}, 290.0)
    theirs = [
        perplexity(p) for p in sorted((micro_run / "branches" / "random_prune").glob("round_2-seed_*/result.json"))
    ]

    summary, path = report([run, micro_run])  # default out: the first run's report/
    assert path == run / "report" / "report.md" and path.is_file()
    groups = by_key(summary)
    values = [*mine.values(), *theirs]
    group = groups[(2, "random_prune")]
    assert group.perplexities == tuple(values)  # runs in the order given, seeds in order within a run
    mean = sum(values) / len(values)
    assert group.mean == pytest.approx(mean, rel=1e-12)
    assert group.std == pytest.approx(math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)), rel=1e-12)
    alone = groups[(2, "random_prune (rewind 50)")]
    assert alone.n == 1 and alone.std is None and alone.min == alone.max == 290.0
    assert alone.row()[3:] == ["290.00 ± - (1)", "290.00", "290.00"]

    tables = sections(path.read_text())
    every = [row for row in tables["Every seed"][1:] if row[0] == str(run) and row[3].startswith("random_prune")]
    assert [row[3] for row in every] == [f"random_prune (seed {s})" for s in mine] + [
        "random_prune (seed 5, rewind 50)"
    ]


def test_cli_prints_the_tables_it_writes(micro_run, seed_1_run, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["report", str(micro_run), str(seed_1_run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    written = (out / "report.md").read_text()
    assert printed.rstrip().endswith(f"report: {out / 'report.md'}")
    assert table_rows(printed) == table_rows(written) and sections(printed) == sections(written)

    tables = sections(written)
    groups, every = tables["Over seeds"], tables["Every seed"]
    assert groups[0] == ["round", "run", "sparsity", "val ppl: mean ± std (n)", "min", "max"]
    assert [row[:2] for row in groups[1:4]] == [["0", "dense"], ["1", "imp"], ["2", "imp"]]
    rounds = [(run, seed, r) for r in range(3) for run, seed in ((micro_run, 0), (seed_1_run, 1))]
    for (run, seed, r), row in zip(rounds, every[1:], strict=False):  # rounds first, then the branches of round 2
        assert row == [str(run), str(seed), *RoundResult.load(run / f"round_{r}" / "result.json").row()]
    sparsity = statistics.mean(RoundResult.load(run / "round_2" / "result.json").sparsity for run, _, _ in rounds)
    assert groups[3][2] == f"{sparsity:.1%}"


def test_runs_differing_only_in_what_results_ignore_combine(micro_run, tmp_path):
    """A run directory with only its config (a run killed at its start) contributes no sample, but is checked."""
    other = tmp_path / "other"
    overrides = ["--seed", "7", "--controls", "[]", "--export.format", "compact", "--train.checkpoint_every", "3"]
    run = RunDir(other)
    run.claim(load_config(None, [*MICRO, *overrides, "--track.log_every", "2", "--output_dir", str(other)]))
    run.unlock()
    summary, _ = gpt_tickets.report([micro_run, other], out=tmp_path / "out")
    assert summary.runs[1] == (str(other), 7) and {s.directory for s in summary.samples} == {str(micro_run)}


def config_only(tmp_path, *overrides):
    folder = tmp_path / "other"
    run = RunDir(folder)
    run.claim(load_config(None, [*MICRO, *overrides, "--output_dir", str(folder)]))
    run.unlock()
    return folder


def damaged(seed_1_run, tmp_path, file):
    """A copy of the run with one result damaged: a bit flipped, or (round_1) a perplexity edited so it still parses."""
    folder = tmp_path / "damaged"
    shutil.copytree(seed_1_run, folder)
    if file.startswith("branches"):
        write_branch(folder, "random_prune", {"round": 1, "seed": 4}, 300.0)
        flip_a_bit(folder / file)
    else:
        data = json.loads((folder / file).read_text())
        (folder / file).write_text(json.dumps({**data, "val_perplexity": data["val_perplexity"] - 50}))
    return folder


@pytest.mark.parametrize(
    "dirs, message",
    [
        (
            lambda a, b, tmp: [a, config_only(tmp, "--seed", "3", "--prune.fraction", "0.25")],
            "prune.fraction: 0.5 vs 0.25",
        ),
        (
            lambda a, b, tmp: [a, config_only(tmp, "--seed", "3", "--model.config", "{n_layer: 3}")],
            "model.config.n_layer",
        ),
        (lambda a, b, tmp: [a, b, a], "is given twice"),
        (lambda a, b, tmp: [a, b, b / ".." / b.name], "is given twice"),
        (lambda a, b, tmp: [a, config_only(tmp)], "are the same run (same config, seed 0)"),
        (lambda a, b, tmp: [a, tmp / "nothing"], "holds no run (no config.yaml)"),
        (
            lambda a, b, tmp: [a, damaged(b, tmp, "round_1/result.json")],
            "damaged/round_1/result.json is damaged: its content does not match the digest",
        ),
        (
            lambda a, b, tmp: [damaged(b, tmp, "branches/random_prune/round_1-seed_4/result.json")],
            "round_1-seed_4/result.json is unreadable (truncated or damaged?)",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(micro_run, seed_1_run, tmp_path, capsys, dirs, message):
    argv = [str(d) for d in dirs(micro_run, seed_1_run, tmp_path)]
    before = report_files(argv)  # find wrote micro_run's report: it must stay as it was
    assert main(["report", *argv, "--out", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err
    assert len(error_lines(captured.err)) == len(captured.err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() and report_files(argv) == before


def report_files(run_dirs) -> dict:
    """Every file in the runs' report/ folders, with its bytes."""
    return {p: p.read_bytes() for d in run_dirs for p in RunDir(d).root.joinpath("report").glob("*") if p.is_file()}
