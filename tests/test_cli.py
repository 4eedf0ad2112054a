"""The command line: one parser built from one command table, no abbreviations, one-line errors."""

import argparse

import pytest

from gpt_tickets.cli import COMMANDS, build_parser, main


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_parser_and_command_table_agree():
    subcommands = _subcommands(build_parser())
    assert list(subcommands) == list(COMMANDS) == ["find", "branch", "report", "stability", "eval", "push", "shrink"]
    for name, (_, run) in COMMANDS.items():
        assert subcommands[name].get_default("run") is run
        assert subcommands[name].prog.endswith(name)


def test_branch_help_names_every_registered_branch():
    from gpt_tickets.lottery.branches import BRANCHES

    help_text = _subcommands(build_parser())["branch"].format_help()
    assert set(BRANCHES) == {"random_reinit", "random_prune", "rewind_step", "dense_long", "oneshot_magnitude", "wanda"}
    assert all(name in help_text for name in BRANCHES)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "--model", "m", "--files", "f.txt", "--strid", "3"], "unrecognized arguments for eval: --strid 3"),
        (["branch", "runs/x", "random_prune", "--se", "3"], "unrecognized arguments for branch random_prune: --se 3"),
        (["find", "--conf", "x.yaml"], "unknown config key conf"),
    ],
)
def test_abbreviated_flags_are_refused(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
