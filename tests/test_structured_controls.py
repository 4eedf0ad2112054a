"""random_prune on structured tickets: a random mask in the ticket's structure with the ticket's counts (heads and
neurons per layer; entries per group of M), so it answers "is the mask special?" for units and N:M too."""

import pytest
import torch

from gpt_tickets.config import load_config
from gpt_tickets.lottery import find_ticket
from gpt_tickets.lottery.branches import get_branch
from gpt_tickets.lottery.results import RunResults
from gpt_tickets.lottery.run_dir import RunDir
from gpt_tickets.models.families import input_dim
from gpt_tickets.sparsity.masks import Mask
from gpt_tickets.sparsity.nm import first_nm_violation, prune_nm, random_groups_like
from gpt_tickets.sparsity.units import layouts_of, prune_units, random_units_like, surviving_units, unit_parameters
from tests.test_branches import finished_round
from tests.test_units import GROUPS, MODELS, UNITS_RUN

M = 4


def unit_ticket(model: torch.nn.Module) -> Mask:
    """Two global rounds at p = 0.5: layers keep different counts, the case a per-layer control must match."""
    weights = dict(model.named_parameters())
    mask = Mask.ones_like(model, unit_parameters(model, GROUPS))
    for _ in range(2):
        mask = prune_units(weights, mask, model, 0.5, allocation="global")
    return mask


def per_layer_counts(mask: Mask, model: torch.nn.Module) -> dict[str, list[int]]:
    return {layout.kind: surviving_units(mask, layout).sum(1).tolist() for layout in layouts_of(model.config, GROUPS)}


def group_counts(mask: Mask, model_type: str) -> dict[str, torch.Tensor]:
    """Kept entries of every group of M consecutive inputs, per weight."""
    return {name: keep.movedim(input_dim(model_type, name), -1).reshape(-1, M).sum(-1) for name, keep in mask.items()}


def same(a: Mask, b: Mask) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize("family", list(MODELS))
def test_random_units_keep_every_layers_counts_of_heads_and_neurons(family):
    model = MODELS[family]()
    ticket = unit_ticket(model)
    counts = per_layer_counts(ticket, model)
    assert any(len(set(layer_counts)) > 1 for layer_counts in counts.values()), counts  # the global cut differs
    randomized = random_units_like(ticket, model.config, seed=1)
    assert randomized.keys() == ticket.keys()
    assert all(randomized[n].shape == ticket[n].shape and randomized[n].dtype == torch.bool for n in ticket)
    assert per_layer_counts(randomized, model) == counts  # surviving_units also proves it is a unit mask
    assert not same(randomized, ticket)
    assert same(random_units_like(ticket, model.config, seed=1), randomized)
    assert not same(random_units_like(ticket, model.config, seed=2), randomized)
    # Equal unit counts per layer mean equal kept entries in every weight and bias, which a bias left unmasked breaks.
    assert all(int(randomized[n].sum()) == int(ticket[n].sum()) for n in ticket)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_random_groups_keep_every_groups_count(family):
    model = MODELS[family]()
    weights = dict(model.named_parameters())
    mask = Mask.ones_like(model, [w for w in unit_parameters(model, GROUPS) if w.name.endswith(".weight")])
    ticket = prune_nm(weights, mask, model.config.model_type, 2, M, round=2, rounds=3)
    counts = group_counts(ticket, model.config.model_type)
    assert all(set(c.tolist()) == {2, 3} for c in counts.values())  # groups differ: round 2 of 3 toward 2:4
    randomized = random_groups_like(ticket, model.config.model_type, M, seed=1)
    assert randomized.keys() == ticket.keys()
    new_counts = group_counts(randomized, model.config.model_type)
    assert all(torch.equal(new_counts[n], counts[n]) for n in counts)
    assert first_nm_violation(randomized, model.config.model_type, 3, M) is None
    assert all(not torch.equal(randomized[n], ticket[n]) for n in ticket)
    assert same(random_groups_like(ticket, model.config.model_type, M, seed=1), randomized)
    assert not same(random_groups_like(ticket, model.config.model_type, M, seed=2), randomized)


def test_random_groups_refuse_an_m_that_does_not_divide_the_inputs():
    model = MODELS["gpt2"]()
    mask = Mask.ones_like(model, [w for w in unit_parameters(model, ["mlp"]) if w.name.endswith(".weight")])
    with pytest.raises(ValueError, match="which M=5 does not divide"):
        random_groups_like(mask, "gpt2", 5, seed=0)


def test_random_prune_of_an_unstructured_run_is_the_per_matrix_draw(micro_run):
    """Unstructured runs keep exactly the masks random_prune drew before structured controls existed."""
    from gpt_tickets.lottery.branches.random_prune import random_mask_like

    branch = get_branch("random_prune")
    source = finished_round(micro_run, 2)
    assert same(branch.start(source, branch.Params(round=2, seed=3))[1], random_mask_like(source.mask(), 3))


@pytest.mark.parametrize(
    "structure",
    [["--prune.structure", "units"], ["--prune.structure", "nm", "--prune.nm", "2:4", "--prune.rounds", "3"]],
    ids=["units", "nm"],
)
def test_a_structured_run_trains_random_prune_in_its_structure(tmp_path, structure):
    root = tmp_path / "run"
    cfg = load_config(None, [*UNITS_RUN, *structure, "--controls", "[random_prune]", "--output_dir", str(root)])
    find_ticket(cfg)
    run = RunDir(root)
    ticket = run.round_mask(cfg.prune.rounds)
    [result] = RunResults.load(root / "results.json").branches
    assert (result.branch, result.round) == ("random_prune", cfg.prune.rounds)
    control = Mask.load(run.branch("random_prune", f"round_{cfg.prune.rounds}-seed_1") / "mask.safetensors")
    assert not same(control, ticket)
    assert result.per_layer_sparsity == RunResults.load(root / "results.json").rounds[-1].per_layer_sparsity
    if cfg.prune.structure == "units":
        model = finished_round(root, cfg.prune.rounds).model
        assert per_layer_counts(control, model) == per_layer_counts(ticket, model)
    else:
        control_counts, ticket_counts = group_counts(control, "gpt2"), group_counts(ticket, "gpt2")
        assert all(torch.equal(control_counts[n], ticket_counts[n]) for n in ticket)
