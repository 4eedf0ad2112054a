"""Unit masks (prune.structure=units): whole heads and neurons, exactly the entries the architecture gives them."""

import math
from itertools import product

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from gpt_tickets.cli import main
from gpt_tickets.config import load_config
from gpt_tickets.io import load_tensors
from gpt_tickets.lottery import find_ticket
from gpt_tickets.lottery.run_dir import RunDir
from gpt_tickets.models import families
from gpt_tickets.sparsity.apply import MaskedParameters
from gpt_tickets.sparsity.masks import Mask, mask_checksum
from gpt_tickets.sparsity.units import layouts_of, prune_units, surviving_units, unit_parameters, units_to_remove
from gpt_tickets.tickets.load import load_ticket
from tests.conftest import MICRO, error_lines

GROUPS = ["attention", "mlp"]
LLAMA_SIZES = dict(hidden_size=16, intermediate_size=24, num_hidden_layers=2, vocab_size=50)


def tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=16, n_head=4, n_inner=24, n_positions=16, vocab_size=50)
    return GPT2LMHeadModel(config).eval()


def tiny_llama() -> LlamaForCausalLM:
    """Grouped-query attention (4 heads share 2 KV heads) with every bias the family allows."""
    torch.manual_seed(0)
    config = LlamaConfig(
        **LLAMA_SIZES, num_attention_heads=4, num_key_value_heads=2, attention_bias=True, mlp_bias=True
    )
    return LlamaForCausalLM(config).eval()


def tiny_qwen2() -> Qwen2ForCausalLM:
    """One KV head per head (a group is one head); q/k/v biases, none on o_proj."""
    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(**LLAMA_SIZES, num_attention_heads=2, num_key_value_heads=2)).eval()


MODELS = {"gpt2": tiny_gpt2, "llama": tiny_llama, "qwen2": tiny_qwen2}


Entry = tuple[str, torch.Tensor, str]


def entries(model: torch.nn.Module, kind: str, layer: int, unit: int) -> list[Entry]:
    """By hand, from the transformers source: (parameter name, bool tensor of the unit's entries there, side) with
    side ``pattern`` (a head's queries and keys), ``in`` (computes the unit's value) or ``out`` (writes it back)."""
    config, params = model.config, dict(model.named_parameters())
    found: list[Entry] = []

    def select(name: str, side: str, *index) -> None:
        if name in params:
            chosen = torch.zeros_like(params[name], dtype=torch.bool)
            chosen[index] = True
            found.append((name, chosen, side))

    if config.model_type == "gpt2":
        at = f"transformer.h.{layer}."
        if kind == "heads":  # c_attn: [in, 3E] = q | k | v, head h at h*d of each; c_proj: [E, E], rows of heads
            size, hidden = config.n_embd // config.n_head, config.n_embd
            for offset, side in ((0, "pattern"), (hidden, "pattern"), (2 * hidden, "in")):
                cols = slice(offset + unit * size, offset + (unit + 1) * size)
                select(at + "attn.c_attn.weight", side, slice(None), cols)
                select(at + "attn.c_attn.bias", side, cols)
            select(at + "attn.c_proj.weight", "out", slice(unit * size, (unit + 1) * size))
        else:
            select(at + "mlp.c_fc.weight", "in", slice(None), unit)
            select(at + "mlp.c_fc.bias", "in", unit)
            select(at + "mlp.c_proj.weight", "out", unit)
        return found
    at = f"model.layers.{layer}."
    if kind == "heads":  # query head h reads KV head h // (heads / kv_heads): repeat_kv
        size = config.hidden_size // config.num_attention_heads
        per_group = config.num_attention_heads // config.num_key_value_heads * size
        queries, keys = slice(unit * per_group, (unit + 1) * per_group), slice(unit * size, (unit + 1) * size)
        for proj, rows, side in (("q_proj", queries, "pattern"), ("k_proj", keys, "pattern"), ("v_proj", keys, "in")):
            select(f"{at}self_attn.{proj}.weight", side, rows)
            select(f"{at}self_attn.{proj}.bias", side, rows)
        select(at + "self_attn.o_proj.weight", "out", slice(None), queries)
    else:
        for proj in ("gate_proj", "up_proj"):
            select(f"{at}mlp.{proj}.weight", "in", unit)
            select(f"{at}mlp.{proj}.bias", "in", unit)
        select(at + "mlp.down_proj.weight", "out", slice(None), unit)
    return found


def entries_of(model: torch.nn.Module, kind: str, layer: int, unit: int) -> dict[str, torch.Tensor]:
    """name -> all of the unit's entries in that parameter."""
    union: dict[str, torch.Tensor] = {}
    for name, chosen, _ in entries(model, kind, layer, unit):
        union[name] = union[name] | chosen if name in union else chosen
    return union


def hand_score(model: torch.nn.Module, kind: str, layer: int, unit: int) -> float:
    """The product, over each module computing the unit's value and the one writing it back, of the L2 norm of the
    unit's entries there (weight and bias together); queries and keys left out."""
    squares: dict[tuple[str, str], float] = {}
    for name, chosen, side in entries(model, kind, layer, unit):
        if side != "pattern":
            key = (name.rsplit(".", 1)[0], side)
            values = model.get_parameter(name).detach().double()[chosen]
            squares[key] = squares.get(key, 0.0) + float(values.square().sum())
    return math.prod(math.sqrt(v) for v in squares.values())


def layout_of(model: torch.nn.Module, kind: str):
    (layout,) = [lay for lay in layouts_of(model.config, GROUPS) if lay.kind == kind]
    return layout


def remove_one(model: torch.nn.Module, kind: str, layer: int, unit: int) -> Mask:
    """The full unit mask pruned by ``prune_units`` to remove exactly this unit: its output side scored 0."""
    full = Mask.ones_like(model, unit_parameters(model, GROUPS))
    weights = {n: model.get_parameter(n).detach().clone() for n in full}
    for name, chosen, side in entries(model, kind, layer, unit):
        if side == "out":
            weights[name][chosen] = 0.0
    layout = layout_of(model, kind)
    other = "attention" if layout.group == "mlp" else "mlp"
    fractions = {layout.group: 1 / (layout.layers * layout.count), other: 0.01}  # round(p x all units): 1 and 0
    return prune_units(weights, full, model, 0.01, "global", fractions)


@pytest.mark.parametrize("kind", ["heads", "neurons"])
@pytest.mark.parametrize("family", sorted(MODELS))
def test_a_removed_unit_adds_exactly_nothing(family, kind):
    model = MODELS[family]()
    unit = entries_of(model, kind, 1, 1)
    mask = remove_one(model, kind, 1, 1)
    for name, m in mask.items():  # exactly the unit's entries, and no entry of another unit, are masked
        assert torch.equal(~m, unit.get(name, torch.zeros_like(m))), name
    MaskedParameters(model, mask).zero_weights()
    ids = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(input_ids=ids).logits
        for name, chosen, side in entries(model, kind, 1, 1):  # its queries, keys, values, biases: anything
            if side != "out":
                model.get_parameter(name)[chosen] = torch.randn(int(chosen.sum())) * 5
        assert torch.equal(model(input_ids=ids).logits, before)
        for name, chosen, side in entries(model, kind, 1, 1):  # the output side is what silences it: this can fail
            if side == "out":
                model.get_parameter(name)[chosen] = 1.0
        assert not torch.allclose(model(input_ids=ids).logits, before)


@pytest.mark.parametrize("family", sorted(MODELS))
def test_the_layouts_cover_every_unit_parameter_once(family):
    """Every entry of the attention and MLP weights belongs to exactly one unit; of the biases, those of the
    modules computing the units (an output module's bias is shared: never masked)."""
    model = MODELS[family]()
    names = [w.name for w in unit_parameters(model, GROUPS)]
    weights = [n for n, _ in model.named_parameters() if n.endswith(".weight") and ("attn" in n or "mlp" in n)]
    assert [n for n in names if n.endswith(".weight")] == weights
    assert not any(n.endswith(("o_proj.bias", "c_proj.bias", "down_proj.bias")) for n in names)
    count = {n: torch.zeros_like(model.get_parameter(n), dtype=torch.int64) for n in names}
    for layout in layouts_of(model.config, GROUPS):
        for layer in range(layout.layers):
            for unit in range(layout.count):
                for name, chosen in entries_of(model, layout.kind, layer, unit).items():
                    count[name] += chosen
    assert all(bool((c == 1).all()) for c in count.values())


def unit_state(mask: Mask, model: torch.nn.Module, kind: str) -> dict[tuple[int, int], bool]:
    """(layer, unit) -> kept, read by hand: a unit is kept when all its entries are, removed when none is."""
    layout, state = layout_of(model, kind), {}
    for layer in range(layout.layers):
        for unit in range(layout.count):
            kept = [mask[n][chosen] for n, chosen in entries_of(model, kind, layer, unit).items()]
            assert all(bool(k.all()) for k in kept) or not any(bool(k.any()) for k in kept)
            state[layer, unit] = bool(kept[0].all())
    return state


def expected_removals(model: torch.nn.Module, kind: str, alive: list[tuple[int, int]], p: float, allocation: str):
    """The lowest hand scores among ``alive``, round(p x alive) of them, per layer (uniform) or over all (global);
    ties in (layer, unit) order."""
    pools = [alive] if allocation == "global" else [[u for u in alive if u[0] == layer] for layer in (0, 1)]
    removed = set()
    for pool in pools:
        ranked = sorted(pool, key=lambda u: (hand_score(model, kind, *u), u))
        removed |= set(ranked[: round(p * len(pool))])
    return removed


@pytest.mark.parametrize("allocation", ["global", "uniform"])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_the_lowest_scored_surviving_units_go(family, allocation):
    """From a mask that already removed unit 0 of layer 0 (masks nest): p of the survivors, lowest score first."""
    model = MODELS[family]()
    with torch.no_grad():  # spread the scores so the ranking is far from ties
        for name, param in model.named_parameters():
            param.mul_(torch.rand(param.shape[-1:], generator=torch.Generator().manual_seed(len(name))) * 3)
        for unit in product(range(2), range(layout_of(model, "heads").count)):  # queries and keys score nothing:
            boost = 100 / hand_score(model, "heads", *unit)  # large where the score is small, to reverse the ranking
            for name, chosen, side in entries(model, "heads", *unit):
                if side == "pattern":
                    model.get_parameter(name)[chosen] *= boost
    previous = Mask.ones_like(model, unit_parameters(model, GROUPS))
    for kind in ("heads", "neurons"):
        for name, chosen in entries_of(model, kind, 0, 0).items():
            previous[name][chosen] = False
    MaskedParameters(model, previous).zero_weights()
    weights = dict(model.named_parameters())
    new = prune_units(weights, previous, model, 0.5, allocation)
    for name in previous:
        assert not (new[name] & ~previous[name]).any()
    for kind in ("heads", "neurons"):
        before, after = unit_state(previous, model, kind), unit_state(new, model, kind)
        alive = [u for u, kept in before.items() if kept]
        removed = {u for u in alive if not after[u]}
        assert removed == expected_removals(model, kind, alive, 0.5, allocation)
        assert not after[0, 0]


@pytest.mark.parametrize(("allocation", "expected"), [("global", [[1, 1, 1, 1], [0, 0, 0, 0]]),
                                                      ("uniform", [[1, 1, 0, 0], [1, 1, 0, 0]])])  # fmt: skip
def test_equal_scores_go_in_layer_then_unit_order(allocation, expected):
    removed = units_to_remove(torch.ones(2, 4), torch.ones(2, 4, dtype=torch.bool), 0.5, allocation)
    assert removed.int().tolist() == expected
    model = tiny_gpt2()
    with torch.no_grad():
        for param in model.parameters():
            param.fill_(0.5)
    mask = prune_units(dict(model.named_parameters()), Mask.ones_like(model, unit_parameters(model, GROUPS)),
                       model, 0.5, allocation)  # fmt: skip
    assert [[not kept for (layer, _), kept in unit_state(mask, model, "heads").items() if layer == row]
            for row in (0, 1)] == [[bool(x) for x in row] for row in expected]  # fmt: skip


def test_a_mask_that_is_not_a_unit_mask_is_refused():
    model = tiny_gpt2()
    full = Mask.ones_like(model, unit_parameters(model, GROUPS))
    partial = Mask(full)
    partial["transformer.h.1.mlp.c_fc.bias"] = full["transformer.h.1.mlp.c_fc.bias"].clone()
    partial["transformer.h.1.mlp.c_fc.bias"][3] = False
    with pytest.raises(ValueError, match="neuron 3 of layer 1 is partly masked"):
        prune_units(dict(model.named_parameters()), partial, model, 0.5)
    without_biases = Mask({n: m for n, m in full.items() if n.endswith(".weight")})
    with pytest.raises(ValueError, match="exactly the unit parameters"):
        prune_units(dict(model.named_parameters()), without_biases, model, 0.5)


UNITS_RUN = [
    *MICRO,
    "--model.config",
    "{n_layer: 2, n_embd: 32, n_head: 4, n_positions: 32, resid_pdrop: 0.0, embd_pdrop: 0.0, attn_pdrop: 0.0}",
    "--prune.structure", "units",
    "--controls", "[]",
]  # fmt: skip


def test_uniform_units_through_the_real_loop(tmp_path):
    """Every round of a micro run keeps equal unit counts in every layer, round(p x survivors) fewer each round;
    masks nest, a removed unit's weights and biases are exactly 0 after training, and the ticket (compact weights
    too) loads with its bias masks."""
    root = tmp_path / "run"
    overrides = ["--prune.allocation", "uniform", "--export.format", "compact", "--output_dir", str(root)]
    cfg = load_config(None, [*UNITS_RUN, *overrides])
    find_ticket(cfg)
    run, model = RunDir(root), GPT2LMHeadModel(GPT2Config(**cfg.model.config, vocab_size=300))
    per_layer = {"heads": [4], "neurons": [128]}  # n_head, 4 x n_embd
    for counts in per_layer.values():
        for _ in range(cfg.prune.rounds):
            counts.append(counts[-1] - round(cfg.prune.fraction * counts[-1]))
    assert per_layer == {"heads": [4, 2, 1], "neurons": [128, 64, 32]}
    masks = [run.round_mask(r) for r in range(cfg.prune.rounds + 1)]
    for r, mask in enumerate(masks):
        for layout in layouts_of(model.config, GROUPS):
            assert surviving_units(mask, layout).sum(1).tolist() == [per_layer[layout.kind][r]] * layout.layers
        if r:
            assert all(not (mask[n] & ~masks[r - 1][n]).any() for n in mask)
    trained = load_tensors(run.round(cfg.prune.rounds) / "trained.safetensors")
    final = masks[-1]
    assert "transformer.h.0.mlp.c_fc.bias" in final and "transformer.h.1.attn.c_attn.bias" in final
    for name, keep in final.items():
        assert not trained[name][~keep].any(), name
        assert trained[name][keep].all(), name  # the survivors trained (no accidental zeros to hide behind)
    ticket = load_ticket(root / "ticket")
    assert mask_checksum(ticket.ticket.mask) == mask_checksum(final)
    assert all(torch.equal(ticket.get_parameter(n), trained[n]) for n in final)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["--prune.allocation", "uniform"], "round 2 of prune.rounds=2 removes round(0.5 x 1) = 0 of the 1 heads"),
        (
            ["--prune.groups", "[attention]", "--prune.fraction", "0.9"],
            "removes round(0.9 x 4) = 4, all the heads left in all layers",
        ),
        (["--prune.groups", "[attention, embeddings]"], "lists embeddings, which have no heads or neurons"),
        (["--prune.scope", "layer"], "prune.scope=layer ranks single weights"),
        (["--prune.score", "normalized_magnitude"], "prune.score=normalized_magnitude scores single weights"),
        (["--prune.structure", "weights", "--prune.allocation", "uniform"], "applies to prune.structure=units only"),
        (["--prune.structure", "unit"], "did you mean units?"),
        (["--prune.allocation", "layer"], "prune.allocation='layer' is not allowed"),
        (["--controls", "[{wanda: {rounds: all}}]"], "branch wanda builds unstructured masks"),
        (["--controls", "[oneshot_magnitude]"], "use random_reinit or random_prune (they keep the ticket's"),
    ],
)
def test_bad_unit_settings_are_one_line_and_write_nothing(tmp_path, capsys, overrides, message):
    out = tmp_path / "run"
    units = ["--prune.structure", "units", "--controls", "[]"]
    assert main(["find", *MICRO, *units, *overrides, "--output_dir", str(out)]) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and message in lines[0], lines
    assert not out.exists()


def test_a_family_without_a_unit_layout_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.delitem(families.UNIT_LAYOUTS, "gpt2")
    out = tmp_path / "run"
    assert main(["find", *UNITS_RUN, "--output_dir", str(out)]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert "no head and neuron layout for model_type 'gpt2'" in line
    assert not out.exists()
