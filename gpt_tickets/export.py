"""Write a ticket as a folder that plain ``transformers`` loads, plus its masks, settings and model card."""

from __future__ import annotations

import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .config import RunConfig
from .io import atomic_write_json, atomic_write_text, replace_dir
from .masks import Mask, first_stray_weight, mask_checksum, sparsity_report
from .model_card import model_card
from .ticket_format import (
    COMPACT_FILE,
    DENSE_FILE,
    DENSE_INDEX_FILE,
    FORMAT_VERSION,
    MASKS_FILE,
    TICKET_CONFIG_FILE,
    read_dense_weights,
    save_compact,
    save_packed_masks,
)


def package_version() -> str:
    try:
        return version("gpt-tickets")
    except PackageNotFoundError:
        return "unknown"


def ticket_config(cfg: RunConfig, mask: Mask, model_type: str, weights_format: str) -> dict:
    report = sparsity_report(mask, model_type)
    return {
        "format_version": FORMAT_VERSION,
        "weights_format": weights_format,
        "base_model": cfg.model.name_or_path if cfg.model.init == "pretrained" else None,  # Hub id or folder
        "base_model_revision": cfg.model.revision,
        "base_config": None
        if cfg.model.init == "pretrained"
        else {"model_type": cfg.model.model_type, **cfg.model.config},
        "seed": cfg.seed,
        "rounds": cfg.prune.rounds,
        "fraction_per_round": cfg.prune.fraction,
        "scope": cfg.prune.scope,
        "rewind_step": cfg.prune.rewind_step,
        "groups": cfg.prune.groups,
        "sparsity": {k: report[k] for k in ("overall", "attention", "mlp", "embeddings") if k in report},
        "per_layer_sparsity": report["per_layer"],
        "mask_checksum": mask_checksum(mask),
        "gpt_tickets_version": package_version(),
    }


def write_weights(model: PreTrainedModel, mask: Mask, folder: Path, weights_format: str) -> None:
    """The model (``save_pretrained``) and its masks in ``folder``, the weights dense, compact or both."""
    model.save_pretrained(folder, safe_serialization=True)
    save_packed_masks(mask, folder / MASKS_FILE)
    if weights_format != "dense":
        # Encoded from the files save_pretrained wrote, so decoding gives back exactly those tensors.
        save_compact(read_dense_weights(folder), mask, folder / COMPACT_FILE)
    if weights_format == "compact":
        for dense_file in [DENSE_FILE, DENSE_INDEX_FILE, *(p.name for p in folder.glob("model-*.safetensors"))]:
            (folder / dense_file).unlink(missing_ok=True)


@torch.no_grad()
def export_ticket(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    mask: Mask,
    cfg: RunConfig,
    summary: dict,
    out_dir: str | Path,
    weights_format: str | None = None,
) -> Path:
    """Write the ticket into ``out_dir`` atomically (a temp folder renamed into place).

    Args:
        weights_format: ``dense`` (``model.safetensors``, zeros where pruned), ``compact`` (kept values and bitmaps
            only) or ``both``; default ``cfg.export.format``.
    """
    weights_format = weights_format or cfg.export.format
    out_dir = Path(out_dir)
    stray = first_stray_weight(model, mask)
    if stray:
        raise ValueError(f"weight {stray[0]!r} is non-zero where its mask is 0; refusing to export")
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write_weights(model, mask, tmp, weights_format)
    tokenizer.save_pretrained(tmp)
    tcfg = ticket_config(cfg, mask, model.config.model_type, weights_format)
    atomic_write_json(tcfg, tmp / TICKET_CONFIG_FILE)
    atomic_write_text(model_card(cfg, summary, tcfg), tmp / "README.md")
    replace_dir(tmp, out_dir)
    return out_dir
