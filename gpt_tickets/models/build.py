"""Building the causal LM: from a config (seeded random init) or pre-trained weights, checked before any work."""

from __future__ import annotations

import difflib

import torch
from transformers import (
    CONFIG_MAPPING,
    AutoModelForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ..config.schema import ModelConfig
from ..errors import ConfigError, first_line


def build_model(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase | None, seed: int) -> PreTrainedModel:
    """A freshly initialised model (init=scratch, seeded, sized to ``tokenizer``) or pre-trained weights.

    Pre-trained weights are read from safetensors only and never with remote code.
    """
    if cfg.init == "pretrained":
        try:
            return _with_causal_loss(
                AutoModelForCausalLM.from_pretrained(
                    cfg.name_or_path, revision=cfg.revision, use_safetensors=True, trust_remote_code=False
                )
            )
        except Exception as err:  # transformers raises OSError, ValueError, EnvironmentError ... here
            raise ConfigError(
                f"model.name_or_path={cfg.name_or_path!r} cannot be loaded (offline cache, local folder with "
                f"safetensors weights, or the Hub): {first_line(err)}"
            ) from None
    assert tokenizer is not None, "init=scratch sizes the model to its tokenizer"
    config = scratch_config(
        cfg, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id
    )
    try:
        return _with_causal_loss(random_init(config, seed))
    except ConfigError as err:
        raise ConfigError(f"model.config={cfg.config} is not valid for {cfg.model_type}: {err}") from None


def _with_causal_loss(model: PreTrainedModel) -> PreTrainedModel:
    """Name the loss transformers falls back to anyway: GPT-2's class name names none, so the first forward would
    warn that ``loss_type=None`` is unrecognized (a warning newcomers read as an error)."""
    if getattr(model, "loss_type", None) is None:
        model.loss_type = "ForCausalLM"
    return model


def random_init(config: PretrainedConfig, seed: int) -> PreTrainedModel:
    """A seeded random initialisation; a config transformers cannot build (n_embd not divisible by n_head, ...) is a
    one-line ``ConfigError``."""
    torch.manual_seed(seed)
    try:
        return AutoModelForCausalLM.from_config(config)
    except Exception as err:  # transformers raises ValueError, ZeroDivisionError, AttributeError ... here
        raise ConfigError(f"transformers cannot build it: {first_line(err)}") from None


def scratch_config(cfg: ModelConfig, **overrides) -> PretrainedConfig:
    """The transformers config of an init=scratch model; bad ``model.config`` keys fail here, before any work."""
    if cfg.model_type not in CONFIG_MAPPING:
        close = difflib.get_close_matches(cfg.model_type, list(CONFIG_MAPPING), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ConfigError(f"model.model_type={cfg.model_type!r} is not a transformers model type{hint}")
    config_class = CONFIG_MAPPING[cfg.model_type]
    known = set(config_class().to_dict()) | set(config_class.attribute_map)
    for key in cfg.config:  # transformers configs accept any keyword silently: a typo would be ignored
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean model.config.{close[0]}?" if close else ""
            raise ConfigError(f"unknown key model.config.{key} for model_type {cfg.model_type}{hint}")
    try:
        return config_class(**{**cfg.config, **overrides})
    except (ValueError, TypeError) as err:
        raise ConfigError(f"model.config={cfg.config} is not valid for {cfg.model_type}: {err}") from None


def context_length(config: PretrainedConfig) -> int | None:
    """Longest input the model's positions allow (GPT-2 names it n_positions, Llama-like max_position_embeddings)."""
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)


def check_context(block_size: int, config: PretrainedConfig) -> None:
    context = context_length(config)
    if context is not None and block_size > context:
        raise ConfigError(f"data.block_size={block_size} exceeds the model's context of {context} tokens")
