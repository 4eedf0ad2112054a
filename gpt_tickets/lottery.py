"""The lottery runner: the only place that knows the order of rounds.

Round 0 trains the dense model and stores the step-k weights on disk; each round r >= 1 prunes p of the surviving
weights by trained magnitude, rewinds the survivors to step k, retrains with a fresh optimizer and schedule, and
evaluates. Everything that crosses a round lives in the run directory, so a finished round is never recomputed
when the same command runs again, and controls are cheap branches off the saved masks.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from accelerate import Accelerator
from transformers import AutoTokenizer, PreTrainedModel

from .architectures import prunable_weights
from .config import ConfigError, RunConfig
from .data import group_into_blocks, load_pretrained_tokenizer, load_text_splits, tokenize_stream, train_tokenizer
from .evaluation import perplexity
from .export import export_ticket
from .io import atomic_write_json, atomic_write_text
from .masks import Mask, MaskedParameters, sparsity_report
from .models import (
    build_model,
    check_context,
    load_parameters,
    parameters_cpu,
    random_init,
    save_parameters,
    scratch_config,
)
from .pruning import magnitude_prune
from .training import Trainer


class RunDir:
    """Paths of a run; a directory belongs to one config fingerprint."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    config = property(lambda self: self.root / "config.yaml")
    results = property(lambda self: self.root / "results.json")
    tokenizer = property(lambda self: self.root / "tokenizer")
    rewind = property(lambda self: self.root / "rewind.safetensors")
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


def _round_result(kind: str, r: int, mask: Mask, model_type: str, outcome, ppl) -> dict:
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
    }


def find_ticket(cfg: RunConfig, accelerator: Accelerator | None = None) -> dict:
    """Run IMP with rewinding as ``cfg`` says; returns the content of ``results.json``."""
    acc = accelerator or Accelerator(
        mixed_precision=cfg.train.mixed_precision, gradient_accumulation_steps=cfg.train.gradient_accumulation_steps
    )
    run = RunDir(cfg.output_dir)
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

    with acc.main_process_first():
        train_blocks = group_into_blocks(train_texts, tokenizer, cfg.data.block_size)
        val_ids = tokenize_stream(val_texts, tokenizer)[: cfg.data.max_validation_tokens]
    weights = prunable_weights(model, cfg.prune.groups)
    model_type = model.config.model_type
    mask = Mask.ones_like(model, weights)
    trainer = Trainer(acc, model, train_blocks, cfg.train, cfg.seed)
    plain = acc.unwrap_model(trainer.model)
    acc.print(
        f"gpt_tickets: {sum(p.numel() for p in plain.parameters()):,} parameters, "
        f"{mask.numel():,} prunable; {len(train_blocks)} train blocks x {cfg.data.block_size} tokens; "
        f"global batch {cfg.train.batch_size * acc.num_processes * cfg.train.gradient_accumulation_steps} "
        f"({cfg.train.batch_size} per device x {acc.num_processes} processes x "
        f"{cfg.train.gradient_accumulation_steps} accumulation); run dir {run.root}"
    )

    def evaluate():
        return perplexity(
            trainer.model,
            val_ids,
            max_length=cfg.data.block_size,
            stride=cfg.eval.stride,
            batch_size=cfg.eval.batch_size,
            accelerator=acc,
        )

    def save_rewind_point(step: int) -> None:
        if step == cfg.prune.rewind_step and acc.is_main_process:
            save_parameters(plain, run.rewind)

    results: list[dict] = []
    for r in range(cfg.prune.rounds + 1):
        done = run.round(r) / "result.json"
        if done.exists():
            results.append(yaml.safe_load(done.read_text()))
            continue
        if r == 0:
            save_rewind_point(0)
            on_step = save_rewind_point
        else:
            load_parameters(plain, run.round(r - 1) / "trained.safetensors")
            mask = magnitude_prune(
                parameters_cpu(plain),
                Mask.load(run.round(r - 1) / "mask.safetensors"),
                cfg.prune.fraction,
                cfg.prune.scope,
            )
            acc.wait_for_everyone()  # the rewind point is on disk before anyone reads it
            load_parameters(plain, run.rewind)
            on_step = None
        outcome = trainer.train(MaskedParameters(plain, mask), on_step=on_step, desc=f"round {r}")
        result = _round_result("dense" if r == 0 else "imp", r, mask, model_type, outcome, evaluate())
        results.append(result)
        if acc.is_main_process:
            atomic_write_json({"fingerprint": cfg.fingerprint(), "rounds": results, "complete": False}, run.results)
        acc.print(f"round {r}: sparsity {result['sparsity']:.1%}, val perplexity {result['val_perplexity']:.2f}")
        if acc.is_main_process:
            run.round(r).mkdir(exist_ok=True)
            mask.save(run.round(r) / "mask.safetensors")
            save_parameters(plain, run.round(r) / "trained.safetensors")
            atomic_write_json(result, done)  # written last: the marker that round r is complete
            previous = run.round(r - 1) / "trained.safetensors"
            if r > 0 and previous.exists():
                previous.unlink()  # only the newest trained weights are needed to go on
        acc.wait_for_everyone()

    final = cfg.prune.rounds
    mask = Mask.load(run.round(final) / "mask.safetensors")
    controls = [_control(name, cfg, run, trainer, plain, mask, model_type, evaluate, acc) for name in cfg.controls]

    summary = {"fingerprint": cfg.fingerprint(), "rounds": results, "controls": controls, "complete": False}
    if acc.is_main_process:
        load_parameters(plain, run.round(final) / "trained.safetensors")
        export_ticket(plain, tokenizer, mask, cfg, summary, run.ticket)
        summary["complete"] = True
        atomic_write_json(summary, run.results)
    acc.wait_for_everyone()
    summary["complete"] = True
    return summary


def _control(
    name: str,
    cfg: RunConfig,
    run: RunDir,
    trainer: Trainer,
    plain: PreTrainedModel,
    mask: Mask,
    model_type: str,
    evaluate,
    acc: Accelerator,
) -> dict:
    """The final mask on freshly re-initialised weights, trained the same steps: what a ticket must beat."""
    done = run.control(name) / "result.json"
    if done.exists():
        return yaml.safe_load(done.read_text())
    fresh = random_init(plain.config, seed=cfg.seed + 1)
    load_parameters(plain, parameters_cpu(fresh))
    del fresh
    outcome = trainer.train(MaskedParameters(plain, mask), desc=f"control {name}")
    result = _round_result(f"control:{name}", cfg.prune.rounds, mask, model_type, outcome, evaluate())
    acc.print(f"control {name}: sparsity {result['sparsity']:.1%}, val perplexity {result['val_perplexity']:.2f}")
    if acc.is_main_process:
        done.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(result, done)
    return result
