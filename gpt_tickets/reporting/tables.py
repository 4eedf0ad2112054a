"""Markdown tables, one formatter for the terminal, the model card and reports. Pure string work: no results I/O."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

COLUMNS = ("round", "run", "sparsity", "attention", "MLP", "val ppl", "steps", "seconds")


class Row(Protocol):
    """A result that is one row of ``results_table`` (rounds and branches are)."""

    def row(self) -> list[str]: ...


def markdown_table(rows: list[list[str]]) -> str:
    """A Markdown table (first row: header) with aligned columns, readable as plain text too."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def results_table(results: Iterable[Row]) -> str:
    """A Markdown table of rounds and branches, one row each."""
    return markdown_table([list(COLUMNS)] + [r.row() for r in results])


def per_layer_table(per_layer: dict[str, dict[str, float]]) -> str:
    """Layers as rows, weight groups (attention, MLP, ...) as columns."""
    groups = sorted({g for layer in per_layer.values() for g in layer})
    rows = [["layer", *groups]]
    rows += [[layer, *(f"{per_layer[layer].get(g, 0.0):.1%}" for g in groups)] for layer in sorted(per_layer, key=int)]
    return markdown_table(rows)
