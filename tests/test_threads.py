"""Intra-op threads: the cores divided among the local processes, unless OMP_NUM_THREADS says otherwise."""

import subprocess
import sys

import pytest

from gpt_tickets.threads import choose_threads


@pytest.mark.parametrize(
    ("environ", "current", "threads"),
    [
        ({}, 8, 8),  # one process keeps torch's setting (its default, or torch.set_num_threads)
        ({}, 1, 1),
        ({"LOCAL_WORLD_SIZE": "1"}, 8, 8),
        ({"LOCAL_WORLD_SIZE": "2"}, 8, 4),
        ({"LOCAL_WORLD_SIZE": "3"}, 8, 2),
        ({"LOCAL_WORLD_SIZE": "16"}, 8, 1),
        ({"LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "3"}, 3, 3),  # torch read OMP_NUM_THREADS at start
        ({"OMP_NUM_THREADS": "1"}, 1, 1),
        ({"OMP_NUM_THREADS": "", "LOCAL_WORLD_SIZE": "4"}, 8, 2),
        ({"LOCAL_WORLD_SIZE": "x"}, 8, 8),
    ],
)
def test_threads_per_process(environ, current, threads):
    assert choose_threads(environ, current)[0] == threads


def test_the_choice_is_set_and_logged():
    script = (
        "import torch; from gpt_tickets.threads import set_intra_op_threads; "
        "print(set_intra_op_threads()); print(torch.get_num_threads())"
    )
    env = {"LOCAL_WORLD_SIZE": "2", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    message, threads = out.strip().splitlines()
    default = int(subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                                 env={"PATH": ""}, capture_output=True, text=True, check=True).stdout)
    assert int(threads) == max(1, default // 2)
    assert message.startswith(f"{threads} thread") and "/ 2 local processes" in message
