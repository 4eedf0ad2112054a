"""Entry point for ``accelerate launch scripts/find_ticket.py --config configs/tiny.yaml [--prune.rounds 3]``."""

import sys

from gpt_tickets.cli import main

if __name__ == "__main__":
    sys.exit(main(["find", *sys.argv[1:]]))
