"""``gpt-tickets`` command line: one parser, subcommands dispatching to the package.

Bad input ends with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import re
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .config import load_config
from .config.loading import load_yaml
from .config.schema import check_seeds
from .errors import ConfigError, RunError, TicketError

if TYPE_CHECKING:
    from .lottery.branches.base import Branch


def _find(args: argparse.Namespace, overrides: list[str]) -> int:
    cfg = load_config(args.config, overrides)  # before the heavy imports: a typo fails in a fraction of a second

    from accelerate import PartialState

    from .lottery.combine import REPORT_DIR, REPORT_FILE
    from .lottery.imp import find_ticket
    from .reporting.tables import results_table
    from .tickets.push import push_ticket, require_token

    if cfg.export.push_to_hub:
        require_token()  # now, not hours later at the end of the run
    results = find_ticket(cfg)
    if not PartialState().is_main_process:
        return 0
    print(results_table(results.phases))
    print(f"report: {cfg.output_dir}/{REPORT_DIR}/{REPORT_FILE}")
    ticket = f"{cfg.output_dir}/ticket"
    print(f"ticket: {ticket}")
    if cfg.export.push_to_hub:  # after the run, outside it: a failed push loses nothing
        try:
            commit = push_ticket(ticket, cfg.export.push_to_hub, private=cfg.export.private)
        except TicketError as err:
            hint = f"the ticket is saved: push it with `gpt-tickets push {ticket} --repo-id {cfg.export.push_to_hub}`"
            raise TicketError(f"{err}; {hint}") from None
        print(f"pushed the ticket to {commit.commit_url}")
    return 0


def _add_find(sub: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    find = sub.add_parser(
        name,
        help="find a ticket by iterative magnitude pruning with rewinding",
        description="Any config key can be overridden with a dotted flag, e.g. --prune.rounds 3 --train.lr=3e-4.",
        allow_abbrev=False,
    )
    find.add_argument("--config", default=None, help="YAML run config (default: the embedded tiny config)")
    find.set_defaults(takes_overrides=True)
    return find


def _branch(args: argparse.Namespace, rest: list[str]) -> int:
    seeds = _seeds(args.seeds)  # before the heavy imports

    from accelerate import PartialState

    from .config.schema import parse_rounds
    from .lottery.branches.registry import get_branch
    from .lottery.branches.runner import run_branch
    from .reporting.tables import results_table

    rounds = None if args.round is None else parse_rounds("--round", args.round)
    own = _branch_flags(get_branch(args.name), rest)
    results = run_branch(args.run_dir, args.name, round=rounds, seeds=seeds, **own)
    if PartialState().is_main_process:
        print(results_table(results))
    return 0


def _seeds(text: str | None) -> list[int] | None:
    """``--seeds 1,2,3``: distinct integers 0..2**63-1."""
    if text is None:
        return None
    if not all(re.fullmatch(r"\s*-?\d+\s*", piece) for piece in text.split(",")):
        raise ConfigError(f"--seeds={text!r} is not a comma-separated list of integers; e.g. --seeds 1,2,3")
    seeds = [int(piece) for piece in text.split(",")]
    check_seeds("--seeds", seeds)
    return seeds


def _branch_flags(branch: Branch, tokens: list[str]) -> dict[str, Any]:
    """The branch's own parameters (its Params fields beyond round and seed) from ``--name VALUE`` flags: derived from
    the dataclass, so a new branch needs no edit here. Values are read as YAML scalars, as config overrides are, and
    checked by the Params dataclass."""
    flags = {f"--{name}": name for name in branch.own_params()}
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    for flag, name in flags.items():
        parser.add_argument(flag, dest=name, default=argparse.SUPPRESS)
    try:
        given, unknown = parser.parse_known_args(tokens)
    except argparse.ArgumentError as err:
        raise ConfigError(f"branch {branch.name}: {err}") from None
    if unknown:
        close = difflib.get_close_matches(unknown[0].split("=")[0], flags, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ConfigError(
            f"unrecognized arguments for branch {branch.name}: {' '.join(unknown)}; {hint}its own parameters: "
            f"{', '.join(flags) or 'none beyond --round and --seeds'}"
        )
    return {name: load_yaml(value, f"--{name}") for name, value in vars(given).items()}


def _add_branch(sub: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    branch = sub.add_parser(
        name,
        help="train a branch (a control) from a finished round of a run",
        description="Trains a branch from a finished round, once per seed: random_reinit (the round's mask on freshly "
        "initialised weights), random_prune (random masks with the round's counts in the run's structure: per "
        "matrix, per layer's heads and neurons, or per N:M group; on the rewind weights), rewind_step (the round's "
        "mask on round 0's weights at step --rewind K, one of 0, "
        "prune.rewind_step and prune.rewind_points; the seed sets the data order), dense_long (the dense model "
        "trained (R + 1) x train.steps steps in R + 1 segments, evaluated after each), oneshot_magnitude (the trained "
        "dense model pruned once to the round's sparsity in each pool of the run's scope rules, by prune.score), "
        "wanda (the same by |W| x the input norm over --calibration_blocks N blocks of training data, default 128); "
        "the one-shot ones rank within the run's pools, or with --compare row within each output row (Wanda as "
        "published), and are evaluated as they are, or with --finetune N after each of N segments of train.steps "
        "of sparse fine-tuning, and without fine-tuning run once (the seed changes nothing). A branch's own "
        "parameters are flags named as its parameters (--rewind 50). Each result lives in RUN_DIR/branches/NAME/<its "
        "parameters>/, e.g. round_2-seed_1/ or round_2-seed_0-rewind_50/; a finished branch is read back, a killed "
        "one resumes.",
        allow_abbrev=False,
    )
    branch.add_argument("run_dir", help="the output_dir of a `gpt-tickets find` run")
    branch.add_argument(
        "name",
        help="random_reinit, random_prune, rewind_step, dense_long, oneshot_magnitude or wanda (an unknown name "
        "lists them all)",
    )
    branch.add_argument(
        "--round",
        default=None,
        help="finished round to start from, a comma-separated list (1,3) or all (every pruned round; default: the "
        "last)",
    )
    branch.add_argument(
        "--seeds", default=None, help="the branch's seeds, comma-separated, e.g. 1,2,3 (default: run seed + 1, + 2)"
    )
    branch.set_defaults(takes_overrides=True)  # the branch's own parameters, read once the branch is known
    return branch


def _report(args: argparse.Namespace, rest: list[str]) -> int:
    from .lottery.combine import report
    from .reporting.summary import render_markdown

    summary, path = report(args.run_dirs, out=args.out)
    print(render_markdown(summary))
    print(f"report: {path}")
    return 0


def _add_report(sub: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    rep = sub.add_parser(
        name,
        help="the results of one or several runs (seeds): tables with each group's mean and spread, and plots",
        description="Reads every finished round and branch of each RUN_DIR (each result checked against its digest) "
        "and prints every seed's row and, for each round and each branch with the same parameters, the mean, sample "
        "standard deviation, min and max of validation perplexity over seeds. The runs must be replicates: the same "
        "config but the seed. Writes the tables to OUT/report.md with PNG plots beside it: perplexity_vs_sparsity "
        "(the ticket, dense at equal steps and trained as long, every control and baseline), sparsity_heatmap "
        "(per layer and matrix), mask_overlap (Jaccard of consecutive rounds, and of the ticket with each branch) "
        "and stability (when `gpt-tickets stability` ran); a plot the runs hold no data for is left out, and "
        "report.md's Missing section names the command that adds it.",
        allow_abbrev=False,
    )
    rep.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="output_dirs of `gpt-tickets find` runs")
    rep.add_argument(
        "--out", default=None, help="folder of report.md and the plots (default: the first RUN_DIR's report/)"
    )
    return rep


def _stability(args: argparse.Namespace, rest: list[str]) -> int:
    seeds = _seeds(args.seeds)  # before the heavy imports

    def scalar(text: str | None, flag: str) -> Any:
        """Read as a YAML scalar, as config overrides are; checked where it is used, in one line."""
        return None if text is None else load_yaml(text, flag)

    steps = [scalar(piece, "--rewind-steps") for piece in args.rewind_steps.split(",")]
    round, points = scalar(args.round, "--round"), scalar(args.points, "--points")

    from accelerate import PartialState

    from .lottery.stability import STABLE_BARRIER, check_threshold, run_stability, stability_table

    try:
        threshold = STABLE_BARRIER if args.threshold is None else float(args.threshold)
    except ValueError:
        raise ConfigError(f"--threshold={args.threshold!r} is not a number; give a barrier in nats > 0") from None
    check_threshold(threshold)
    results = run_stability(args.run_dir, steps, round=round, seeds=seeds, points=11 if points is None else points)
    if PartialState().is_main_process:
        print(stability_table(results, threshold))
    return 0


def _add_stability(sub: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    stab = sub.add_parser(
        name,
        help="stability to SGD noise (linear mode connectivity) from round 0's weights at several rewind steps",
        description="For each rewind step k, trains two copies from round 0's weights at step k with a round's mask "
        "(default: the final round's; --round 0: the dense model), each on its own data order (--seeds), for "
        "train.steps steps as a round; then evaluates the validation loss at --points points of the straight line "
        "between them. The barrier is the worst loss on the path minus the mean of its ends (nats); the earliest k "
        "whose barrier is below --threshold is recommended (Frankle et al. 2020). Steps round 0 did not save are "
        "recomputed once. Results live in RUN_DIR/stability/; finished ones are read back, a killed copy resumes.",
        allow_abbrev=False,
    )
    stab.add_argument("run_dir", help="the output_dir of a `gpt-tickets find` run")
    stab.add_argument("--rewind-steps", required=True, help="round 0's steps, comma-separated, e.g. 0,25,50,100")
    stab.add_argument(
        "--round",
        default=None,
        help="the finished round whose mask the copies train with (default: the last; 0: the dense model)",
    )
    stab.add_argument("--seeds", default=None, help="the copies' two seeds, e.g. 1,2 (default: run seed + 1, + 2)")
    stab.add_argument("--points", default=None, help="points on the path, ends included, >= 3 (default: 11)")
    stab.add_argument("--threshold", default=None, help="barrier (nats) below which a step is stable (default: 0.02)")
    return stab


def _eval(args: argparse.Namespace, rest: list[str]) -> int:
    from .eval.models import TextSource, evaluate_models, results_table, save_results
    from .threads import set_intra_op_threads

    source = TextSource(args.dataset, args.dataset_config, args.split, args.files or [], args.text_column)
    results = evaluate_models(args.model, source, args.max_length, args.stride, args.batch_size)

    from accelerate import PartialState  # set up by evaluate_models

    state = PartialState()
    if not state.is_main_process:
        return 0
    payload = {
        "dataset": dataclasses.asdict(source),
        "num_processes": state.num_processes,
        "results": [r.to_dict() for r in results],
    }
    saved = save_results(args.save_dir, payload) if args.save_dir else None
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        print(f"perplexity on {source.describe()}, {state.num_processes} process(es), {set_intra_op_threads()}\n")
        print(results_table(results))
        if saved:
            print(f"saved: {saved}")
    return 0


def _add_eval(sub: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    ev = sub.add_parser(
        name,
        help="sliding-window perplexity of models or tickets on a dataset",
        description="Exact perplexity (total NLL / scored tokens) of each model on one dataset split or local files, "
        "the text joined with blank lines and scored in sliding windows. Under accelerate launch or torchrun the "
        "windows are split over the processes.",
        allow_abbrev=False,
    )
    ev.add_argument("--model", nargs="+", required=True, help="local folders (tickets included) or Hub ids")
    data = ev.add_mutually_exclusive_group(required=True)
    data.add_argument("--dataset", default=None, help="Hub dataset name or local dataset folder, e.g. wikitext")
    data.add_argument("--files", nargs="+", default=None, help="local .txt, .json or .jsonl files")
    ev.add_argument("--dataset-config", default=None, help="Hub dataset config, e.g. wikitext-2-raw-v1")
    ev.add_argument("--split", default="test", help="dataset split (default: test)")
    ev.add_argument("--text-column", default="text", help="column holding the text (default: text)")
    ev.add_argument("--max-length", type=int, default=None, help="tokens per window (default: the model's context)")
    ev.add_argument("--stride", type=int, default=None, help="tokens the window moves by (default: max length)")
    ev.add_argument("--batch-size", type=int, default=8, help="windows per forward pass per process (default: 8)")
    ev.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    ev.add_argument("--save-dir", default=None, help="also save the results there as JSON with evaluate.save")
    return ev


def _push(args: argparse.Namespace, rest: list[str]) -> int:
    from .tickets.push import push_ticket

    commit = push_ticket(
        args.ticket_dir,
        args.repo_id,
        private=args.private,
        revision=args.revision,
        create_pr=args.create_pr,
        commit_message=args.commit_message,
        timeout=args.timeout,
    )
    print(f"pushed {args.ticket_dir}: {commit.pr_url or commit.commit_url}")
    return 0


def _add_push(sub: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    push = sub.add_parser(
        name,
        help="upload a ticket folder to the Hugging Face Hub as one commit",
        description="Checks the token (HF_TOKEN or `hf auth login`), then the folder (masks, zeros, formats) the way "
        "load_ticket does, then uploads it with HfApi.upload_folder in one commit.",
        allow_abbrev=False,
    )
    push.add_argument("ticket_dir", help="a ticket folder, e.g. runs/tiny/ticket")
    push.add_argument("--repo-id", required=True, help="Hub repo, org/name (created when missing)")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument("--revision", default=None, help="branch to commit to (created when missing)")
    push.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    push.add_argument("--commit-message", default=None, help="commit message (default names the sparsity)")
    push.add_argument(
        "--timeout", type=float, default=None, help="seconds one network step may wait for the Hub (default: 60)"
    )
    return push


def _shrink(args: argparse.Namespace, rest: list[str]) -> int:
    from .tickets.shrink import SHRINK_FILE, shrink_ticket

    out = shrink_ticket(args.ticket, args.out, revision=args.revision)
    record = json.loads((out / SHRINK_FILE).read_text())
    before, after = record["parameters"]["before"], record["parameters"]["after"]
    changes = ", ".join(f"{key}={value}" for key, value in record["config_changes"].items())
    print(f"shrunk {args.ticket} into {out}: {before:,} -> {after:,} parameters ({changes})")
    return 0


def _add_shrink(sub: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    shrink = sub.add_parser(
        name,
        help="write a structured ticket as a smaller standard model that plain transformers loads",
        description="Removes the ticket's entirely masked units: MLP neurons (GPT-2: n_inner; Llama, Mistral, Qwen2: "
        "intermediate_size) and Llama-family KV groups (num_key_value_heads and num_attention_heads, head_dim set "
        "explicitly), and writes OUT as a standard model with its tokenizer, a model card and shrink_config.json "
        "(the removed units of each layer); its logits equal the masked ticket's. Every layer must lose as many "
        "units (uniform allocation); only whole units may be masked; GPT-2's masked heads stay as zeros (its head "
        "size is fixed). Anything else is one line and exit code 2, with nothing written.",
        allow_abbrev=False,
    )
    shrink.add_argument("ticket", help="a ticket folder (e.g. runs/tiny/ticket) or a Hub repo id")
    shrink.add_argument("out", help="the new model's folder (new, empty, or an earlier shrink output)")
    shrink.add_argument("--revision", default=None, help="branch, tag or commit of a Hub ticket")
    return shrink


Command = tuple[Callable[[argparse._SubParsersAction, str], argparse.ArgumentParser], Callable[..., int]]

# The command table: name -> (adds its parser, runs it). A test checks that the parser offers exactly these.
COMMANDS: dict[str, Command] = {
    "find": (_add_find, _find),
    "branch": (_add_branch, _branch),
    "report": (_add_report, _report),
    "stability": (_add_stability, _stability),
    "eval": (_add_eval, _eval),
    "push": (_add_push, _push),
    "shrink": (_add_shrink, _shrink),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpt-tickets", description="Lottery tickets for GPT-2-style causal LMs.", allow_abbrev=False
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add, run) in COMMANDS.items():
        add(sub, name).set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    started_before = _process_group_started()
    try:
        if rest and not getattr(args, "takes_overrides", False):  # find: config overrides; branch: its parameters
            raise ConfigError(f"unrecognized arguments for {args.command}: {' '.join(rest)}")
        return args.run(args, rest)
    except (ConfigError, RunError, TicketError) as err:
        print(f"gpt-tickets: error: {err}", file=sys.stderr)
        return 2
    finally:
        if not started_before and _process_group_started():
            _end_process_group()


def _process_group_started() -> bool:
    """Whether torch.distributed has a process group (without importing torch for ``--help``)."""
    dist = sys.modules.get("torch.distributed")
    return dist is not None and dist.is_available() and dist.is_initialized()


def _end_process_group() -> None:
    """End the process group a command started (Accelerate starts one under torchrun / accelerate launch) while
    the interpreter is alive: gloo's worker threads still running at interpreter exit abort the process
    ("terminate called without an active exception", SIGABRT; seen once in CI after a two-process eval)."""
    sys.modules["torch.distributed"].destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
