"""gpt_tickets: lottery tickets (IMP with rewinding) for GPT-2-style causal LMs on the Hugging Face stack."""

from importlib import import_module
from typing import Any

from .config import ConfigError, RunConfig, load_config
from .masks import Mask, MaskedParameters, sparsity_report
from .pruning import magnitude_prune
from .ticket_format import TicketError

# Imported on first use: they pull in transformers/accelerate, which `import gpt_tickets` should not pay for.
_LAZY = {
    "find_ticket": "lottery",
    "load_ticket": "ticket",
    "load_ticket_tokenizer": "ticket",
    "attach_masks": "ticket",
    "detach_masks": "ticket",
    "export_ticket": "export",
    "push_ticket": "push",
}

__all__ = [
    "ConfigError",
    "Mask",
    "MaskedParameters",
    "RunConfig",
    "TicketError",
    "load_config",
    "magnitude_prune",
    "sparsity_report",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'gpt_tickets' has no attribute {name!r}")
