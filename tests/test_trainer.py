"""The data order is a pure function of (seed, epoch, step), whatever the process trained before.

Every round sees the same data order (Frankle & Carbin), a resumed phase jumps to its step, and a branch run in a
fresh process sees what it would have seen at the end of ``find``: none of that may depend on how many passes over
the data the process made before.
"""

import itertools

import torch
from accelerate import Accelerator

from gpt_tickets.config.schema import TrainConfig
from gpt_tickets.train.trainer import EpochPermutation, Trainer

BLOCKS, BATCH, SEED = 10, 2, 7


def expected(n_batches: int, start: int = 0) -> list[list[int]]:
    """Batches (their block indices) from optimizer step ``start``: each epoch one permutation of (seed, epoch)."""
    order = []
    for epoch in itertools.count():
        sampler = EpochPermutation(BLOCKS, SEED)
        sampler.set_epoch(epoch)
        order += list(sampler)
        if len(order) >= (start + n_batches) * BATCH:
            break
    return [order[i : i + BATCH] for i in range(start * BATCH, (start + n_batches) * BATCH, BATCH)]


def test_batches_follow_the_permutation_whatever_ran_before():
    blocks = torch.arange(BLOCKS).unsqueeze(1).repeat(1, 3)  # block i holds the token i
    cfg = TrainConfig(steps=20, batch_size=BATCH)
    trainer = Trainer(Accelerator(cpu=True), torch.nn.Linear(3, 3), blocks, cfg, SEED)

    def taken(start: int, n: int) -> list[list[int]]:
        return [batch[:, 0].tolist() for batch in itertools.islice(trainer._batches(start), n)]

    first = taken(0, 12)  # 2.4 epochs: the loader finishes two passes
    assert first == expected(12)
    assert taken(0, 12) == first  # again from step 0, after those passes: the same order
    assert taken(7, 5) == expected(5, start=7) == first[7:12]  # a resumed phase jumps to its step
