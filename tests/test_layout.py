"""The package's layers: every import points down (cli -> lottery -> train, eval -> tickets -> sparsity -> ...)."""

import ast
from pathlib import Path

import gpt_tickets

ROOT = Path(gpt_tickets.__file__).parent

# Higher imports lower, never the reverse; modules of one subpackage may import each other.
LAYERS = {
    "cli": 7,
    "lottery": 6,
    "train": 5,
    "eval": 5,
    "tickets": 4,
    "sparsity": 3,
    "models": 2,
    "data": 2,
    "config": 1,
    "reporting": 1,
    "errors": 0,
    "io": 0.25,
    "quiet": 0.25,
    "threads": 0.25,
    "tickets.format": 0.5,  # the format's names and allowed values: a leaf, so config can check against them
}


def layer(module: str) -> tuple[str, int]:
    """(unit, layer) of a dotted module path inside gpt_tickets, e.g. 'tickets.load' -> ('tickets', 4)."""
    if module in LAYERS:
        return module, LAYERS[module]
    top = module.split(".")[0]
    return top, LAYERS[top]


def imports(path: Path) -> list[str]:
    """Modules of gpt_tickets that ``path`` imports, as dotted paths relative to the package."""
    here = path.relative_to(ROOT).with_suffix("").parts
    package = here[:-1] if here[-1] != "__init__" else here[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                parts = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.startswith("gpt_tickets"):
                parts = node.module.split(".")[1:]
            else:
                continue
            targets = [".".join(parts)] if node.module else [".".join([*parts, a.name]) for a in node.names]
            found += [t for t in targets if t]
    return found


def test_every_import_points_down():
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        if rel.parts[0] in ("__init__",) or rel.parts[0] == "eval" and "metrics" in rel.parts:
            continue  # the package's lazy front door; the evaluate module is loaded by path
        me = ".".join(p for p in rel.parts if p != "__init__")
        my_unit, my_layer = layer(me)
        for target in imports(path):
            unit, their = layer(target)
            if unit != my_unit and their >= my_layer:
                wrong.append(f"{me} -> {target}")
    assert wrong == []


def test_every_module_belongs_to_a_layer():
    units = {path.relative_to(ROOT).parts[0].removesuffix(".py") for path in ROOT.rglob("*.py")}
    assert units - {"__init__"} <= set(LAYERS)
