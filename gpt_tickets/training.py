"""One round of training under an ``Accelerator``: the same code on one CPU process or many GPUs."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .config import TrainConfig
from .masks import MaskedParameters


@dataclass
class TrainOutcome:
    steps: int
    seconds: float
    final_loss: float


class Trainer:
    """Holds the prepared model, optimizer, schedule and data; ``reset`` gives every round a fresh optimizer.

    Resetting restores the state dicts captured at construction instead of building new objects, so the
    Accelerator never accumulates one optimizer (and its Adam moments) per round.
    """

    def __init__(
        self, accelerator: Accelerator, model: torch.nn.Module, train_blocks: torch.Tensor, cfg: TrainConfig, seed: int
    ) -> None:
        self.accelerator, self.cfg, self.seed = accelerator, cfg, seed
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

        def linear_warmup_decay(step: int) -> float:
            if step < cfg.warmup_steps:
                return (step + 1) / (cfg.warmup_steps + 1)
            return max(0.0, (cfg.steps - step) / (cfg.steps - cfg.warmup_steps))

        # The schedule is not prepared: Accelerate would step it once per process per call.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_decay)
        loader = DataLoader(train_blocks, batch_size=cfg.batch_size, shuffle=True, drop_last=True)
        self.model, self.optimizer, self.loader = accelerator.prepare(model, optimizer, loader)
        self._fresh = copy.deepcopy((self.optimizer.state_dict(), self.scheduler.state_dict()))

    def reset(self) -> None:
        self.optimizer.load_state_dict(copy.deepcopy(self._fresh[0]))
        self.scheduler.load_state_dict(copy.deepcopy(self._fresh[1]))

    def train(
        self, masked: MaskedParameters, on_step: Callable[[int], None] | None = None, desc: str = "train"
    ) -> TrainOutcome:
        """Train ``cfg.steps`` optimizer steps from the current weights; ``on_step(step)`` runs after each one."""
        acc, model, cfg = self.accelerator, self.model, self.cfg
        self.reset()
        set_seed(self.seed)  # the same data order every round, as in Frankle & Carbin
        masked.zero_weights()
        model.train()
        start, step, loss_value = time.perf_counter(), 0, float("nan")
        bar = tqdm(total=cfg.steps, desc=desc, disable=not acc.is_local_main_process, leave=False)
        while step < cfg.steps:
            for batch in self.loader:
                with acc.accumulate(model):
                    loss = model(input_ids=batch, labels=batch).loss
                    acc.backward(loss)
                    if acc.sync_gradients:
                        masked.zero_grads()  # no update and no Adam moments for pruned weights
                        if cfg.max_grad_norm is not None:
                            acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                if not acc.sync_gradients:
                    continue
                self.scheduler.step()
                masked.zero_weights()  # weight decay and numerics can't revive a pruned weight
                step += 1
                loss_value = loss.item()
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
                if on_step is not None:
                    on_step(step)
                if step == cfg.steps:
                    break
        bar.close()
        return TrainOutcome(steps=step, seconds=time.perf_counter() - start, final_loss=loss_value)
