"""gpt_tickets: lottery tickets (IMP with rewinding) for GPT-2-style causal LMs on the Hugging Face stack."""

from .config import ConfigError, RunConfig, load_config
from .masks import Mask, MaskedParameters, sparsity_report
from .pruning import magnitude_prune

__all__ = [
    "ConfigError",
    "Mask",
    "MaskedParameters",
    "RunConfig",
    "find_ticket",
    "load_config",
    "magnitude_prune",
    "sparsity_report",
]


def find_ticket(*args, **kwargs):
    """Run IMP with rewinding (see ``gpt_tickets.lottery.find_ticket``); imported lazily to keep imports light."""
    from .lottery import find_ticket as _find_ticket

    return _find_ticket(*args, **kwargs)
