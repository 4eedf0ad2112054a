"""The per-round table, one formatter for the terminal and the model card."""

from __future__ import annotations

COLUMNS = ("round", "run", "sparsity", "attention", "MLP", "val ppl", "steps", "seconds")


def markdown_table(rows: list[list[str]]) -> str:
    """A Markdown table (first row: header) with aligned columns, readable as plain text too."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _row(result: dict) -> list[str]:
    return [
        str(result["round"]),
        result["kind"],
        f"{result['sparsity']:.1%}",
        f"{result['attention_sparsity']:.1%}",
        f"{result['mlp_sparsity']:.1%}",
        f"{result['val_perplexity']:.2f}",
        str(result["train_steps"]),
        f"{result['wall_seconds']:.1f}",
    ]


def results_table(summary: dict) -> str:
    """A Markdown table of every round and control in ``summary`` (the content of results.json)."""
    return markdown_table([list(COLUMNS)] + [_row(r) for r in summary["rounds"] + summary.get("controls", [])])


def per_layer_table(per_layer: dict[str, dict[str, float]]) -> str:
    """Layers as rows, weight groups (attention, MLP, ...) as columns."""
    groups = sorted({g for layer in per_layer.values() for g in layer})
    rows = [["layer", *groups]]
    rows += [[layer, *(f"{per_layer[layer].get(g, 0.0):.1%}" for g in groups)] for layer in sorted(per_layer, key=int)]
    return markdown_table(rows)
