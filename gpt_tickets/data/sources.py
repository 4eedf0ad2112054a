"""Text corpora: the embedded default, Hub datasets and local files, one text per document.

Every failure the user can cause (a missing file, an unreachable dataset, an empty column) raises ``DataError``
with a one-line message, so a bad config fails before any training starts.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import datasets

from ..config.schema import DataConfig
from ..errors import DataError, first_line

# One file is one builder: the "text" builder for plain text, the "json" builder for JSON / JSON lines.
FILE_BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json"}


def data_error_line(err: BaseException) -> str:
    """The first non-blank line of an error, so wrapped library errors keep DataError messages to one line."""
    first = first_line(err)
    # datasets wraps the real reason (e.g. a JSON parse error) in a generic "error while generating" message.
    if isinstance(err, datasets.exceptions.DatasetGenerationError) and err.__cause__ is not None:
        return f"{first}: {data_error_line(err.__cause__)}"
    return first


# ------------------------------------------------------------------------------------------------------ texts


def _embedded_splits(validation_fraction: float) -> tuple[list[str], list[str]]:
    """Split pydoc_data.topics by document; sorted keys and index arithmetic make it identical on every run."""
    try:
        from pydoc_data.topics import topics
    except ImportError as err:  # some distributions strip it from the standard library
        raise DataError(
            f"data.source='embedded' needs the standard library's pydoc_data: {data_error_line(err)}"
        ) from err
    # dict.fromkeys drops exact duplicates ("if" and "else" share a page), which would leak into validation.
    docs = list(dict.fromkeys(topics[key] for key in sorted(topics) if topics[key].strip()))
    n = len(docs)
    n_val = min(max(1, round(n * validation_fraction)), n - 1)
    # Evenly spaced picks (the middle of each of n_val equal strides) spread validation across the corpus.
    val_idx = {(2 * i + 1) * n // (2 * n_val) for i in range(n_val)}
    train = [doc for i, doc in enumerate(docs) if i not in val_idx]
    validation = [doc for i, doc in enumerate(docs) if i in val_idx]
    return train, validation


def _column_texts(ds: datasets.Dataset, column: str, what: str) -> list[str]:
    """Pull one string column out of a dataset; nulls become empty texts, other types are refused."""
    if column not in ds.column_names:
        raise DataError(f"{what} has no text column {column!r}; columns present: {', '.join(ds.column_names)}")
    dtype = getattr(ds.features[column], "dtype", None)
    if dtype not in ("string", "large_string", "null"):
        raise DataError(f"{what} column {column!r} holds {ds.features[column]}, not text; choose a string column")
    return [text or "" for text in ds.data.column(column).to_pylist()]


def _require_text(texts: list[str], what: str) -> list[str]:
    if not any(text.strip() for text in texts):
        raise DataError(f"{what} contains no text ({len(texts)} empty rows); point it at non-empty data")
    return texts


def load_hub_split(name: str, config_name: str | None, split: str, text_column: str = "text") -> list[str]:
    """One split of a Hub dataset (or a local dataset folder), one text per row, empty rows kept."""
    where = f"config {config_name!r}, split {split!r}" if config_name else f"split {split!r}"
    try:
        ds = datasets.load_dataset(name, config_name, split=split)
    except Exception as err:  # not found, offline, no such config or split: all mean "cannot load"
        raise DataError(
            f"cannot load dataset {name!r} ({where}) offline or from the Hub: {data_error_line(err)}"
        ) from err
    what = f"dataset {name!r} ({where})"
    return _require_text(_column_texts(ds, text_column, what), what)


def _builder_for(path: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FILE_BUILDERS:
        raise DataError(f"data file {path!r} has unsupported extension {suffix!r}; allowed: {', '.join(FILE_BUILDERS)}")
    if not Path(path).is_file():
        raise DataError(f"data file {path!r} does not exist")
    return FILE_BUILDERS[suffix]


def load_files(paths: list[str], text_column: str = "text") -> list[str]:
    """Texts of local files in the order given, one ``load_dataset`` call per run of files sharing a builder.

    A .txt file is one document, read verbatim (``sample_by="document"``): per-line rows would put an eos after
    every line, and paragraph splitting alters blank lines, so ``"\\n\\n".join`` would no longer give back the file.
    """
    builders = [_builder_for(path) for path in paths]  # every path checked before the first (slow) load
    texts: list[str] = []
    for builder, group in itertools.groupby(zip(builders, paths, strict=True), key=lambda pair: pair[0]):
        files = [path for _, path in group]
        options: dict[str, Any] = {"sample_by": "document"} if builder == "text" else {}
        try:
            ds = datasets.load_dataset(builder, data_files=files, split="train", **options)
        except Exception as err:  # malformed JSON, bad encoding, ...
            raise DataError(f"cannot read data files {files!r} as {builder}: {data_error_line(err)}") from err
        column = "text" if builder == "text" else text_column
        texts.extend(_column_texts(ds, column, f"data files {files!r}"))
    return _require_text(texts, f"data files {paths!r}")


def load_text_splits(cfg: DataConfig) -> tuple[list[str], list[str]]:
    """(train_texts, validation_texts), one text per document.

    Hub and file rows are kept as loaded (empty rows included), so ``"\\n\\n".join`` reproduces the Hugging Face
    perplexity guide on line-based sets such as wikitext; empty rows add no tokens downstream.
    """
    if cfg.source == "embedded":
        return _embedded_splits(cfg.validation_fraction)
    if cfg.source == "hub":
        return (
            load_hub_split(cfg.name, cfg.config_name, cfg.train_split, cfg.text_column),
            load_hub_split(cfg.name, cfg.config_name, cfg.validation_split, cfg.text_column),
        )
    if cfg.source == "files":
        return load_files(cfg.train_files, cfg.text_column), load_files(cfg.validation_files, cfg.text_column)
    raise DataError(f"data.source={cfg.source!r} is not allowed; choose one of embedded, hub, files")
