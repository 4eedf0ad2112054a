"""Write a ticket as a folder that plain ``transformers`` loads, plus its masks, settings and model card."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from ..config.schema import RunConfig
from ..data.tokenizer import save_pretrained_portable
from ..errors import TicketError, first_line
from ..io import atomic_write_json, atomic_write_text, replace_dir, share_like_other_files
from ..quiet import library_bars_off
from ..reporting.summary import Plot
from ..sparsity.masks import Mask, first_stray_weight, mask_checksum
from ..sparsity.report import sparsity_report
from .card import PLOTS_DIR, ShrunkExport, model_card
from .checks import check_nm_pattern
from .encoding import read_dense_weights, save_compact, save_packed_masks
from .format import COMPACT_FILE, DENSE_FILE, DENSE_INDEX_FILE, MASKS_FILE, TICKET_CONFIG_FILE, TicketConfig
from .shrink import check_out_dir, plan_shrink, shrunk_config, shrunk_dir, write_shrunk


def package_version() -> str:
    try:
        return version("gpt-tickets")
    except PackageNotFoundError:
        return "unknown"


def ticket_config(
    cfg: RunConfig,
    mask: Mask,
    model_type: str,
    weights_format: str,
    val_perplexity: float | None = None,
    dense_val_perplexity: float | None = None,
) -> TicketConfig:
    report = sparsity_report(mask, model_type)
    pretrained = cfg.model.init == "pretrained"
    return TicketConfig(
        weights_format=weights_format,
        base_model=cfg.model.name_or_path if pretrained else None,  # Hub id or folder
        base_model_revision=cfg.model.revision,
        base_config=None if pretrained else {"model_type": cfg.model.model_type, **cfg.model.config},
        seed=cfg.seed,
        rounds=cfg.prune.rounds,
        fraction_per_round=cfg.prune.fraction,
        scope=cfg.prune.scope,
        rewind_step=cfg.prune.rewind_step,
        groups=list(cfg.prune.groups),
        sparsity=report.summary(),
        per_layer_sparsity=report.per_layer,
        mask_checksum=mask_checksum(mask),
        gpt_tickets_version=package_version(),
        val_perplexity=val_perplexity,
        dense_val_perplexity=dense_val_perplexity,
        nm=cfg.prune.nm,
    )


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


def copy_plots(report_dir: Path | None, plots: Sequence[Plot], folder: Path) -> None:
    """The report's PNGs into the ticket's ``plots/``; one the report does not hold is one line."""
    if not plots:
        return
    if report_dir is None:
        raise TicketError("plots were given without the report folder that holds them")
    folder.mkdir()
    for plot in plots:
        try:
            shutil.copyfile(report_dir / plot.file, folder / plot.file)
        except OSError as err:
            reason = err.strerror or first_line(err)
            raise TicketError(f"cannot copy the plot {report_dir / plot.file} into the ticket: {reason}") from None


def shrunk_export(model: PreTrainedModel, mask: Mask, out_dir: Path) -> ShrunkExport:
    """What ``<out_dir>_shrunk/`` will hold, checked before anything is written (a mask that does not shrink, or a
    folder that is not an earlier shrunk export, is one line); its size counted on the meta device (no memory)."""
    plan = plan_shrink(model.config, mask)
    folder = shrunk_dir(out_dir)
    check_out_dir(folder, out_dir)
    with torch.device("meta"):
        smaller = AutoModelForCausalLM.from_config(shrunk_config(model.config, plan))
    return ShrunkExport(folder.name, model.config.model_type, model.num_parameters(), smaller.num_parameters())


@torch.no_grad()
def export_ticket(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    mask: Mask,
    cfg: RunConfig,
    out_dir: str | Path,
    *,
    history: str = "",
    val_perplexity: float | None = None,
    dense_val_perplexity: float | None = None,
    weights_format: str | None = None,
    report_dir: Path | None = None,
    plots: Sequence[Plot] = (),
) -> Path:
    """Write the ticket into ``out_dir`` atomically (a temp folder renamed into place).

    Args:
        history: a Markdown table of how the ticket was found (the run's rounds and controls), for the model card.
        val_perplexity: the ticket's validation perplexity (and ``dense_val_perplexity`` the dense model's), stated in
            ``ticket_config.json`` and the card's ``model-index``.
        report_dir, plots: the run's report folder and the plots in it (``gpt-tickets report``): copied into the
            ticket's ``plots/`` and shown in the model card, so they travel with the folder to the Hub.
        weights_format: ``dense`` (``model.safetensors``, zeros where pruned), ``compact`` (kept values and bitmaps
            only) or ``both``; default ``cfg.export.format``. ``shrink``: the ticket as ``dense`` and, beside it in
            ``<out_dir>_shrunk``, the smaller standard model without its wholly pruned units (``shrink.py``). The
            ticket stays a ticket (masks, ``load_ticket``, push, resume all read it); the shrunk model has no masks.
    """
    weights_format = weights_format or cfg.export.format
    out_dir = Path(out_dir)
    shrunk = shrunk_export(model, mask, out_dir) if weights_format == "shrink" else None
    if shrunk is not None:
        weights_format = "dense"
    stray = first_stray_weight(model, mask)
    if stray:
        raise TicketError(f"weight {stray[0]!r} is non-zero where its mask is 0; refusing to export")
    check_nm_pattern(mask, model.config.model_type, cfg.prune.nm)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with library_bars_off():
        write_weights(model, mask, tmp, weights_format)
    save_pretrained_portable(tokenizer, tmp)
    tcfg = ticket_config(cfg, mask, model.config.model_type, weights_format, val_perplexity, dense_val_perplexity)
    atomic_write_json(tcfg.to_dict(), tmp / TICKET_CONFIG_FILE)
    copy_plots(report_dir, plots, tmp / PLOTS_DIR)
    atomic_write_text(model_card(cfg, tcfg, history, plots, shrunk), tmp / "README.md")
    share_like_other_files(*(p for p in tmp.iterdir() if p.is_file()))  # save_pretrained's weights come 0600
    replace_dir(tmp, out_dir)
    if shrunk is not None:
        write_shrunk(model, tokenizer, mask, shrunk_dir(out_dir), f"The ticket `{out_dir.name}/` beside this", tcfg)
    return out_dir
