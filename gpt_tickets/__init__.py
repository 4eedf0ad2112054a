"""gpt_tickets: lottery tickets (IMP with rewinding) for GPT-2-style causal LMs on the Hugging Face stack."""

from importlib import import_module
from typing import Any

from .config import RunConfig, load_config
from .errors import ConfigError, TicketError

# Imported on first use: they pull in torch/transformers/accelerate, which `import gpt_tickets` should not pay for.
_LAZY = {
    "find_ticket": "lottery.imp",
    "run_branch": "lottery.branches.runner",
    "report": "lottery.combine",
    "RunResults": "lottery.results",
    "load_ticket": "tickets.load",
    "load_ticket_tokenizer": "tickets.load",
    "export_ticket": "tickets.export",
    "push_ticket": "tickets.push",
    "attach_masks": "sparsity.apply",
    "detach_masks": "sparsity.apply",
    "MaskedParameters": "sparsity.apply",
    "Mask": "sparsity.masks",
    "magnitude_prune": "sparsity.select",
    "sparsity_report": "sparsity.report",
}

__all__ = ["ConfigError", "RunConfig", "TicketError", "load_config", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'gpt_tickets' has no attribute {name!r}")
