"""What every phase of a run shares: data, tokenizer, model, trainer and checkpoints, built once; and training one
phase (a round or a branch) from its start weights and mask to its measured result.

This is the only layer holding an ``Accelerator``; phases are records (``Phase``), told apart by what they do, not
by their names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from ..config.schema import RunConfig
from ..data import group_into_blocks, load_pretrained_tokenizer, load_text_splits, tokenize_stream, train_tokenizer
from ..eval.perplexity import PerplexityResult, perplexity
from ..models.build import build_model, check_context, scratch_config
from ..models.families import prunable_weights
from ..models.params import save_parameters
from ..sparsity.apply import MaskedParameters
from ..sparsity.masks import Mask, mask_checksum
from ..train.checkpoints import Checkpoints
from ..train.trainer import Trainer, TrainOutcome
from .results import PhaseResult
from .run_dir import RunDir


@dataclass(frozen=True)
class Phase:
    """One training run inside a run directory: a round or a branch.

    Attributes:
        key: names the phase in checkpoints, progress bars and logs (``round 3``).
        folder: where its mask, its trained weights (``keep_trained``) and its ``result.json`` live.
        start: loads the phase's start weights into the model and returns its mask (only when it starts afresh).
        log_offset: tracker steps before this phase, so phases follow each other on one axis.
        keep_trained: save the trained weights (a round's, from which the next round prunes).
        save_rewind_at: save the weights at this step as the run's rewind point (round 0 only).
    """

    key: str
    folder: Path
    start: Callable[[], Mask]
    log_offset: int = 0
    keep_trained: bool = False
    save_rewind_at: int | None = None


@dataclass
class Trained:
    mask: Mask
    outcome: TrainOutcome
    perplexity: PerplexityResult


def accelerator_for(cfg: RunConfig) -> Accelerator:
    return Accelerator(
        mixed_precision=cfg.train.mixed_precision, log_with=cfg.track.log_with or None, project_dir=cfg.output_dir
    )


class RunContext:
    """Builds data, model and trainer once for a run directory; ``claim`` is False for work on a finished run."""

    def __init__(self, cfg: RunConfig, acc: Accelerator, claim: bool = True) -> None:
        self.cfg, self.acc, self.run_dir = cfg, acc, RunDir(cfg.output_dir)
        run = self.run_dir
        cfg.train.batch_layout(acc.num_processes)  # a world size that does not divide the batch fails before writes
        train_texts, val_texts = load_text_splits(cfg.data)
        if cfg.model.init == "pretrained":  # fails fast, before anything is written
            model = build_model(cfg.model, None, cfg.seed)
            tokenizer = load_pretrained_tokenizer(cfg.model.name_or_path, cfg.model.revision)
            check_context(cfg.data.block_size, model.config)
        else:
            check_context(cfg.data.block_size, scratch_config(cfg.model))
        if claim and acc.is_main_process:
            run.claim(cfg)
        acc.wait_for_everyone()
        if cfg.model.init == "scratch":
            tokenizer = self._trained_tokenizer(train_texts)
            model = build_model(cfg.model, tokenizer, cfg.seed)
        if acc.is_main_process and not run.init.exists():
            save_parameters(model, run.init)

        with acc.main_process_first():
            train_blocks = group_into_blocks(train_texts, tokenizer, cfg.data.block_size)
            self.val_ids = tokenize_stream(val_texts, tokenizer)[: cfg.data.max_validation_tokens]
        self.tokenizer: PreTrainedTokenizerBase = tokenizer
        self.model_type = model.config.model_type
        self.full_mask = Mask.ones_like(model, prunable_weights(model, cfg.prune.groups))
        self.trainer = Trainer(acc, model, train_blocks, cfg.train, cfg.seed)
        self.model = acc.unwrap_model(self.trainer.model)  # the plain transformers model, for loads and saves
        self.checkpoints = Checkpoints(acc, run.checkpoints)
        acc.print(
            f"gpt_tickets: {sum(p.numel() for p in self.model.parameters()):,} parameters, "
            f"{self.full_mask.numel():,} prunable; {len(train_blocks)} train blocks x {cfg.data.block_size} tokens; "
            f"global batch {cfg.train.batch_size} = {self.trainer.micro_batch} per device x {acc.num_processes} "
            f"processes x {self.trainer.accumulation} accumulation; run dir {run.root}"
        )
        if cfg.track.log_with:
            acc.init_trackers(cfg.track.project_name, config=_flat(cfg.to_dict()))

    def _trained_tokenizer(self, train_texts: list[str]) -> PreTrainedTokenizerBase:
        """A BPE trained on the train split for init=scratch, saved with the run so the ticket can use it."""
        run, acc = self.run_dir, self.acc
        with acc.main_process_first():  # rank 0 trains and saves it; the others read the same files
            if run.tokenizer.exists():
                return AutoTokenizer.from_pretrained(run.tokenizer)
            tokenizer = train_tokenizer(train_texts, self.cfg.data.vocab_size)
            tokenizer.model_max_length = self.cfg.data.block_size
            if acc.is_main_process:
                tokenizer.save_pretrained(run.tokenizer)
            return tokenizer

    def end(self) -> None:
        if self.cfg.track.log_with:
            self.acc.end_training()

    # ------------------------------------------------------------------------------------------------ phases

    def train(self, phase: Phase) -> Trained:
        """Train and evaluate ``phase``, resuming from its newest checkpoint when there is one.

        A phase starting afresh saves its mask first, so a resumed phase reads the very mask it started with.
        """
        cfg, acc = self.cfg, self.acc
        acc.wait_for_everyone()
        start = self.checkpoints.restore(phase.key)
        if start == 0:
            mask = phase.start()
            if acc.is_main_process:
                phase.folder.mkdir(parents=True, exist_ok=True)
                mask.save(phase.folder / "mask.safetensors")
        else:
            mask = Mask.load(phase.folder / "mask.safetensors")
        check_ranks_agree(acc, phase.key, mask)

        def on_step(step: int, loss: torch.Tensor) -> None:
            if step == phase.save_rewind_at and acc.is_main_process:
                save_parameters(self.model, self.run_dir.rewind)
            if cfg.track.log_with and step % cfg.track.log_every == 0:
                lr = self.trainer.scheduler.get_last_lr()[0]
                acc.log({"train/loss": loss.item(), "train/lr": lr}, step=phase.log_offset + step)
            if cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0 and step < cfg.train.steps:
                self.checkpoints.save(phase.key, step)

        outcome = self.trainer.train(MaskedParameters(self.model, mask), on_step, desc=phase.key, start_step=start)
        ppl = perplexity(
            self.trainer.model,
            self.val_ids,
            max_length=cfg.data.block_size,
            stride=cfg.eval.stride,
            batch_size=cfg.eval.batch_size,
            accelerator=acc,
        )
        return Trained(mask, outcome, ppl)

    def finish(self, phase: Phase, result: PhaseResult) -> None:
        """Record a trained phase: its trained weights if kept, then its result, the marker that it is done."""
        acc = self.acc
        acc.print(f"{phase.key}: sparsity {result.sparsity:.1%}, val perplexity {result.val_perplexity:.2f}")
        if self.cfg.track.log_with:
            acc.log(
                {"round/sparsity": result.sparsity, "round/val_perplexity": result.val_perplexity},
                step=phase.log_offset + self.cfg.train.steps,
            )
        if acc.is_main_process:
            phase.folder.mkdir(parents=True, exist_ok=True)
            if phase.keep_trained:
                save_parameters(self.model, phase.folder / "trained.safetensors")
            result.save(RunDir.done(phase.folder))  # written last: the marker that the phase is complete
        self.checkpoints.clear()


def check_ranks_agree(acc: Accelerator, key: str, mask: Mask) -> None:
    """Every rank derives the mask itself from synchronised weights; a disagreement must stop the run."""
    if acc.num_processes == 1:
        return
    sums = gather_object([mask_checksum(mask)])
    if len(set(sums)) != 1:
        raise RuntimeError(f"{key}: the processes hold different masks (checksums {sums}); stopping")


def _flat(tree: dict, prefix: str = "") -> dict:
    """Trackers want flat scalars: {"prune.rounds": 5, ...}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, int | float | str | bool) else str(value)
    return flat
