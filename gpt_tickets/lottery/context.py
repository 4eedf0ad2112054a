"""What every phase of a run shares: data, tokenizer, model, trainer and checkpoints, built once; and training one
phase (a round or a branch) from its start weights and mask to its measured result.

This is the only layer holding an ``Accelerator``; phases are records (``Phase``), told apart by what they do, not
by their names.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from transformers import PreTrainedTokenizerBase

from ..config.schema import PruneConfig, RunConfig
from ..data import group_into_blocks, load_pretrained_tokenizer, load_text_splits, tokenize_stream, train_tokenizer
from ..data.tokenizer import save_tokenizer
from ..errors import ConfigError, RunError
from ..eval.perplexity import PerplexityResult, perplexity
from ..io import load_tensors
from ..models.build import build_model, check_context, scratch_config
from ..models.families import PrunableWeight, prunable_weights
from ..models.params import save_parameters
from ..sparsity.apply import MaskedParameters
from ..sparsity.masks import Mask, mask_checksum
from ..sparsity.nm import first_indivisible
from ..sparsity.units import check_unit_schedule, unit_parameters
from ..threads import set_intra_op_threads
from ..train.checkpoints import Checkpoints
from ..train.trainer import EpochPermutation, Trainer, TrainOutcome, diverged
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
        save_at: (step, path) pairs: the weights after that many steps are saved there (round 0: the rewind
            weights and the rewind points; step 0: the start weights), each before the checkpoint of its step.
        data_seed: the seed shuffling its data (None: the run's seed, the order every round sees).
        data_offset: optimizer steps of the data stream skipped before its first batch (0: from the start).
        final_lr: train at the schedule's final learning rate throughout (fine-tuning) instead of the schedule.
    """

    key: str
    folder: Path
    start: Callable[[], Mask]
    log_offset: int = 0
    keep_trained: bool = False
    save_at: tuple[tuple[int, Path], ...] = ()
    data_seed: int | None = None
    data_offset: int = 0
    final_lr: bool = False


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
    """Builds data, tokenizer, model and trainer once for a run directory, and holds the directory's lock.

    Everything that can be checked without training is checked before the first write: the data, the tokenizer,
    the model built from its config, one global batch of data, and ``check_data`` (called with the number of
    training blocks). ``claim`` is False for work on a finished run (a branch), whose config is the directory's own.
    Use it as a context manager: leaving releases the lock.
    """

    def __init__(
        self,
        cfg: RunConfig,
        acc: Accelerator,
        claim: bool = True,
        check_data: Callable[[int], None] | None = None,
    ) -> None:
        self.cfg, self.acc, self.run_dir = cfg, acc, RunDir(cfg.output_dir)
        threads = set_intra_op_threads()
        run = self.run_dir
        micro, accumulation = cfg.train.batch_layout(acc.num_processes)  # before writes, like everything below
        if claim:
            run.check_writable()
        train_texts, val_texts = load_text_splits(cfg.data)
        if cfg.model.init == "pretrained":
            model = build_model(cfg.model, None, cfg.seed)
            tokenizer = load_pretrained_tokenizer(cfg.model.name_or_path, cfg.model.revision)
            check_context(cfg.data.block_size, model.config)
        else:
            check_context(cfg.data.block_size, scratch_config(cfg.model))
            # Every process trains the same BPE (deterministic), so no process waits for another's files.
            tokenizer = train_tokenizer(train_texts, cfg.data.vocab_size)
            tokenizer.model_max_length = cfg.data.block_size
            model = build_model(cfg.model, tokenizer, cfg.seed)
        train_blocks = group_into_blocks(train_texts, tokenizer, cfg.data.block_size)
        if len(train_blocks) < cfg.train.batch_size:
            raise ConfigError(
                f"the training data gives {len(train_blocks)} blocks of data.block_size={cfg.data.block_size} tokens, "
                f"fewer than one global batch of train.batch_size={cfg.train.batch_size}; use more data or a smaller "
                "batch"
            )
        if check_data is not None:
            check_data(len(train_blocks))
        self.val_ids = tokenize_stream(val_texts, tokenizer)[: cfg.data.max_validation_tokens]
        self.train_blocks = train_blocks  # the loader's own tensor, no copy: for branches that calibrate on it
        self.full_mask = Mask.ones_like(model, _maskable(model, cfg.prune))
        if cfg.prune.structure == "nm":
            check_nm_fits(self.full_mask, model.config.model_type, cfg.prune.nm, cfg.prune.nm_pattern()[1])

        if acc.is_main_process and claim:
            run.claim(cfg)
        elif acc.is_main_process:
            run.lock()
            run.sweep()
        try:
            if acc.is_main_process:
                self._save_run_files(tokenizer, model)
            acc.wait_for_everyone()
            self.tokenizer: PreTrainedTokenizerBase = tokenizer
            self.model_type = model.config.model_type
            self.trainer = Trainer(acc, model, train_blocks, cfg.train, cfg.seed)
            self.model = acc.unwrap_model(self.trainer.model)  # the plain transformers model, for loads and saves
            self.checkpoints = Checkpoints(acc, run.checkpoints)
            if cfg.track.log_with:
                acc.init_trackers(cfg.track.project_name, config=_flat(cfg.to_dict()))
        except BaseException:
            run.unlock()
            raise
        acc.print(
            f"gpt_tickets: {sum(p.numel() for p in self.model.parameters()):,} parameters, "
            f"{self.full_mask.numel():,} prunable; {len(train_blocks)} train blocks x {cfg.data.block_size} tokens; "
            f"global batch {cfg.train.batch_size} = {micro} per device x {acc.num_processes} "
            f"processes x {accumulation} accumulation; {threads}; run dir {run.root}"
        )

    def _save_run_files(self, tokenizer: PreTrainedTokenizerBase, model: torch.nn.Module) -> None:
        """The tokenizer (init=scratch) and the initial weights: rewritten when missing or damaged, since the ones
        in memory are what the config and seed determine.

        Only round 0 reads the initial weights, so once it has finished they are not read (a full read of a large
        model's weights at every resume) just to be checked.
        """
        run = self.run_dir
        if self.cfg.model.init == "scratch":
            save_tokenizer(tokenizer, run.tokenizer)
        if RunDir.done(run.round(0)).exists():
            return
        try:
            load_tensors(run.init)
        except RunError:
            save_parameters(model, run.init)

    def __enter__(self) -> RunContext:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cfg.track.log_with:
            self.acc.end_training()
        self.run_dir.unlock()

    # ------------------------------------------------------------------------------------------------ phases

    def train(self, phase: Phase) -> Trained:
        """Train and evaluate ``phase``, resuming from its newest checkpoint when there is one.

        A phase starting afresh saves its mask first, so a resumed phase reads the very mask it started with.
        """
        cfg, acc = self.cfg, self.acc
        acc.wait_for_everyone()
        start = self.checkpoints.restore(phase.key)
        if start > 0:
            try:
                mask = Mask.load(phase.folder / "mask.safetensors")
            except RunError as err:  # the phase can start over from what it started from
                acc.print(f"gpt_tickets: {err}; {phase.key} starts over")
                start = 0
        if start == 0:
            mask = phase.start()
            if acc.is_main_process:
                phase.folder.mkdir(parents=True, exist_ok=True)
                mask.save(phase.folder / "mask.safetensors")
                self._save_weights_at(phase, 0)
        check_ranks_agree(acc, phase.key, mask)

        def on_step(step: int, loss: torch.Tensor) -> None:
            if acc.is_main_process:
                self._save_weights_at(phase, step)
            if cfg.track.log_with and step % cfg.track.log_every == 0:
                lr = self.trainer.scheduler.get_last_lr()[0]
                acc.log({"train/loss": loss.item(), "train/lr": lr}, step=phase.log_offset + step)
            if cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0 and step < cfg.train.steps:
                if not torch.isfinite(loss):  # a diverged state is never checkpointed
                    raise diverged(phase.key, loss)
                self.checkpoints.save(phase.key, step)

        outcome = self.trainer.train(
            MaskedParameters(self.model, mask),
            on_step,
            desc=phase.key,
            start_step=start,
            data_seed=phase.data_seed,
            data_offset=phase.data_offset,
            final_lr=phase.final_lr,
        )
        return Trained(mask, outcome, self.validate())

    def evaluate(self, phase: Phase) -> Trained:
        """Evaluate ``phase``'s start weights under its mask without training (a one-shot baseline): the masked
        weights are zeroed and scored with the same validation perplexity as a trained phase; its mask is saved as a
        trained phase's is. Nothing to resume: a killed evaluation starts over.

        The outcome holds 0 steps; ``seconds``: the time ``phase.start`` took (building the mask: a calibration pass
        and the selection); ``final_loss``: the model's mean loss on the run's first global batch (the batch a first
        training step would see), a measured number where a trained phase logs its last batch's loss.
        """
        acc = self.acc
        acc.wait_for_everyone()
        began = time.perf_counter()
        mask = phase.start()
        seconds = time.perf_counter() - began
        check_ranks_agree(acc, phase.key, mask)
        if acc.is_main_process:
            phase.folder.mkdir(parents=True, exist_ok=True)
            mask.save(phase.folder / "mask.safetensors")
        MaskedParameters(self.model, mask).zero_weights()
        first_batch = first_blocks(self.train_blocks, self.cfg.seed, self.cfg.train.batch_size)
        outcome = TrainOutcome(steps=0, seconds=seconds, final_loss=self._mean_loss(first_batch))
        return Trained(mask, outcome, self.validate())

    def validate(self) -> PerplexityResult:
        """The validation perplexity every phase is scored by."""
        cfg = self.cfg
        return perplexity(
            self.trainer.model,
            self.val_ids,
            max_length=cfg.data.block_size,
            stride=cfg.eval.stride,
            batch_size=cfg.eval.batch_size,
            accelerator=self.acc,
        )

    @torch.no_grad()
    def _mean_loss(self, blocks: torch.Tensor) -> float:
        """The model's mean next-token loss over ``blocks`` (equal-length blocks: the mean of per-batch means,
        weighted by blocks), in ``eval.batch_size`` batches; every process computes it alike."""
        model = self.trainer.model
        training, total = model.training, 0.0
        model.eval()
        try:
            for batch in blocks.split(self.cfg.eval.batch_size):
                batch = batch.to(self.acc.device)
                total += float(model(input_ids=batch, labels=batch).loss) * len(batch)
        finally:
            model.train(training)
        return total / len(blocks)

    def _save_weights_at(self, phase: Phase, step: int) -> None:
        for at, path in phase.save_at:
            if at == step:
                path.parent.mkdir(parents=True, exist_ok=True)
                save_parameters(self.model, path)

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


def _maskable(model: torch.nn.Module, prune: PruneConfig) -> list[PrunableWeight]:
    """The parameters the run's masks cover: the prunable weights of ``prune.groups``; with structure units also the
    biases of heads and neurons, on a schedule the unit counts can meet (checked here, before anything is written)."""
    if prune.structure != "units":
        return prunable_weights(model, prune.groups)
    check_unit_schedule(model.config, prune)
    return unit_parameters(model, prune.groups)


def first_blocks(blocks: torch.Tensor, seed: int, count: int) -> torch.Tensor:
    """The first ``count`` of ``blocks`` in the data order of ``seed`` (epoch 0): what round 0's first
    ``count`` blocks of batches were, on any number of processes (they shard the same order)."""
    order = EpochPermutation(len(blocks), seed)
    return blocks[torch.tensor(list(itertools.islice(order, count)), dtype=torch.long)]


def check_nm_fits(mask: Mask, model_type: str, nm: str, m: int) -> None:
    """N:M groups need M to divide every pruned weight's input size: refused in one line before anything is written."""
    indivisible = first_indivisible(mask, model_type, m)
    if indivisible:
        name, size = indivisible
        raise ConfigError(
            f"prune.nm={nm}: M={m} does not divide the input size {size} of weight {name!r}; choose an M that "
            "divides every pruned weight's input size"
        )


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
