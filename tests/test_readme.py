"""The README's commands, run as written wherever they can run offline, at the micro config's sizes.

Each command is taken from the README's own text, so an example that stops working fails here: the sizes of the
micro config are put in front of the command's own flags (the command's flags win), paths into the repository are
made absolute, and everything runs in a fresh working directory.
"""

import ast
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from pydoc_data.topics import topics

import pytest

from gpt_tickets.cli import main

from .conftest import MICRO

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def block(language: str, needle: str) -> str:
    """The README's one code block in ``language`` that contains ``needle``."""
    found = [b for b in re.findall(rf"```{language}\n(.*?)```", README, re.S) if needle in b]
    assert len(found) == 1, f"{len(found)} {language} blocks contain {needle!r}"
    return found[0]


def command_lines(text: str) -> list[list[str]]:
    """Each shell command of a block as argv: continuation lines joined, comments dropped."""
    joined = text.replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in joined.splitlines() if line.strip()]


def in_repo(argv: list[str]) -> list[str]:
    """Paths into the repository (configs/, scripts/) made absolute, so the command can run anywhere."""
    return [str(ROOT / a) if a.startswith(("configs/", "scripts/")) else a for a in argv]


def find_command(argv: list[str]) -> list[str]:
    """A README `gpt-tickets find ...` line as arguments for cli.main, at micro sizes."""
    assert argv[:2] == ["gpt-tickets", "find"], argv
    return ["find", *MICRO, *in_repo(argv[2:])]


def test_quick_start_then_the_override_examples(tmp_path, monkeypatch):
    """The quick start's run, then both override examples beside it (each with its own output_dir)."""
    monkeypatch.chdir(tmp_path)
    quick_start = command_lines(block("bash", "gpt-tickets find\n"))[0]
    assert quick_start[-3:] == ["&&", "gpt-tickets", "find"]
    assert main(["find", *MICRO]) == 0  # the quick start's `gpt-tickets find`, at micro sizes
    text = topics["for"], topics["while"], topics["if"], topics["try"]
    Path("a.txt").write_text("\n\n".join(text[:2]))
    Path("b.jsonl").write_text(json.dumps({"text": text[2]}) + "\n")
    Path("v.txt").write_text(text[3])
    examples = command_lines(block("bash", "--prune.scope layer"))
    assert len(examples) == 2
    for argv in examples:
        assert main(find_command(argv)) == 0, shlex.join(argv)
    layer = json.loads(Path("runs/tiny_layer/results.json").read_text())
    assert len(layer["rounds"]) == 4  # the example's --prune.rounds 3 won over the micro config's
    assert json.loads(Path("runs/my_text/results.json").read_text())["complete"]


def test_evaluate_snippet_runs_as_written(micro_run):
    code = block("python", "evaluate.load(METRIC_PATH)").replace("runs/tiny/ticket", str(micro_run / "ticket"))
    code = code.replace("stride=64", "stride=16")  # the micro ticket's context is 32 tokens, the tiny one's 128
    tree = ast.parse(code)
    last = tree.body[-1]
    assert isinstance(last, ast.Expr)  # the snippet ends by computing the metric: capture its value
    namespace: dict = {}
    exec(compile(ast.Module(body=tree.body[:-1], type_ignores=[]), "README.md", "exec"), namespace)
    result = eval(compile(ast.Expression(last.value), "README.md", "eval"), namespace)
    assert result["perplexity"] > 1 and result["sparsity"]["overall"] == pytest.approx(0.75, abs=0.01)


def test_two_cpu_processes_line(tmp_path):
    """The README's 2-process CPU line starts two ranks (results.json says 2) and finishes the run."""
    (line,) = command_lines(block("bash", "ACCELERATE_USE_CPU=true accelerate launch"))
    env_prefix, argv = line[0], line[1:]
    name, value = env_prefix.split("=")
    assert argv[:2] == ["accelerate", "launch"]
    script = argv.index("scripts/find_ticket.py")
    launcher, script_args = argv[2:script], argv[script + 1 :]
    command = [sys.executable, "-m", "accelerate.commands.launch", *launcher, str(ROOT / argv[script])]
    command += [*MICRO, *in_repo(script_args)]
    done = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=600, env={**os.environ, name: value}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "runs/tiny_ddp/results.json").read_text())
    assert results["num_processes"] == 2 and results["complete"]
