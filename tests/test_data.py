"""Data loading, tokenizer training and token tensors: observable properties, offline, in seconds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from gpt_tickets.config import ConfigError, DataConfig
from gpt_tickets.data import (
    EOS_TOKEN,
    group_into_blocks,
    load_pretrained_tokenizer,
    load_text_splits,
    tokenize_stream,
    train_tokenizer,
)
from gpt_tickets.errors import DataError

VOCAB = 512


@pytest.fixture(scope="module")
def splits() -> tuple[list[str], list[str]]:
    return load_text_splits(DataConfig())


@pytest.fixture(scope="module")
def tokenizer(splits: tuple[list[str], list[str]]) -> PreTrainedTokenizerBase:
    return train_tokenizer(splits[0], VOCAB)


def _one_line(err: pytest.ExceptionInfo[DataError]) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def _write_jsonl(path: Path, rows: list[dict[str, object]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


# ---------------------------------------------------------------------------------------------- embedded split


def test_data_error_is_a_config_error() -> None:
    assert issubclass(DataError, ConfigError)


def test_embedded_split_is_deterministic_disjoint_and_sized(splits: tuple[list[str], list[str]]) -> None:
    train, validation = splits
    assert load_text_splits(DataConfig()) == (train, validation)
    assert train and validation and all(doc.strip() for doc in train + validation)
    assert not set(train) & set(validation)
    from pydoc_data.topics import topics

    n = len(train) + len(validation)
    assert n == len({text for text in topics.values() if text.strip()})  # pages sharing one text count once
    assert abs(len(validation) - 0.1 * n) <= 1


@pytest.mark.parametrize("fraction", [0.01, 0.25, 0.5])
def test_embedded_split_follows_fraction_and_spreads(fraction: float) -> None:
    from pydoc_data.topics import topics

    train, validation = load_text_splits(DataConfig(validation_fraction=fraction))
    ordered = list(dict.fromkeys(topics[key] for key in sorted(topics)))
    assert len(validation) == max(1, round(len(ordered) * fraction))
    assert sorted(train + validation, key=ordered.index) == ordered
    positions = sorted(ordered.index(doc) for doc in validation)
    if len(positions) > 1:  # spread across the corpus, not one contiguous slice
        assert positions[0] < len(ordered) // 2 < positions[-1]


# ------------------------------------------------------------------------------------------------- tokenizer


def test_tokenizer_has_exact_vocab_and_one_special(tokenizer: PreTrainedTokenizerBase) -> None:
    assert len(tokenizer) == VOCAB
    assert tokenizer.backend_tokenizer.get_vocab_size() == VOCAB
    assert tokenizer.eos_token == tokenizer.bos_token == tokenizer.unk_token == EOS_TOKEN
    assert tokenizer.all_special_tokens == [EOS_TOKEN]
    assert tokenizer.model_max_length > 0


def test_tokenizer_is_deterministic(splits: tuple[list[str], list[str]], tokenizer: PreTrainedTokenizerBase) -> None:
    again = train_tokenizer(splits[0], VOCAB)
    assert again.get_vocab() == tokenizer.get_vocab()
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()


def test_tokenizer_is_identical_in_a_fresh_process(tokenizer: PreTrainedTokenizerBase) -> None:
    """Rust hash maps are seeded per process, so in-process repeats alone would not catch order dependence."""
    script = (
        "from gpt_tickets.config import DataConfig; from gpt_tickets.data import load_text_splits, train_tokenizer; "
        f"print(train_tokenizer(load_text_splits(DataConfig())[0], {VOCAB}).backend_tokenizer.to_str())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip() == tokenizer.backend_tokenizer.to_str()


def test_tokenizer_round_trips_and_is_lossless(
    tmp_path: Path, splits: tuple[list[str], list[str]], tokenizer: PreTrainedTokenizerBase
) -> None:
    text = splits[1][0][:2000] + "  tabs\tand  spaces\n\nnon-ASCII: héllo, Grüße, 日本語, 😀 <|endoftext|>x"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded(text)["input_ids"] == ids
    assert len(loaded) == VOCAB and loaded.eos_token_id == tokenizer.eos_token_id
    assert loaded.model_max_length == tokenizer.model_max_length


def test_tokenizer_refuses_a_vocab_the_texts_cannot_fill() -> None:
    with pytest.raises(DataError, match="vocab_size=5000") as err:
        train_tokenizer(["tiny corpus"], 5000)
    _one_line(err)
    with pytest.raises(DataError, match="vocab_size=100") as err:
        train_tokenizer(["tiny corpus"], 100)
    _one_line(err)


def test_unloadable_pretrained_tokenizer_raises() -> None:
    with pytest.raises(DataError, match="'no-such-org/no-such-model'.*offline or from the Hub") as err:
        load_pretrained_tokenizer("no-such-org/no-such-model", revision="main")
    _one_line(err)


def test_pretrained_tokenizer_loads_from_a_folder(tmp_path: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    tokenizer.save_pretrained(tmp_path)
    loaded = load_pretrained_tokenizer(str(tmp_path))
    assert loaded("def f(x): return x")["input_ids"] == tokenizer("def f(x): return x")["input_ids"]


# --------------------------------------------------------------------------------------------- token tensors


def test_blocks_are_the_prefix_of_the_eos_separated_stream(
    splits: tuple[list[str], list[str]], tokenizer: PreTrainedTokenizerBase
) -> None:
    texts = ["", *splits[0][:10], ""]
    block_size = 64
    blocks = group_into_blocks(texts, tokenizer, block_size)
    stream = [i for doc in texts if doc for i in tokenizer(doc)["input_ids"] + [tokenizer.eos_token_id]]
    assert blocks.dtype == torch.long
    assert blocks.shape == (len(stream) // block_size, block_size)
    assert blocks.flatten().tolist() == stream[: blocks.numel()]


def test_too_short_corpus_raises(tokenizer: PreTrainedTokenizerBase) -> None:
    n_tokens = len(tokenizer("short text")["input_ids"]) + 1
    with pytest.raises(DataError, match=f"{n_tokens} tokens.*block_size=128") as err:
        group_into_blocks(["short text"], tokenizer, 128)
    _one_line(err)
    with pytest.raises(DataError, match="0 tokens") as err:
        group_into_blocks([], tokenizer, 128)
    _one_line(err)


def test_stream_is_the_double_newline_join(
    splits: tuple[list[str], list[str]], tokenizer: PreTrainedTokenizerBase
) -> None:
    texts = splits[1]
    stream = tokenize_stream(texts, tokenizer)
    assert stream.dtype == torch.long and stream.dim() == 1
    assert stream.tolist() == tokenizer("\n\n".join(texts))["input_ids"]
    assert tokenizer.eos_token_id not in stream.tolist()


def test_too_short_stream_raises(tokenizer: PreTrainedTokenizerBase) -> None:
    with pytest.raises(DataError, match="0 tokens") as err:
        tokenize_stream([""], tokenizer)
    _one_line(err)


# ------------------------------------------------------------------------------------------------ local files


def test_txt_and_jsonl_files_load_in_order(tmp_path: Path) -> None:
    first = "Line one\nline two\n\n\nA paragraph after blank lines.\n"
    (tmp_path / "a.txt").write_text(first)
    (tmp_path / "b.txt").write_text("second file")
    _write_jsonl(tmp_path / "c.jsonl", [{"body": "row one", "id": 1}, {"body": "row two", "id": 2}])
    (tmp_path / "d.json").write_text(json.dumps([{"body": "json row"}]))
    (tmp_path / "v.txt").write_text("held out")
    cfg = DataConfig(
        source="files",
        train_files=[str(tmp_path / name) for name in ("a.txt", "c.jsonl", "d.json", "b.txt")],
        validation_files=[str(tmp_path / "v.txt")],
        text_column="body",
    )
    train, validation = load_text_splits(cfg)
    assert train == [first, "row one", "row two", "json row", "second file"]  # a .txt file is one document
    assert validation == ["held out"]


def _files_cfg(tmp_path: Path, train: str, text_column: str = "text") -> DataConfig:
    (tmp_path / "ok.txt").write_text("validation text")
    return DataConfig(
        source="files", train_files=[train], validation_files=[str(tmp_path / "ok.txt")], text_column=text_column
    )


def test_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="'x.txt' does not exist") as err:
        load_text_splits(_files_cfg(tmp_path, "x.txt"))
    _one_line(err)


def test_unsupported_extension_raises(tmp_path: Path) -> None:
    (tmp_path / "table.csv").write_text("text\nhello\n")
    with pytest.raises(DataError, match=r"table\.csv.*'\.csv'.*allowed: \.txt, \.json, \.jsonl") as err:
        load_text_splits(_files_cfg(tmp_path, str(tmp_path / "table.csv")))
    _one_line(err)


def test_missing_text_column_raises(tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "rows.jsonl", [{"content": "hello", "id": 1}])
    with pytest.raises(DataError, match="'body'.*columns present: content, id") as err:
        load_text_splits(_files_cfg(tmp_path, str(tmp_path / "rows.jsonl"), text_column="body"))
    _one_line(err)


def test_malformed_json_raises(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="bad.json.*JSON parse error") as err:
        load_text_splits(_files_cfg(tmp_path, str(tmp_path / "bad.json")))
    _one_line(err)


def test_empty_files_raise(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(DataError, match="empty.txt.*no text") as err:
        load_text_splits(_files_cfg(tmp_path, str(tmp_path / "empty.txt")))
    _one_line(err)


# ---------------------------------------------------------------------------------------------------- hub path


@pytest.fixture(scope="module")
def local_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset folder with train/validation files, which load_dataset reads exactly like a Hub repository."""
    folder = tmp_path_factory.mktemp("hub_dataset")
    _write_jsonl(folder / "train.jsonl", [{"text": t} for t in ["first row", "", "second row"]])
    _write_jsonl(folder / "validation.jsonl", [{"text": "held-out row"}])
    return folder


def test_hub_path_loads_a_local_dataset_folder(local_dataset: Path) -> None:
    train, validation = load_text_splits(DataConfig(source="hub", name=str(local_dataset)))
    assert train == ["first row", "", "second row"]  # rows kept as loaded, as in the perplexity guide
    assert validation == ["held-out row"]


def test_hub_missing_split_and_column_raise(local_dataset: Path) -> None:
    with pytest.raises(DataError, match="split 'test'.*offline or from the Hub") as err:
        load_text_splits(DataConfig(source="hub", name=str(local_dataset), validation_split="test"))
    _one_line(err)
    with pytest.raises(DataError, match="'body'.*columns present: text") as err:
        load_text_splits(DataConfig(source="hub", name=str(local_dataset), text_column="body"))
    _one_line(err)


def test_unloadable_dataset_raises() -> None:
    cfg = DataConfig(source="hub", name="no-such-org/no-such-dataset", config_name="raw")
    with pytest.raises(
        DataError, match=r"cannot load dataset 'no-such-org/no-such-dataset' \(config 'raw', split 'train'\)"
    ) as err:
        load_text_splits(cfg)
    _one_line(err)
