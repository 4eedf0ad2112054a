"""The lottery runner: the only place that knows the order of rounds.

Round 0 trains the dense model and stores the step-k weights on disk; each round r >= 1 prunes p of the surviving
weights by trained magnitude, rewinds the survivors to step k, retrains with a fresh optimizer and schedule, and
evaluates. Everything that crosses a round lives in the run directory, so a finished round is never recomputed
when the same command runs again, and controls are cheap branches off the saved masks.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import gather_object
from transformers import AutoTokenizer

from .architectures import prunable_weights
from .checkpoints import Checkpoints
from .config import ConfigError, RunConfig
from .data import group_into_blocks, load_pretrained_tokenizer, load_text_splits, tokenize_stream, train_tokenizer
from .evaluation import perplexity
from .export import export_ticket
from .io import atomic_write_json, atomic_write_text
from .masks import Mask, MaskedParameters, mask_checksum, sparsity_report
from .models import (
    build_model,
    check_context,
    load_parameters,
    random_init,
    save_parameters,
    scratch_config,
)
from .pruning import magnitude_prune
from .push import push_ticket, require_token
from .ticket_format import TicketError
from .training import Trainer


class RunDir:
    """Paths of a run; a directory belongs to one config fingerprint."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    config = property(lambda self: self.root / "config.yaml")
    results = property(lambda self: self.root / "results.json")
    tokenizer = property(lambda self: self.root / "tokenizer")
    init = property(lambda self: self.root / "init.safetensors")
    rewind = property(lambda self: self.root / "rewind.safetensors")
    checkpoints = property(lambda self: self.root / "checkpoints")
    ticket = property(lambda self: self.root / "ticket")

    def round(self, r: int) -> Path:
        return self.root / f"round_{r}"

    def control(self, name: str) -> Path:
        return self.root / "controls" / name

    def claim(self, cfg: RunConfig) -> None:
        """Create the directory for ``cfg``, or accept it if it holds a run of the same config.

        A directory where no round has finished yet holds nothing worth protecting and is taken over.
        """
        if self.config.exists() and (self.round(0) / "result.json").exists():
            theirs = yaml.safe_load(self.config.read_text()).get("fingerprint")
            if theirs != cfg.fingerprint():
                raise ConfigError(
                    f"output_dir {str(self.root)!r} holds a run of a different config (fingerprint {theirs}, this "
                    f"one {cfg.fingerprint()}); choose another output_dir or delete that directory"
                )
            return
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            yaml.safe_dump({"fingerprint": cfg.fingerprint(), **cfg.to_dict()}, sort_keys=False), self.config
        )


def _trained_tokenizer(cfg: RunConfig, run: RunDir, train_texts: list[str], acc: Accelerator):
    """A BPE trained on the train split for init=scratch, saved with the run so the ticket can use it."""
    with acc.main_process_first():  # rank 0 trains and saves it; the others read the same files
        if run.tokenizer.exists():
            return AutoTokenizer.from_pretrained(run.tokenizer)
        tokenizer = train_tokenizer(train_texts, cfg.data.vocab_size)
        tokenizer.model_max_length = cfg.data.block_size
        if acc.is_main_process:
            tokenizer.save_pretrained(run.tokenizer)
        return tokenizer


def _phase_result(kind: str, r: int, mask: Mask, model_type: str, outcome, ppl) -> dict:
    report = sparsity_report(mask, model_type)
    return {
        "round": r,
        "kind": kind,
        "sparsity": report["overall"],
        "attention_sparsity": report.get("attention", 0.0),
        "mlp_sparsity": report.get("mlp", 0.0),
        "val_perplexity": ppl.perplexity,
        "val_nll": ppl.nll,
        "train_steps": outcome.steps,
        "final_train_loss": outcome.final_loss,
        "wall_seconds": round(outcome.seconds, 2),
        "per_layer_sparsity": report["per_layer"],
        "mask_checksum": mask_checksum(mask),
    }


def find_ticket(cfg: RunConfig, accelerator: Accelerator | None = None) -> dict:
    """Run IMP with rewinding as ``cfg`` says; returns the content of ``results.json``."""
    acc = accelerator or Accelerator(
        mixed_precision=cfg.train.mixed_precision,
        log_with=cfg.track.log_with or None,
        project_dir=cfg.output_dir,
    )
    return Lottery(cfg, acc).run()


class Lottery:
    """One run: builds data, model and trainer once, then walks the phases (rounds, then controls) in order."""

    def __init__(self, cfg: RunConfig, acc: Accelerator) -> None:
        self.cfg, self.acc, self.run_dir = cfg, acc, RunDir(cfg.output_dir)
        run = self.run_dir
        cfg.train.batch_layout(acc.num_processes)  # a world size that does not divide the batch fails before writes
        if cfg.export.push_to_hub:
            require_token()  # not hours later, at the end of the run
        train_texts, val_texts = load_text_splits(cfg.data)
        if cfg.model.init == "pretrained":  # fails fast, before anything is written
            model = build_model(cfg.model, None, cfg.seed)
            tokenizer = load_pretrained_tokenizer(cfg.model.name_or_path, cfg.model.revision)
            check_context(cfg.data.block_size, model.config)
        else:
            check_context(cfg.data.block_size, scratch_config(cfg.model))
        if acc.is_main_process:
            run.claim(cfg)
        acc.wait_for_everyone()
        if cfg.model.init == "scratch":
            tokenizer = _trained_tokenizer(cfg, run, train_texts, acc)
            model = build_model(cfg.model, tokenizer, cfg.seed)
        if acc.is_main_process and not run.init.exists():
            save_parameters(model, run.init)

        with acc.main_process_first():
            train_blocks = group_into_blocks(train_texts, tokenizer, cfg.data.block_size)
            self.val_ids = tokenize_stream(val_texts, tokenizer)[: cfg.data.max_validation_tokens]
        self.tokenizer, self.model_type = tokenizer, model.config.model_type
        self.full_mask = Mask.ones_like(model, prunable_weights(model, cfg.prune.groups))
        self.trainer = Trainer(acc, model, train_blocks, cfg.train, cfg.seed)
        self.plain = acc.unwrap_model(self.trainer.model)
        self.checkpoints = Checkpoints(acc, run.checkpoints)
        acc.print(
            f"gpt_tickets: {sum(p.numel() for p in self.plain.parameters()):,} parameters, "
            f"{self.full_mask.numel():,} prunable; {len(train_blocks)} train blocks x {cfg.data.block_size} tokens; "
            f"global batch {cfg.train.batch_size} = {self.trainer.micro_batch} per device x {acc.num_processes} "
            f"processes x {self.trainer.accumulation} accumulation; run dir {run.root}"
        )
        if cfg.track.log_with:
            acc.init_trackers(cfg.track.project_name, config=_flat(cfg.to_dict()))

    # ------------------------------------------------------------------------------------------------ phases

    def run(self) -> dict:
        cfg, run, acc = self.cfg, self.run_dir, self.acc
        rounds = []
        for r in range(cfg.prune.rounds + 1):
            rounds.append(
                self._phase(f"round {r}", r, run.round(r), self._prepare_round(r), "dense" if r == 0 else "imp")
            )
            if acc.is_main_process:
                atomic_write_json({"fingerprint": cfg.fingerprint(), "rounds": rounds, "complete": False}, run.results)
        controls = [
            self._phase(
                f"control {name}",
                cfg.prune.rounds + 1 + i,
                run.control(name),
                self._prepare_control(),
                f"control:{name}",
            )
            for i, name in enumerate(cfg.controls)
        ]
        summary = {
            "fingerprint": cfg.fingerprint(),
            "num_processes": acc.num_processes,
            "rounds": rounds,
            "controls": controls,
            "complete": False,
        }
        final = run.round(cfg.prune.rounds)
        if acc.is_main_process:
            load_parameters(self.plain, final / "trained.safetensors")
            export_ticket(self.plain, self.tokenizer, Mask.load(final / "mask.safetensors"), cfg, summary, run.ticket)
            summary["complete"] = True
            atomic_write_json(summary, run.results)
        acc.wait_for_everyone()
        if cfg.track.log_with:
            acc.end_training()
        summary["complete"] = True
        if cfg.export.push_to_hub and acc.is_main_process:  # after the barrier: a failed push leaves no rank waiting
            self._push()
        return summary

    def _push(self) -> None:
        repo, folder = self.cfg.export.push_to_hub, self.run_dir.ticket
        try:
            commit = push_ticket(folder, repo, private=self.cfg.export.private)
        except TicketError as err:
            hint = f"the ticket is saved: push it with `gpt-tickets push {folder} --repo-id {repo}`"
            raise TicketError(f"{err}; {hint}") from None
        self.acc.print(f"pushed the ticket to {commit.commit_url}")

    def _prepare_round(self, r: int) -> Callable[[], Mask]:
        """How round r starts afresh: its mask (saved before training, for resume) and its starting weights."""
        run = self.run_dir

        def prepare() -> Mask:
            if r == 0:
                load_parameters(self.plain, run.init)
                mask = self.full_mask
                if self.cfg.prune.rewind_step == 0 and self.acc.is_main_process:
                    save_parameters(self.plain, run.rewind)
            else:
                load_parameters(self.plain, run.round(r - 1) / "trained.safetensors")
                previous = Mask.load(run.round(r - 1) / "mask.safetensors")
                trained = {n: self.plain.get_parameter(n) for n in previous}  # pruned where they live, no copy
                mask = magnitude_prune(trained, previous, self.cfg.prune.fraction, self.cfg.prune.scope)
                load_parameters(self.plain, run.rewind)
            if self.acc.is_main_process:
                run.round(r).mkdir(exist_ok=True)
                mask.save(run.round(r) / "mask.safetensors")
            return mask

        return prepare

    def _prepare_control(self) -> Callable[[], Mask]:
        """The final mask on freshly re-initialised weights: what a ticket must beat."""

        def prepare() -> Mask:
            fresh = random_init(self.plain.config, seed=self.cfg.seed + 1)
            load_parameters(self.plain, {n: p.detach() for n, p in fresh.named_parameters()})
            return self._final_mask()

        return prepare

    def _final_mask(self) -> Mask:
        return Mask.load(self.run_dir.round(self.cfg.prune.rounds) / "mask.safetensors")

    def _phase(self, phase: str, index: int, folder: Path, prepare: Callable[[], Mask], kind: str) -> dict:
        """Train, evaluate and record one phase, resuming from its newest checkpoint when there is one."""
        cfg, acc, run = self.cfg, self.acc, self.run_dir
        done = folder / "result.json"
        if done.exists():
            return yaml.safe_load(done.read_text())
        acc.wait_for_everyone()
        start = self.checkpoints.restore(phase)
        if start == 0:
            mask = prepare()
        else:
            mask = self._final_mask() if kind.startswith("control") else Mask.load(folder / "mask.safetensors")
        self._check_ranks_agree(phase, mask)

        def on_step(step: int, loss: torch.Tensor) -> None:
            if phase == "round 0" and step == cfg.prune.rewind_step and acc.is_main_process:
                save_parameters(self.plain, run.rewind)
            if cfg.track.log_with and step % cfg.track.log_every == 0:
                lr = self.trainer.scheduler.get_last_lr()[0]
                acc.log({"train/loss": loss.item(), "train/lr": lr}, step=index * cfg.train.steps + step)
            if cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0 and step < cfg.train.steps:
                self.checkpoints.save(phase, step)

        round_number = min(index, cfg.prune.rounds)
        outcome = self.trainer.train(MaskedParameters(self.plain, mask), on_step, desc=phase, start_step=start)
        ppl = perplexity(
            self.trainer.model,
            self.val_ids,
            max_length=cfg.data.block_size,
            stride=cfg.eval.stride,
            batch_size=cfg.eval.batch_size,
            accelerator=acc,
        )
        result = _phase_result(kind, round_number, mask, self.model_type, outcome, ppl)
        acc.print(f"{phase}: sparsity {result['sparsity']:.1%}, val perplexity {result['val_perplexity']:.2f}")
        if cfg.track.log_with:
            acc.log(
                {"round/sparsity": result["sparsity"], "round/val_perplexity": result["val_perplexity"]},
                step=(index + 1) * cfg.train.steps,
            )
        if acc.is_main_process:
            folder.mkdir(parents=True, exist_ok=True)
            if not kind.startswith("control"):
                save_parameters(self.plain, folder / "trained.safetensors")
                previous = run.round(round_number - 1) / "trained.safetensors"
                if round_number > 0 and previous.exists():
                    previous.unlink()  # only the newest trained weights are needed to go on
            atomic_write_json(result, done)  # written last: the marker that the phase is complete
        self.checkpoints.clear()
        return result

    def _check_ranks_agree(self, phase: str, mask: Mask) -> None:
        """Every rank derives the mask itself from synchronised weights; a disagreement must stop the run."""
        if self.acc.num_processes == 1:
            return
        sums = gather_object([mask_checksum(mask)])
        if len(set(sums)) != 1:
            raise RuntimeError(f"{phase}: the processes hold different masks (checksums {sums}); stopping")


def _flat(tree: dict, prefix: str = "") -> dict:
    """Trackers want flat scalars: {"prune.rounds": 5, ...}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, int | float | str | bool) else str(value)
    return flat
