"""The run config's schema: one dataclass per section, every value checked in ``__post_init__``.

Configs are data, never code: a typo fails in the first second instead of after an hour of training. Values that
another layer owns are checked against that layer's own list (weight formats: the ticket format; branch names:
the branch registry, when a run starts).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..tickets.format import EXPORT_FORMATS, parse_nm

PRUNABLE_GROUPS = ("attention", "mlp", "embeddings")
SCOPES = ("global", "layer")
RETRAIN_MODES = ("rewind", "lr_rewind", "finetune")
SCORE_NAMES = ("magnitude", "normalized_magnitude")  # sparsity.scores.SCORES holds the functions
STRUCTURES = ("weights", "units", "nm")
ALLOCATIONS = ("global", "uniform")
INITS = ("scratch", "pretrained")
DATA_SOURCES = ("embedded", "hub", "files")
MIXED_PRECISION = ("no", "bf16", "fp16")
MAX_SEED = 2**32 - 1  # the data order seeds torch with seed x 1,000,003 + epoch, which must fit in 64 bits
MAX_BRANCH_SEED = 2**63 - 1  # a branch seed that only seeds torch.manual_seed: a signed 64-bit integer
TRACKERS = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "trackio")

# What changes no result, hence is not part of a run's identity (its fingerprint).
NOT_IN_IDENTITY = ("output_dir", "track", "export", "controls", "control_seeds", "train.checkpoint_every")
# Keys added since 0.2, with their defaults: left out of the identity while at them (RunConfig.identity).
ADDED_SINCE_0_2 = {
    ("prune", "rewind_points"): [],
    ("prune", "retrain"): "rewind",
    ("prune", "score"): "magnitude",
    ("prune", "group_fractions"): None,
    ("prune", "structure"): "weights",
    ("prune", "allocation"): None,
    ("prune", "nm"): None,
}

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


def check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def check_seeds(key: str, seeds: list[int]) -> None:
    """Branch seeds: at least one, each an integer torch.manual_seed takes, none twice (a seed names a folder)."""
    check(isinstance(seeds, list) and bool(seeds), f"{key}={seeds!r} lists no seed; give at least one")
    for seed in seeds:
        ok = isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= MAX_BRANCH_SEED
        check(ok, f"{key}={seeds}: seed {seed!r} is not allowed; choose integers 0..{MAX_BRANCH_SEED}")
    twice = next((seed for seed in seeds if seeds.count(seed) > 1), None)
    check(twice is None, f"{key}={seeds} lists seed {twice} twice; give distinct seeds")


def control_entry(entry: Any) -> tuple[str, dict[str, Any]]:
    """A ``controls`` entry as (branch name, its parameters beyond round and seed): ``name`` or ``{name: {...}}``."""
    if isinstance(entry, str):
        return entry, {}
    ok = isinstance(entry, dict) and len(entry) == 1 and all(isinstance(v, dict) for v in entry.values())
    check(
        ok,
        f"controls entry {entry!r} is not allowed; write a branch name or a one-key mapping of a branch name to its "
        "parameters, e.g. {rewind_step: {rewind: 50}}",
    )
    ((name, params),) = entry.items()
    return str(name), dict(params)


def check_rounds(key: str, value: Any, last: int) -> list[int]:
    """Rounds a branch runs from: ``all`` (every pruned round 1..``last``) or a non-empty list of distinct rounds
    0..``last``, as the list of rounds in order given."""
    if value == "all":
        return list(range(1, last + 1))
    ok = isinstance(value, list) and bool(value) and len(set(map(str, value))) == len(value)
    ok = ok and all(isinstance(r, int) and not isinstance(r, bool) and 0 <= r <= last for r in value)
    check(
        ok,
        f"{key}={value!r} is not allowed; write all (every pruned round 1..{last}) or a list of distinct rounds "
        f"0..{last}, e.g. [1, {last}]",
    )
    return list(value)


def control_rounds(name: str, params: dict[str, Any], last: int) -> tuple[list[int], dict[str, Any]]:
    """(the rounds a ``controls`` entry runs from, its branch's own parameters): the entry's ``rounds`` key
    (``check_rounds``), or without it the final round ``last``."""
    own = dict(params)
    rounds = own.pop("rounds", [last])
    return check_rounds(f"controls entry {name}: rounds", rounds, last), own


def parse_rounds(key: str, text: str) -> int | list[int] | str:
    """``--round`` text: one round (``3``), a comma-separated list (``1,3``) or ``all``."""
    if text.strip() == "all":
        return "all"
    pieces = text.split(",")
    check(
        all(re.fullmatch(r"\s*-?\d+\s*", piece) for piece in pieces),
        f"{key}={text!r} is not a round, a comma-separated list of rounds or all; e.g. {key} 2, {key} 1,3 or {key} all",
    )
    rounds = [int(piece) for piece in pieces]
    return rounds[0] if len(rounds) == 1 else rounds


def one_of(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    """A one-line ConfigError naming ``key``'s bad value, a close match if there is one, and what is allowed."""
    if value not in allowed:
        close = difflib.get_close_matches(str(value), allowed, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ConfigError(f"{key}={value!r} is not allowed; {hint}choose one of {', '.join(allowed)}")


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
        one_of("model.init", self.init, INITS)
        if self.init == "pretrained":
            check(bool(self.name_or_path), "model.name_or_path is required when model.init=pretrained")


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
        one_of("data.source", self.source, DATA_SOURCES)
        if self.source == "hub":
            check(bool(self.name), "data.name is required when data.source=hub (e.g. wikitext)")
        if self.source == "files":
            check(bool(self.train_files), "data.train_files must list at least one file when data.source=files")
            check(bool(self.validation_files), "data.validation_files must list at least one file (source=files)")
        check(self.block_size >= 2, f"data.block_size={self.block_size} must be >= 2")
        check(self.vocab_size >= 260, f"data.vocab_size={self.vocab_size} must be >= 260 (256 bytes + specials)")
        check(
            0 < self.validation_fraction < 1,
            f"data.validation_fraction={self.validation_fraction} must be in (0, 1)",
        )
        if self.max_validation_tokens is not None:
            check(self.max_validation_tokens >= 2, "data.max_validation_tokens must be >= 2 or null")


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
        check(
            micro >= 1 and self.batch_size % per_pass == 0,
            f"train.batch_size={self.batch_size} is not a multiple of micro_batch_size={micro} x {num_processes} "
            f"processes; choose a global batch divisible by the world size (and by micro_batch_size)",
        )
        return micro, self.batch_size // per_pass

    def __post_init__(self) -> None:
        check(self.steps >= 1, f"train.steps={self.steps} must be >= 1")
        check(self.batch_size >= 1, f"train.batch_size={self.batch_size} must be >= 1")
        if self.micro_batch_size is not None:
            check(self.micro_batch_size >= 1, f"train.micro_batch_size={self.micro_batch_size} must be >= 1")
        check(self.checkpoint_every >= 0, f"train.checkpoint_every={self.checkpoint_every} must be >= 0")
        check(math.isfinite(self.lr) and self.lr > 0, f"train.lr={self.lr} must be a finite number > 0")
        if self.max_grad_norm is not None:
            check(
                math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0,
                f"train.max_grad_norm={self.max_grad_norm} must be a finite number > 0, or null (no clipping)",
            )
        check(0 <= self.warmup_steps < self.steps, f"train.warmup_steps={self.warmup_steps} must be in [0, steps)")
        check(self.weight_decay >= 0, f"train.weight_decay={self.weight_decay} must be >= 0")
        if self.mixed_precision is not None:
            one_of("train.mixed_precision", self.mixed_precision, MIXED_PRECISION)


@dataclass
class PruneConfig:
    rounds: int = field(default=5, metadata={"help": "pruning rounds R after the dense round 0"})
    fraction: float = field(default=0.2, metadata={"help": "share p of the *remaining* weights pruned per round"})
    scope: str = field(default="global", metadata={"help": "global (all prunable weights) or layer (per matrix)"})
    rewind_step: int = field(default=0, metadata={"help": "k: 0 rewinds to init, k > 0 to step k of dense training"})
    retrain: str = field(
        default="rewind",
        metadata={
            "help": "how a pruned round retrains: rewind (weights to step k, the LR schedule again), lr_rewind (keep "
            "the trained weights, the LR schedule again; Renda et al. 2020) or finetune (keep the trained weights, "
            "train at round 0's final LR)"
        },
    )
    rewind_points: list[int] = field(
        default_factory=list,
        metadata={
            "help": "more steps of round 0 whose weights are saved (rewind_points/step_<k>.safetensors), for the "
            "rewind_step branch; the initial weights (step 0) and the rewind step's are always saved"
        },
    )
    groups: list[str] = field(
        default_factory=lambda: ["attention", "mlp"],
        metadata={"help": "weights to prune: attention, mlp, embeddings"},
    )
    score: str = field(
        default="magnitude",
        metadata={"help": "magnitude (|w|) or normalized_magnitude (|w| / RMS of its matrix's surviving weights)"},
    )
    group_fractions: dict[str, float] | None = field(
        default=None,
        metadata={
            "help": "{group: p} prunes each listed group on its own at its own p, e.g. {attention: 0.1, mlp: 0.3}; "
            "the unlisted groups are pruned together at `fraction` (None: all groups together)"
        },
    )
    structure: str = field(
        default="weights",
        metadata={
            "help": "what a round removes: weights (single entries), units (whole attention heads and MLP neurons, "
            "with their biases: p of the surviving heads and of the surviving neurons) or nm (N:M groups, see nm)"
        },
    )
    allocation: str | None = field(
        default=None,
        metadata={
            "help": "structure units: global (each kind of unit ranked over all layers) or uniform (the same count "
            "removed in every layer, so the ticket can shrink to a smaller standard model); None: global"
        },
    )
    nm: str | None = field(
        default=None,
        metadata={
            "help": "N:M pattern of structure nm, e.g. 2:4: each round tightens toward at most N of every M "
            "consecutive inputs of an output unit (round R keeps exactly N); M must divide every pruned weight's "
            "input size; required with structure nm, refused otherwise"
        },
    )

    def __post_init__(self) -> None:
        check(self.rounds >= 1, f"prune.rounds={self.rounds} must be >= 1")
        check(0 < self.fraction < 1, f"prune.fraction={self.fraction} must be in (0, 1), exclusive")
        one_of("prune.scope", self.scope, SCOPES)
        check(self.rewind_step >= 0, f"prune.rewind_step={self.rewind_step} must be >= 0")
        one_of("prune.retrain", self.retrain, RETRAIN_MODES)
        for step in self.rewind_points:
            check(step >= 0, f"prune.rewind_points={self.rewind_points}: step {step} must be >= 0")
        check(
            len(set(self.rewind_points)) == len(self.rewind_points),
            f"prune.rewind_points={self.rewind_points} lists a step twice",
        )
        check(bool(self.groups), f"prune.groups is empty; choose from {', '.join(PRUNABLE_GROUPS)}")
        for group in self.groups:
            one_of("prune.groups[]", group, PRUNABLE_GROUPS)
        one_of("prune.score", self.score, SCORE_NAMES)
        if self.group_fractions is not None:
            self._check_group_fractions(self.group_fractions)
        one_of("prune.structure", self.structure, STRUCTURES)
        if self.allocation is not None:
            one_of("prune.allocation", self.allocation, ALLOCATIONS)
            check(
                self.structure == "units",
                f"prune.allocation={self.allocation} applies to prune.structure=units only, not "
                f"{self.structure}; leave it out",
            )
        if self.structure == "units":
            self._check_units()
        if self.structure == "nm":
            self._check_nm()
        else:
            check(
                self.nm is None,
                f"prune.nm={self.nm!r} applies to prune.structure=nm only, not {self.structure}; leave it out or "
                "set prune.structure=nm",
            )

    def _check_nm(self) -> None:
        """N:M masks follow their own schedule to N of every M, the same in every matrix (``sparsity.nm``)."""
        check(self.nm is not None, "prune.nm is required with prune.structure=nm; write N:M, e.g. prune.nm=2:4")
        self.nm_pattern()
        check(
            self.group_fractions is None,
            "prune.group_fractions prunes groups at their own rates; prune.structure=nm prunes every matrix to the "
            "same N:M: leave group_fractions out",
        )

    def nm_pattern(self) -> tuple[int, int]:
        """(N, M) of ``nm`` (ConfigError, one line, when it is not N:M with 0 < N < M)."""
        try:
            return parse_nm(self.nm)
        except ValueError as err:
            raise ConfigError(f"prune.nm={err}") from None

    def _check_units(self) -> None:
        """Units are whole heads and neurons, ranked by their own score (``sparsity.units``) in pools per kind."""
        check(
            "embeddings" not in self.groups,
            f"prune.groups={self.groups} lists embeddings, which have no heads or neurons; with "
            "prune.structure=units choose from attention, mlp",
        )
        check(
            self.scope == "global",
            f"prune.scope={self.scope} ranks single weights; with prune.structure=units choose prune.allocation "
            "(global or uniform) instead",
        )
        check(
            self.score == "magnitude",
            f"prune.score={self.score} scores single weights; prune.structure=units scores whole units by their "
            "norm: leave prune.score out",
        )

    @property
    def unit_allocation(self) -> str:
        """How structure units spreads each round's removals over the layers: ``allocation``, global when unset."""
        return self.allocation or "global"

    def _check_group_fractions(self, group_fractions: dict[str, float]) -> None:
        check(bool(group_fractions), "prune.group_fractions is empty; list {group: fraction} or leave it null")
        for group, share in group_fractions.items():
            one_of("prune.group_fractions key", group, tuple(self.groups))
            check(
                isinstance(share, float) and 0 < share < 1,
                f"prune.group_fractions.{group}={share!r} must be a number in (0, 1), exclusive",
            )


@dataclass
class EvalConfig:
    batch_size: int = field(default=16, metadata={"help": "windows per forward pass"})
    stride: int | None = field(default=None, metadata={"help": "sliding-window stride (None: = data.block_size)"})

    def __post_init__(self) -> None:
        check(self.batch_size >= 1, f"eval.batch_size={self.batch_size} must be >= 1")
        if self.stride is not None:
            check(self.stride >= 1, f"eval.stride={self.stride} must be >= 1")


@dataclass
class TrackConfig:
    log_with: list[str] = field(
        default_factory=list, metadata={"help": "accelerate trackers, e.g. [tensorboard] or [wandb]; [] is off"}
    )
    project_name: str = field(default="gpt_tickets", metadata={"help": "tracker project / run group name"})
    log_every: int = field(default=10, metadata={"help": "log loss and lr every N optimizer steps"})

    def __post_init__(self) -> None:
        for tracker in self.log_with:
            one_of("track.log_with[]", tracker, TRACKERS)
        check(self.log_every >= 1, f"track.log_every={self.log_every} must be >= 1")


@dataclass
class ExportConfig:
    format: str = field(
        default="dense",
        metadata={
            "help": "dense (model.safetensors), compact (kept values + bitmaps), both, or shrink (the dense ticket and "
            "beside it ticket_shrunk/: a smaller standard model without the wholly pruned neurons and KV groups)"
        },
    )
    push_to_hub: str | None = field(
        default=None, metadata={"help": "Hub repo id (org/name) the ticket is pushed to at the end (None: no push)"}
    )
    private: bool = field(default=False, metadata={"help": "create the Hub repo private"})

    def __post_init__(self) -> None:
        one_of("export.format", self.format, EXPORT_FORMATS)
        if self.push_to_hub is not None:
            check(
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
    # list[Any]: an entry is a branch name or {name: {param: value}}, checked by control_entry (the loader's types
    # take no union of a string and a mapping)
    controls: list[Any] = field(
        default_factory=lambda: [
            "random_reinit",
            "random_prune",
            {"oneshot_magnitude": {"rounds": "all"}},
            {"wanda": {"rounds": "all"}},
            {"wanda": {"rounds": "all", "compare": "row"}},
        ],
        metadata={
            "help": "branches run on the final round at the end of find, each at every control seed: a name, or "
            "{name: {param: value}} for its parameters beyond round and seed, e.g. {rewind_step: {rewind: 50}}; "
            "`rounds: all` (every pruned round) or `rounds: [1, 3]` runs it from those rounds instead"
        },
    )
    control_seeds: list[int] | None = field(
        default=None,
        metadata={
            "help": "the seeds every control runs with, in order (null: the two after the run's, seed + 1 and "
            "seed + 2: a spread needs two)"
        },
    )

    def __post_init__(self) -> None:
        check(0 <= self.seed <= MAX_SEED, f"seed={self.seed} is not allowed; choose 0..{MAX_SEED}")
        check(
            self.prune.rewind_step <= self.train.steps,
            f"prune.rewind_step={self.prune.rewind_step} is beyond train.steps={self.train.steps}; "
            f"choose 0..{self.train.steps}",
        )
        for step in self.prune.rewind_points:
            check(
                step <= self.train.steps,
                f"prune.rewind_points={self.prune.rewind_points}: step {step} is beyond "
                f"train.steps={self.train.steps}; choose 0..{self.train.steps}",
            )
        controls = [json.dumps(control_entry(entry), sort_keys=True, default=str) for entry in self.controls]
        check(
            len(set(controls)) == len(controls),
            f"controls={self.controls} lists a branch twice with the same parameters",
        )
        for entry in self.controls:
            control_rounds(*control_entry(entry), self.prune.rounds)  # a bad `rounds` fails now, not after the run
        if self.control_seeds is not None:
            check_seeds("control_seeds", self.control_seeds)
        if self.eval.stride is not None:
            check(
                self.eval.stride <= self.data.block_size,
                f"eval.stride={self.eval.stride} must be <= data.block_size={self.data.block_size}",
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """Everything that affects results: the config less ``NOT_IN_IDENTITY`` (where results go, how often they
        are checkpointed, what logs them, how the ticket is shipped, which controls run at the end with which seeds:
        each a branch in its own folder), and less the keys added since 0.2 while they hold their default, so a run
        started before they existed keeps its identity and can be resumed."""
        payload = self.to_dict()
        for dotted in NOT_IN_IDENTITY:
            *sections, key = dotted.split(".")
            section = payload
            for name in sections:
                section = section[name]
            section.pop(key)
        for (section, key), default in ADDED_SINCE_0_2.items():
            if payload[section][key] == default:
                payload[section].pop(key)
        return payload

    def fingerprint(self) -> str:
        """Hash of ``identity()``, naming a run: a directory holds the run of one fingerprint."""
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:16]
