"""Typed run configuration: YAML -> validated dataclasses, with dotted command-line overrides.

Configs are data, never code: every key is checked against the dataclass fields (with a did-you-mean) and every
value in ``__post_init__``, so a typo fails in the first second instead of after an hour of training.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PRUNABLE_GROUPS = ("attention", "mlp", "embeddings")
SCOPES = ("global", "layer")
INITS = ("scratch", "pretrained")
DATA_SOURCES = ("embedded", "hub", "files")
MIXED_PRECISION = ("no", "bf16", "fp16")
CONTROLS = ("random_reinit",)
WEIGHT_FORMATS = ("dense", "compact", "both")
TRACKERS = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "trackio")

# The embedded default: small enough that the whole ticket loop runs in minutes on 2 CPU cores.
TINY_GPT2 = {
    "n_layer": 4,
    "n_embd": 128,
    "n_head": 4,
    "n_positions": 128,
    "resid_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "attn_pdrop": 0.0,
}


class ConfigError(ValueError):
    """A bad value in a run config; its message is one line naming the value and what is allowed."""


def first_line(err: BaseException) -> str:
    """The first non-blank line of a library error, so the errors we raise from it stay one line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _one_of(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    _check(value in allowed, f"{key}={value!r} is not allowed; choose one of {', '.join(allowed)}")


@dataclass
class ModelConfig:
    init: str = field(default="scratch", metadata={"help": "scratch (random init from `config`) or pretrained"})
    name_or_path: str | None = field(
        default=None, metadata={"help": "Hub id or local folder of a causal LM; required when init=pretrained"}
    )
    model_type: str = field(default="gpt2", metadata={"help": "transformers model_type built when init=scratch"})
    config: dict[str, Any] = field(
        default_factory=lambda: dict(TINY_GPT2),
        metadata={"help": "keyword arguments of the transformers config (init=scratch)"},
    )
    revision: str | None = field(default=None, metadata={"help": "Hub revision of name_or_path"})

    def __post_init__(self) -> None:
        _one_of("model.init", self.init, INITS)
        if self.init == "pretrained":
            _check(bool(self.name_or_path), "model.name_or_path is required when model.init=pretrained")


@dataclass
class DataConfig:
    source: str = field(default="embedded", metadata={"help": "embedded (pydoc_data.topics), hub or files"})
    name: str | None = field(default=None, metadata={"help": "Hub dataset name, e.g. wikitext (source=hub)"})
    config_name: str | None = field(default=None, metadata={"help": "Hub dataset config, e.g. wikitext-2-raw-v1"})
    train_split: str = field(default="train", metadata={"help": "split used for training"})
    validation_split: str = field(default="validation", metadata={"help": "split used for perplexity per round"})
    train_files: list[str] = field(default_factory=list, metadata={"help": "local .txt/.json/.jsonl (source=files)"})
    validation_files: list[str] = field(default_factory=list, metadata={"help": "local validation files"})
    text_column: str = field(default="text", metadata={"help": "column holding the text"})
    block_size: int = field(default=128, metadata={"help": "tokens per training block and per evaluation window"})
    vocab_size: int = field(default=2048, metadata={"help": "size of the BPE tokenizer trained for init=scratch"})
    validation_fraction: float = field(
        default=0.1, metadata={"help": "share of embedded documents held out for validation"}
    )
    max_validation_tokens: int | None = field(
        default=None, metadata={"help": "score only the first N validation tokens per round (None: all)"}
    )

    def __post_init__(self) -> None:
        _one_of("data.source", self.source, DATA_SOURCES)
        if self.source == "hub":
            _check(bool(self.name), "data.name is required when data.source=hub (e.g. wikitext)")
        if self.source == "files":
            _check(bool(self.train_files), "data.train_files must list at least one file when data.source=files")
            _check(bool(self.validation_files), "data.validation_files must list at least one file (source=files)")
        _check(self.block_size >= 2, f"data.block_size={self.block_size} must be >= 2")
        _check(self.vocab_size >= 260, f"data.vocab_size={self.vocab_size} must be >= 260 (256 bytes + specials)")
        _check(
            0 < self.validation_fraction < 1,
            f"data.validation_fraction={self.validation_fraction} must be in (0, 1)",
        )
        if self.max_validation_tokens is not None:
            _check(self.max_validation_tokens >= 2, "data.max_validation_tokens must be >= 2 or null")


@dataclass
class TrainConfig:
    steps: int = field(default=200, metadata={"help": "optimizer steps per round (the same every round)"})
    batch_size: int = field(
        default=16, metadata={"help": "global batch: blocks per optimizer step, over all processes"}
    )
    micro_batch_size: int | None = field(
        default=None,
        metadata={"help": "blocks per device per forward pass (None: batch_size / processes); accumulation is derived"},
    )
    lr: float = field(default=1e-3, metadata={"help": "peak AdamW learning rate"})
    warmup_steps: int = field(default=0, metadata={"help": "linear warm-up steps, then linear decay to 0"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW decoupled weight decay"})
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "gradient clipping norm (None: off)"})
    mixed_precision: str | None = field(
        default=None, metadata={"help": "no, bf16 or fp16; None takes the accelerate config's choice"}
    )
    checkpoint_every: int = field(
        default=50,
        metadata={"help": "save a resumable checkpoint every N steps inside a round (0: only at round ends)"},
    )

    def batch_layout(self, num_processes: int) -> tuple[int, int]:
        """(micro-batch per device, gradient accumulation steps) giving exactly ``batch_size`` per optimizer step."""
        micro = self.micro_batch_size or self.batch_size // num_processes
        per_pass = micro * num_processes
        _check(
            micro >= 1 and self.batch_size % per_pass == 0,
            f"train.batch_size={self.batch_size} is not a multiple of micro_batch_size={micro} x {num_processes} "
            f"processes; choose a global batch divisible by the world size (and by micro_batch_size)",
        )
        return micro, self.batch_size // per_pass

    def __post_init__(self) -> None:
        _check(self.steps >= 1, f"train.steps={self.steps} must be >= 1")
        _check(self.batch_size >= 1, f"train.batch_size={self.batch_size} must be >= 1")
        if self.micro_batch_size is not None:
            _check(self.micro_batch_size >= 1, f"train.micro_batch_size={self.micro_batch_size} must be >= 1")
        _check(self.checkpoint_every >= 0, f"train.checkpoint_every={self.checkpoint_every} must be >= 0")
        _check(self.lr > 0, f"train.lr={self.lr} must be > 0")
        _check(0 <= self.warmup_steps < self.steps, f"train.warmup_steps={self.warmup_steps} must be in [0, steps)")
        _check(self.weight_decay >= 0, f"train.weight_decay={self.weight_decay} must be >= 0")
        if self.mixed_precision is not None:
            _one_of("train.mixed_precision", self.mixed_precision, MIXED_PRECISION)


@dataclass
class PruneConfig:
    rounds: int = field(default=5, metadata={"help": "pruning rounds R after the dense round 0"})
    fraction: float = field(default=0.2, metadata={"help": "share p of the *remaining* weights pruned per round"})
    scope: str = field(default="global", metadata={"help": "global (all prunable weights) or layer (per matrix)"})
    rewind_step: int = field(default=0, metadata={"help": "k: 0 rewinds to init, k > 0 to step k of dense training"})
    groups: list[str] = field(
        default_factory=lambda: ["attention", "mlp"],
        metadata={"help": "weights to prune: attention, mlp, embeddings"},
    )

    def __post_init__(self) -> None:
        _check(self.rounds >= 1, f"prune.rounds={self.rounds} must be >= 1")
        _check(0 < self.fraction < 1, f"prune.fraction={self.fraction} must be in (0, 1), exclusive")
        _one_of("prune.scope", self.scope, SCOPES)
        _check(self.rewind_step >= 0, f"prune.rewind_step={self.rewind_step} must be >= 0")
        _check(bool(self.groups), f"prune.groups is empty; choose from {', '.join(PRUNABLE_GROUPS)}")
        for group in self.groups:
            _one_of("prune.groups[]", group, PRUNABLE_GROUPS)


@dataclass
class EvalConfig:
    batch_size: int = field(default=16, metadata={"help": "windows per forward pass"})
    stride: int | None = field(default=None, metadata={"help": "sliding-window stride (None: = data.block_size)"})

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, f"eval.batch_size={self.batch_size} must be >= 1")
        if self.stride is not None:
            _check(self.stride >= 1, f"eval.stride={self.stride} must be >= 1")


@dataclass
class TrackConfig:
    log_with: list[str] = field(
        default_factory=list, metadata={"help": "accelerate trackers, e.g. [tensorboard] or [wandb]; [] is off"}
    )
    project_name: str = field(default="gpt_tickets", metadata={"help": "tracker project / run group name"})
    log_every: int = field(default=10, metadata={"help": "log loss and lr every N optimizer steps"})

    def __post_init__(self) -> None:
        for tracker in self.log_with:
            _one_of("track.log_with[]", tracker, TRACKERS)
        _check(self.log_every >= 1, f"track.log_every={self.log_every} must be >= 1")


@dataclass
class ExportConfig:
    format: str = field(
        default="dense",
        metadata={"help": "dense (model.safetensors), compact (kept values + bitmaps) or both"},
    )
    push_to_hub: str | None = field(
        default=None, metadata={"help": "Hub repo id (org/name) the ticket is pushed to at the end (None: no push)"}
    )
    private: bool = field(default=False, metadata={"help": "create the Hub repo private"})

    def __post_init__(self) -> None:
        _one_of("export.format", self.format, WEIGHT_FORMATS)
        if self.push_to_hub is not None:
            _check(
                self.push_to_hub.count("/") == 1 and all(self.push_to_hub.split("/")),
                f"export.push_to_hub={self.push_to_hub!r} is not a repo id; write it as org/name",
            )


@dataclass
class RunConfig:
    output_dir: str = field(default="runs/tiny", metadata={"help": "run directory (results, masks, ticket)"})
    seed: int = field(default=0, metadata={"help": "seed of init, data order and controls"})
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    controls: list[str] = field(
        default_factory=lambda: ["random_reinit"], metadata={"help": "control runs on the final mask"}
    )

    def __post_init__(self) -> None:
        _check(
            self.prune.rewind_step <= self.train.steps,
            f"prune.rewind_step={self.prune.rewind_step} is beyond train.steps={self.train.steps}; "
            f"choose 0..{self.train.steps}",
        )
        for control in self.controls:
            _one_of("controls[]", control, CONTROLS)
        if self.eval.stride is not None:
            _check(
                self.eval.stride <= self.data.block_size,
                f"eval.stride={self.eval.stride} must be <= data.block_size={self.data.block_size}",
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Hash of everything that affects results, naming a run's identity.

        Where results go, how often they are checkpointed, what logs them and how the ticket is shipped does not
        change them.
        """
        payload = self.to_dict()
        for key in ("output_dir", "track", "export"):
            payload.pop(key)
        payload["train"].pop("checkpoint_every")
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------- loading


def _dataclass_type(annotation: Any) -> type | None:
    return annotation if isinstance(annotation, type) and dataclasses.is_dataclass(annotation) else None


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check a YAML value against a field's type; ints are accepted for floats, nothing else is converted."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        inner = [a for a in options if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is list:
        _check(isinstance(value, list), f"{key}={value!r} must be a list")
        (item_type,) = typing.get_args(annotation)
        return [_coerce(f"{key}[]", v, item_type) for v in value]
    if origin is dict:
        _check(isinstance(value, dict), f"{key}={value!r} must be a mapping")
        return dict(value)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if annotation in (int, float, str, bool):
        ok = isinstance(value, annotation) and not (annotation is int and isinstance(value, bool))
        _check(ok, f"{key}={value!r} must be of type {annotation.__name__}")
        return value
    return value


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    _check(isinstance(data, dict), f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; allowed: {', '.join(names)}"
            raise ConfigError(f"unknown config key {prefix}{key}{hint}")
        sub = _dataclass_type(hints[key])
        kwargs[key] = _build(sub, value, f"{prefix}{key}.") if sub else _coerce(prefix + key, value, hints[key])
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    return _build(RunConfig, data)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        _check(isinstance(node, dict), f"cannot set {dotted}: {part} is not a section")
    node[leaf] = value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--prune.rounds 3`` / ``--prune.rounds=3`` style overrides; values are parsed as YAML scalars."""
    data = json.loads(json.dumps(data))
    i = 0
    while i < len(overrides):
        token = overrides[i]
        _check(token.startswith("--") and len(token) > 2, f"unexpected argument {token!r}; use --section.key VALUE")
        key = token[2:]
        if "=" in key:
            key, raw = key.split("=", 1)
            i += 1
        else:
            _check(i + 1 < len(overrides), f"override --{key} has no value")
            raw = overrides[i + 1]
            i += 2
        _set_dotted(data, key, yaml.safe_load(raw))
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config and apply dotted overrides.

    Without a path the dataclass defaults are used: they *are* the embedded tiny default (configs/tiny.yaml
    spells them out, and a test keeps the two equal), so an installed wheel needs no data files.
    """
    text = "{}"
    if path is not None:
        path = Path(path)
        _check(path.is_file(), f"config file {str(path)!r} does not exist")
        text = path.read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {first_line(err)}") from None
    return config_from_dict(apply_overrides(data, overrides or []))
