"""Typed run configuration: the schema (one dataclass per section) and its YAML loader."""

from ..errors import ConfigError
from .loading import apply_overrides, config_from_dict, load_config
from .schema import (
    TINY_GPT2,
    DataConfig,
    EvalConfig,
    ExportConfig,
    ModelConfig,
    PruneConfig,
    RunConfig,
    TrackConfig,
    TrainConfig,
)

__all__ = [
    "TINY_GPT2",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "ExportConfig",
    "ModelConfig",
    "PruneConfig",
    "RunConfig",
    "TrackConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "load_config",
]
