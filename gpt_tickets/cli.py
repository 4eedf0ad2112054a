"""``gpt-tickets`` command line: one parser, subcommands dispatching to the package.

Bad input ends with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from .config import ConfigError, load_config
from .ticket_format import TicketError


def _find(args: argparse.Namespace, overrides: list[str]) -> int:
    cfg = load_config(args.config, overrides)  # before the heavy imports: a typo fails in a fraction of a second

    from accelerate import PartialState

    from .lottery import find_ticket
    from .report import results_table

    summary = find_ticket(cfg)
    if PartialState().is_main_process:
        print(results_table(summary))
        print(f"ticket: {cfg.output_dir}/ticket")
    return 0


def _eval(args: argparse.Namespace, rest: list[str]) -> int:
    from .perplexity_eval import TextSource, evaluate_models, results_table, save_results

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
        print(f"perplexity on {source.describe()}, {state.num_processes} process(es)\n")
        print(results_table(results))
        if saved:
            print(f"saved: {saved}")
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser(
        "eval",
        help="sliding-window perplexity of models or tickets on a dataset",
        description="Exact perplexity (total NLL / scored tokens) of each model on one dataset split or local files, "
        "the text joined with blank lines and scored in sliding windows. Under accelerate launch or torchrun the "
        "windows are split over the processes.",
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
    ev.set_defaults(run=_eval)


def _push(args: argparse.Namespace, rest: list[str]) -> int:
    from .push import push_ticket

    commit = push_ticket(
        args.ticket_dir,
        args.repo_id,
        private=args.private,
        revision=args.revision,
        create_pr=args.create_pr,
        commit_message=args.commit_message,
    )
    print(f"pushed {args.ticket_dir}: {commit.pr_url or commit.commit_url}")
    return 0


def _add_push(sub: argparse._SubParsersAction) -> None:
    push = sub.add_parser(
        "push",
        help="upload a ticket folder to the Hugging Face Hub as one commit",
        description="Checks the token (HF_TOKEN or `hf auth login`), then the folder (masks, zeros, formats) the way "
        "load_ticket does, then uploads it with HfApi.upload_folder in one commit.",
    )
    push.add_argument("ticket_dir", help="a ticket folder, e.g. runs/tiny/ticket")
    push.add_argument("--repo-id", required=True, help="Hub repo, org/name (created when missing)")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument("--revision", default=None, help="branch to commit to (created when missing)")
    push.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    push.add_argument("--commit-message", default=None, help="commit message (default names the sparsity)")
    push.set_defaults(run=_push)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpt-tickets", description="Lottery tickets for GPT-2-style causal LMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    find = sub.add_parser(
        "find",
        help="find a ticket by iterative magnitude pruning with rewinding",
        description="Any config key can be overridden with a dotted flag, e.g. --prune.rounds 3 --train.lr=3e-4.",
    )
    find.add_argument("--config", default=None, help="YAML run config (default: the embedded tiny config)")
    find.set_defaults(run=_find, takes_overrides=True)
    _add_eval(sub)
    _add_push(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    try:
        if rest and not getattr(args, "takes_overrides", False):  # only find takes dotted config overrides
            raise ConfigError(f"unrecognized arguments for {args.command}: {' '.join(rest)}")
        return args.run(args, rest)
    except (ConfigError, TicketError) as err:
        print(f"gpt-tickets: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
