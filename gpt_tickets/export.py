"""Write a ticket as a folder that plain ``transformers`` loads, plus its masks, config and model card."""

from __future__ import annotations

import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from huggingface_hub import ModelCardData
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .config import RunConfig
from .io import atomic_write_json, replace_dir
from .masks import Mask, sparsity_report
from .report import per_layer_table, results_table

FORMAT_VERSION = 1
MASKS_FILE = "ticket_masks.safetensors"
TICKET_CONFIG_FILE = "ticket_config.json"


def package_version() -> str:
    try:
        return version("gpt-tickets")
    except PackageNotFoundError:
        return "unknown"


def ticket_config(cfg: RunConfig, mask: Mask, model_type: str) -> dict:
    report = sparsity_report(mask, model_type)
    return {
        "format_version": FORMAT_VERSION,
        "base_model": cfg.model.name_or_path if cfg.model.init == "pretrained" else None,
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
        "gpt_tickets_version": package_version(),
    }


def _dataset_name(cfg: RunConfig) -> str:
    if cfg.data.source == "hub":
        return cfg.data.name
    return "pydoc_data.topics (Python standard library)" if cfg.data.source == "embedded" else "local files"


def model_card(cfg: RunConfig, summary: dict, tcfg: dict) -> str:
    final = summary["rounds"][-1]
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="text-generation",
        base_model=tcfg["base_model"],
        tags=["lottery-ticket", "sparse", "pruned", "gpt_tickets"],
        datasets=[cfg.data.name] if cfg.data.source == "hub" else None,
    )
    rewind = "initialisation" if cfg.prune.rewind_step == 0 else f"step {cfg.prune.rewind_step} of dense training"
    return f"""---
{data.to_yaml()}
---

# Lottery ticket at {final["sparsity"]:.1%} sparsity

Found by [gpt_tickets](https://pypi.org/project/gpt-tickets/) with iterative magnitude pruning: {cfg.prune.rounds}
rounds, each pruning {cfg.prune.fraction:.0%} of the remaining {", ".join(cfg.prune.groups)} weights
({cfg.prune.scope} scope) by magnitude, rewinding the survivors to {rewind}, and retraining
{cfg.train.steps} steps. Validation perplexity on {_dataset_name(cfg)} with windows of {cfg.data.block_size} tokens.

{results_table(summary)}

Sparsity of the ticket per layer:

{per_layer_table(tcfg["per_layer_sparsity"])}

## Load it

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("<this folder or repo>")  # zeros where pruned
tokenizer = AutoTokenizer.from_pretrained("<this folder or repo>")
```

The masks are in `{MASKS_FILE}` (one boolean tensor per pruned weight, named after it), the settings in
`{TICKET_CONFIG_FILE}`.
"""


@torch.no_grad()
def export_ticket(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    mask: Mask,
    cfg: RunConfig,
    summary: dict,
    out_dir: str | Path,
) -> Path:
    """Write the ticket into ``out_dir`` atomically (a temp folder renamed into place)."""
    out_dir = Path(out_dir)
    for name, m in mask.items():
        if model.get_parameter(name).detach().cpu()[~m].any():
            raise ValueError(f"weight {name!r} is non-zero where its mask is 0; refusing to export")
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    mask.save(tmp / MASKS_FILE)
    tcfg = ticket_config(cfg, mask, model.config.model_type)
    atomic_write_json(tcfg, tmp / TICKET_CONFIG_FILE)
    (tmp / "README.md").write_text(model_card(cfg, summary, tcfg))
    replace_dir(tmp, out_dir)
    return out_dir
