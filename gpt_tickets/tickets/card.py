"""The ticket's README.md: Hub metadata (tags, datasets, model-index with the perplexity) and a body a reader can
act on: how the ticket was found, the per-round results, its sparsity per layer and how to load it both ways."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import EvalResult, ModelCardData

from ..config.schema import RunConfig
from ..reporting.summary import Plot
from ..reporting.tables import per_layer_table
from .format import COMPACT_FILE, MASKS_FILE, TICKET_CONFIG_FILE, TicketConfig

TAGS = ["lottery-ticket", "sparse", "pruned", "gpt_tickets"]
PLOTS_DIR = "plots"  # the report's PNGs inside the ticket folder: they travel with it to the Hub


@dataclass(frozen=True)
class ShrunkExport:
    """The smaller model ``export.format: shrink`` writes beside the ticket, as the ticket's card names it: a reader
    of the ticket alone would not know it exists, nor that it is the one to deploy."""

    folder: str  # its name, beside the ticket's folder
    model_type: str
    parameters_before: int  # the ticket's
    parameters_after: int


def _dataset(cfg: RunConfig) -> tuple[str, str]:
    """(type, human name) of the validation data, for the model-index."""
    if cfg.data.source == "hub":
        return cfg.data.name, cfg.data.name + (f" ({cfg.data.config_name})" if cfg.data.config_name else "")
    if cfg.data.source == "embedded":
        return "pydoc_data.topics", "pydoc_data.topics (Python standard library)"
    return "local-files", ", ".join(Path(f).name for f in cfg.data.validation_files)


def hub_base_model(cfg: RunConfig) -> str | None:
    """The Hub id the ticket was pruned from; None for a model trained from scratch or read from a local folder."""
    name = cfg.model.name_or_path
    if cfg.model.init != "pretrained" or name is None or Path(name).exists():
        return None
    return name


def loads_with_transformers(tcfg: TicketConfig) -> bool:
    return tcfg.weights_format in ("dense", "both")


def card_metadata(cfg: RunConfig, tcfg: TicketConfig) -> ModelCardData:
    dataset_type, dataset_name = _dataset(cfg)
    split = cfg.data.validation_split if cfg.data.source != "files" else "validation"
    return ModelCardData(
        # Only a folder with dense weights loads with plain transformers (and runs in the Hub's widget).
        library_name="transformers" if loads_with_transformers(tcfg) else None,
        pipeline_tag="text-generation" if loads_with_transformers(tcfg) else None,
        base_model=hub_base_model(cfg),
        tags=TAGS,
        datasets=[cfg.data.name] if cfg.data.source == "hub" else None,
        model_name=f"lottery ticket ({tcfg.sparsity['overall']:.1%} sparse)",
        eval_results=None
        if tcfg.val_perplexity is None
        else [
            EvalResult(
                task_type="text-generation",
                dataset_type=dataset_type,
                dataset_name=dataset_name,
                dataset_config=cfg.data.config_name if cfg.data.source == "hub" else None,
                dataset_split=split,
                metric_type="perplexity",
                metric_name="Perplexity",
                metric_value=round(tcfg.val_perplexity, 4),
            )
        ],
    )


def _perplexity(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.2f}"


def _plots_section(plots: Sequence[Plot]) -> str:
    """The report's plots, linked relative to the card (``plots/<file>``), each with what it shows."""
    if not plots:
        return ""
    images = "\n\n".join(p.markdown(f"{PLOTS_DIR}/") for p in plots)
    return f"## How it compares\n\nFrom the run's report (`gpt-tickets report`):\n\n{images}\n\n"


def _shrunk_section(shrunk: ShrunkExport | None) -> str:
    if shrunk is None:
        return ""
    before, after = shrunk.parameters_before, shrunk.parameters_after
    return f"""## A smaller model

The export (`export.format: shrink`) also wrote `../{shrunk.folder}/` beside this folder (not part of it, nor of
its Hub repo): this ticket without its wholly pruned units, a plain `{shrunk.model_type}` model of
{before:,} -> {after:,} parameters ({1 - after / before:.1%} fewer). It loads with plain
`AutoModelForCausalLM.from_pretrained`, without masks or gpt_tickets, and its logits equal this ticket's (to float
summation order); its own README.md lists the units removed from each layer.

"""


def model_card(
    cfg: RunConfig,
    tcfg: TicketConfig,
    history: str = "",
    plots: Sequence[Plot] = (),
    shrunk: ShrunkExport | None = None,
) -> str:
    """The README.md of a ticket; ``history`` is the run's table of rounds and controls (Markdown), ``plots`` the
    report's PNGs, which the caller has copied into the folder's ``plots/``; ``shrunk`` the smaller model written
    beside it (``export.format: shrink``), if any."""
    dense_perplexity = _perplexity(tcfg.dense_val_perplexity)
    repo = cfg.export.push_to_hub or "path/to/ticket"
    rewind = "initialisation" if cfg.prune.rewind_step == 0 else f"step {cfg.prune.rewind_step} of dense training"
    origin = f"`{cfg.model.name_or_path}`" if cfg.model.init == "pretrained" else "a model trained from scratch"
    has_dense = loads_with_transformers(tcfg)
    transformers_way = (
        f"""```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("{repo}")  # a plain model, zeros where pruned
tokenizer = AutoTokenizer.from_pretrained("{repo}")
```"""
        if has_dense
        else "This export holds only the compact encoding: load it with gpt_tickets (below)."
    )
    compact_line = (
        f"- `{COMPACT_FILE}`: the pruned weights as their kept values only (with the masks, the compact encoding).\n"
        if tcfg.weights_format != "dense"
        else ""
    )
    plots_line = f"- `{PLOTS_DIR}/`: the run's report plots (PNG), shown above.\n" if plots else ""
    return f"""---
{card_metadata(cfg, tcfg).to_yaml()}
---

# Lottery ticket: {tcfg.sparsity["overall"]:.1%} sparse, validation perplexity {_perplexity(tcfg.val_perplexity)}

A sparse subnetwork of {origin} found by gpt_tickets (a Python package) with iterative
magnitude pruning and rewinding (Frankle & Carbin 2018; Frankle et al. 2020): {cfg.prune.rounds} rounds, each
pruning {cfg.prune.fraction:.0%} of the remaining {", ".join(cfg.prune.groups)} weights ({cfg.prune.scope} scope) by
magnitude, rewinding the survivors to {rewind} and retraining {cfg.train.steps} steps (seed {cfg.seed}). The dense
model reached {dense_perplexity}. Perplexity on the validation data of
{_dataset(cfg)[1]}, windows of {cfg.data.block_size} tokens.

{history}

Sparsity per layer:

{per_layer_table(tcfg.per_layer_sparsity)}

{_plots_section(plots)}## Load it

With transformers alone:

{transformers_way}

With gpt_tickets, the masks attached, so that further fine-tuning keeps the ticket sparse (the weights and masks
are checked on load):

```python
from gpt_tickets import load_ticket
model = load_ticket("{repo}")
```

{_shrunk_section(shrunk)}## Files

- `{TICKET_CONFIG_FILE}`: how the ticket was found, its sparsity overall, per group and per layer.
- `{MASKS_FILE}`: one bit-packed mask per pruned weight, named after the weight (1 = kept).
{compact_line}{plots_line}"""
