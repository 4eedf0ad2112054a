"""``python -m tests.cli_in_process_group ARGS``: ``gpt-tickets ARGS``, then whether the process group is still up
(on stderr): what a worker under torchrun would leave to interpreter exit, where gloo's threads can abort it."""

import sys

import torch.distributed as dist

from gpt_tickets.cli import main

if __name__ == "__main__":
    code = main(sys.argv[1:])
    print(f"process group after main: {'up' if dist.is_initialized() else 'ended'}", file=sys.stderr)
    sys.exit(code)
