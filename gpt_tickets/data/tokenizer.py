"""Tokenizers: a GPT-2-style byte-level BPE trained on the run's own text, or a pre-trained model's."""

from __future__ import annotations

import filecmp
import json
import shutil
from pathlib import Path

import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from ..errors import DataError
from ..io import replace_dir
from .sources import data_error_line

EOS_TOKEN = "<|endoftext|>"
# GPT-2's context length; callers that know their model's n_positions may override it on the tokenizer.
DEFAULT_MODEL_MAX_LENGTH = 1024


def train_tokenizer(
    texts: list[str], vocab_size: int, model_max_length: int = DEFAULT_MODEL_MAX_LENGTH
) -> transformers.PreTrainedTokenizerFast:
    """Train a GPT-2-style byte-level BPE with exactly ``vocab_size`` tokens; pass the train split only.

    Byte-level means every string encodes and decodes losslessly; ``<|endoftext|>`` is the one special token and
    serves as bos, eos and unk. Training is deterministic for the same texts.
    """
    if vocab_size < 257:
        raise DataError(f"vocab_size={vocab_size} must be >= 257 (256 byte symbols + {EOS_TOKEN})")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    if tokenizer.get_vocab_size() != vocab_size:
        raise DataError(
            f"the training texts yield only {tokenizer.get_vocab_size()} BPE tokens, fewer than vocab_size="
            f"{vocab_size}; use more text or a smaller data.vocab_size"
        )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        model_max_length=model_max_length,
    )


def load_pretrained_tokenizer(name_or_path: str, revision: str | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of a pretrained model; never runs repository code."""
    try:
        return AutoTokenizer.from_pretrained(name_or_path, revision=revision, trust_remote_code=False)
    except Exception as err:  # not found, offline, gated, broken files: all mean "cannot load"
        at = f" at revision {revision!r}" if revision else ""
        raise DataError(
            f"cannot load tokenizer {name_or_path!r}{at} offline or from the Hub: {data_error_line(err)}"
        ) from err


def save_pretrained_portable(tokenizer: PreTrainedTokenizerBase, folder: Path) -> None:
    """``save_pretrained``, naming a tokenizer class that transformers 4.x knows too.

    transformers 5 names a tokenizer built from a ``tokenizers`` object ``TokenizersBackend``, a class 4.x lacks
    (it refuses the folder); ``PreTrainedTokenizerFast`` reads the same ``tokenizer.json`` in both.
    """
    tokenizer.save_pretrained(folder)
    config_file = Path(folder) / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config.pop("backend", None)
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, folder: Path) -> None:
    """Save into ``folder`` atomically, and only when what is there differs (missing, damaged, another tokenizer)."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_pretrained_portable(tokenizer, tmp)
    names = sorted(p.name for p in tmp.iterdir())
    same = folder.is_dir() and sorted(p.name for p in folder.iterdir()) == names
    if same and filecmp.cmpfiles(tmp, folder, names, shallow=False)[0] == names:
        shutil.rmtree(tmp)
    else:
        replace_dir(tmp, folder)
