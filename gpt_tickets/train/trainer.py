"""One round of training under an ``Accelerator``: the same code on one CPU process or many GPUs."""

from __future__ import annotations

import contextlib
import copy
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from ..config.schema import TrainConfig
from ..errors import RunError
from ..quiet import interactive
from ..sparsity.apply import MaskedParameters


@dataclass
class TrainOutcome:
    steps: int
    seconds: float
    final_loss: float


class EpochPermutation(Sampler[int]):
    """A shuffle that is a pure function of (seed, epoch).

    Every round sees the same data order (as in Frankle & Carbin), every rank draws the same permutation (the
    launcher shards its batches), and a resumed round can jump to any step without replaying the data.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


class Trainer:
    """Holds the prepared model, optimizer, schedule and data; ``reset`` gives every round a fresh optimizer.

    Resetting restores the state dicts captured at construction instead of building new objects, so the
    Accelerator never accumulates one optimizer (and its Adam moments) per round.
    """

    def __init__(
        self, accelerator: Accelerator, model: torch.nn.Module, train_blocks: torch.Tensor, cfg: TrainConfig, seed: int
    ) -> None:
        self.accelerator, self.cfg = accelerator, cfg
        self.micro_batch, self.accumulation = cfg.batch_layout(accelerator.num_processes)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

        def linear_warmup_decay(step: int) -> float:
            if step < cfg.warmup_steps:
                return (step + 1) / (cfg.warmup_steps + 1)
            return max(0.0, (cfg.steps - step) / (cfg.steps - cfg.warmup_steps))

        self.final_lr = False  # fine-tuning: every step at the LR of the schedule's last step
        self._factor = lambda step: linear_warmup_decay(cfg.steps - 1 if self.final_lr else step)
        # The schedule is not prepared: Accelerate would step it once per process per call.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._factor)
        self.seed = seed
        self.sampler = EpochPermutation(len(train_blocks), seed)
        loader = DataLoader(train_blocks, batch_size=self.micro_batch, sampler=self.sampler, drop_last=True)
        self.model, self.optimizer, self.loader = accelerator.prepare(model, optimizer, loader)
        if len(self.loader) < self.accumulation:
            raise ValueError(f"{len(train_blocks)} training blocks are fewer than one global batch")
        accelerator.register_for_checkpointing(self.scheduler)
        self._fresh = copy.deepcopy((self.optimizer.state_dict(), self.scheduler.state_dict()))

    def reset(self) -> None:
        self.optimizer.load_state_dict(copy.deepcopy(self._fresh[0]))
        self.scheduler.load_state_dict(copy.deepcopy(self._fresh[1]))
        # The fresh state holds the schedule's first LR; a fine-tuning phase starts at its own.
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs, strict=True):
            group["lr"] = base * self._factor(0)
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def _batches(self, start_step: int) -> Iterator[torch.Tensor]:
        """Micro-batches from optimizer step ``start_step`` of the data stream on, across epochs, in the fixed order."""
        micro = start_step * self.accumulation
        epoch, skip = divmod(micro, len(self.loader))
        while True:
            # On the prepared loader, not the sampler: accelerate's loader sets the sampler's epoch to its own count
            # of finished passes when iterated, which would make the order depend on what the process ran before.
            self.loader.set_epoch(epoch)
            yield from itertools.islice(self.loader, skip, None)
            epoch, skip = epoch + 1, 0

    def train(
        self,
        masked: MaskedParameters,
        on_step: Callable[[int, torch.Tensor], None] | None = None,
        desc: str = "train",
        start_step: int = 0,
        data_seed: int | None = None,
        data_offset: int = 0,
        final_lr: bool = False,
        stop_at: int | None = None,
    ) -> TrainOutcome:
        """Train up to ``cfg.steps`` optimizer steps; ``on_step(step, loss)`` runs after each one (loss: a tensor,
        read only when needed, since reading it waits for the device).

        ``start_step > 0`` continues a round whose model, optimizer and schedule were restored from a checkpoint.
        The batches are those of the data stream shuffled by ``data_seed`` (None: the run's seed, the order every
        round sees) from step ``data_offset + start_step`` on, so a phase may see other data or later data.
        ``final_lr`` trains every step at the LR of the schedule's last step (fine-tuning) instead of the schedule.
        ``stop_at`` ends after that many steps while the schedule still spans ``cfg.steps``: a phase's first steps
        recomputed exactly (round 0's weights at a step it did not save).
        """
        acc, model, cfg = self.accelerator, self.model, self.cfg
        end = cfg.steps if stop_at is None else stop_at
        if not start_step <= end <= cfg.steps:
            raise ValueError(f"stop_at={stop_at} must lie in [start_step={start_step}, train.steps={cfg.steps}]")
        self.sampler.seed = self.seed if data_seed is None else data_seed
        self.final_lr = final_lr
        if start_step == 0:
            self.reset()
        masked.zero_weights()
        model.train()
        start, step, loss_sum = time.perf_counter(), start_step, torch.tensor(float("nan"))
        finite = torch.ones((), dtype=torch.bool, device=acc.device)  # read once at the end: no sync per step
        # A context manager: a phase stopped by an error clears its bar, so the error's line stands alone.
        drawn = acc.is_local_main_process and interactive()  # a redirected log gets the phase's one result line
        with tqdm(total=end, initial=step, desc=desc, disable=not drawn, leave=False) as bar:
            batches = self._batches(data_offset + start_step)
            while step < end:
                loss_sum = torch.zeros((), device=acc.device)
                for i in range(self.accumulation):  # gradient accumulation by hand: explicit and resumable
                    batch = next(batches)
                    sync = i == self.accumulation - 1
                    with contextlib.nullcontext() if sync else acc.no_sync(model):
                        loss = model(input_ids=batch, labels=batch).loss / self.accumulation
                        acc.backward(loss)
                    loss_sum += loss.detach().float()
                finite &= torch.isfinite(loss_sum)
                masked.zero_grads()  # no update and no Adam moments for pruned weights
                if cfg.max_grad_norm is not None:
                    acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                masked.zero_weights()  # weight decay and numerics can't revive a pruned weight
                step += 1
                bar.update(1)
                if on_step is not None:
                    on_step(step, loss_sum)
        if not bool(finite):
            raise diverged(desc, loss_sum)
        return TrainOutcome(steps=step, seconds=time.perf_counter() - start, final_loss=float(loss_sum))


def diverged(desc: str, loss: torch.Tensor) -> RunError:
    return RunError(
        f"{desc}: the training loss became non-finite (last {float(loss)}); nothing of this phase is saved. Lower "
        "train.lr or clip gradients with train.max_grad_norm"
    )
