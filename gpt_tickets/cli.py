"""``gpt-tickets`` command line: one parser, subcommands dispatching to the package.

Bad input ends with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from .config import ConfigError, load_config


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpt-tickets", description="Lottery tickets for GPT-2-style causal LMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    find = sub.add_parser(
        "find",
        help="find a ticket by iterative magnitude pruning with rewinding",
        description="Any config key can be overridden with a dotted flag, e.g. --prune.rounds 3 --train.lr=3e-4.",
    )
    find.add_argument("--config", default=None, help="YAML run config (default: the embedded tiny config)")
    find.set_defaults(run=_find)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    try:
        return args.run(args, rest)
    except ConfigError as err:
        print(f"gpt-tickets: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
