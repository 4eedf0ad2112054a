"""Per-kind sparsity of a unit mask: a removed unit's masked bias counts in its module's kind, so a units run reports
(and the heatmap draws) the kinds of an unstructured run, with every masked entry counted."""

import re
from collections import defaultdict

import torch

from gpt_tickets.lottery.report_plots import layer_cells
from gpt_tickets.sparsity.masks import Mask
from gpt_tickets.sparsity.report import sparsity_report, weight_kind
from gpt_tickets.sparsity.units import prune_units, unit_parameters

from .test_units import GROUPS, tiny_gpt2

KINDS = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}


def unit_mask() -> Mask:
    """Half the heads and half the neurons, ranked over both layers (so the layers lose different counts)."""
    model = tiny_gpt2()
    full = Mask.ones_like(model, unit_parameters(model, GROUPS))
    return prune_units(dict(model.named_parameters()), full, model, 0.5, "global")


def pruned_and_size(mask: Mask, names: list[str]) -> tuple[int, int]:
    return sum(mask[n].numel() - int(mask[n].sum()) for n in names), sum(mask[n].numel() for n in names)


def test_a_unit_masks_biases_count_in_their_modules_kind():
    mask = unit_mask()
    assert any(name.endswith(".bias") for name in mask)  # the unit mask does mask biases
    by_kind: dict[str, list[str]] = defaultdict(list)
    for name in mask:
        by_kind[re.fullmatch(r"transformer\.h\.\d+\.(.+)\.(weight|bias)", name).group(1)].append(name)
    report = sparsity_report(mask, "gpt2")
    assert set(report.per_kind) == set(by_kind) == KINDS
    for kind, names in by_kind.items():
        pruned, size = pruned_and_size(mask, names)
        assert report.per_kind[kind] == pruned / size
    pruned, size = pruned_and_size(mask, list(mask))
    assert report.overall == pruned / size  # every masked entry, biases included, as before
    assert weight_kind("gpt2", "transformer.h.1.mlp.c_fc.bias") == "mlp.c_fc"
    assert weight_kind("llama", "model.layers.0.self_attn.q_proj.bias") == "self_attn.q_proj"


def test_the_heatmap_of_a_unit_mask_has_one_cell_per_layer_and_kind_biases_pooled_in():
    mask = unit_mask()
    cells, outside = layer_cells(mask)
    assert outside == {}
    for layer in ("0", "1"):
        assert set(cells[layer]) == KINDS | {"attention (all)", "MLP (all)"}
        for kind in KINDS:
            names = [n for n in mask if n.startswith(f"transformer.h.{layer}.{kind}.")]
            pruned, size = pruned_and_size(mask, names)
            assert len(names) == (2 if kind in ("attn.c_attn", "mlp.c_fc") else 1)  # output projections: no bias
            assert cells[layer][kind] == pruned / size
    assert cells["0"]["mlp.c_fc"] != cells["1"]["mlp.c_fc"]  # global allocation: the layers differ
    assert torch.equal(mask["transformer.h.0.mlp.c_fc.bias"], mask["transformer.h.0.mlp.c_fc.weight"][0])
