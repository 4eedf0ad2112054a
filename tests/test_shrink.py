"""Shrink export: whole masked units removed give a smaller standard model with the masked model's logits."""

import json
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPTNeoXConfig, LlamaConfig

from gpt_tickets.cli import main
from gpt_tickets.config import load_config
from gpt_tickets.data.tokenizer import train_tokenizer
from gpt_tickets.errors import ConfigError, TicketError
from gpt_tickets.sparsity.masks import Mask
from gpt_tickets.sparsity.units import kept_positions, layouts_of
from gpt_tickets.tickets.export import export_ticket
from gpt_tickets.tickets.load import load_ticket
from gpt_tickets.tickets.shrink import SHRINK_FILE, shrink_model, unit_mask, write_shrunk

from .conftest import MICRO, error_lines

GPT2 = {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 32, "vocab_size": 300}  # conftest's MICRO model
LLAMA = {  # grouped-query attention: 4 query heads share 2 KV heads; head_dim explicit (not hidden / heads)
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 12,
    "vocab_size": 100,
    "max_position_embeddings": 32,
}


def gpt2(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(GPT2Config(**{**GPT2, **overrides})).eval()


def llama(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(LlamaConfig(**{**LLAMA, **overrides})).eval()


def masked(model: torch.nn.Module, mask: Mask) -> torch.nn.Module:
    """The model with its pruned weights zero, as a ticket holds them."""
    with torch.no_grad():
        for name, m in mask.items():
            model.get_parameter(name).mul_(m)
    return model


def full_mask(model: torch.nn.Module, names: list[str]) -> Mask:
    return Mask({n: torch.ones_like(model.get_parameter(n), dtype=torch.bool) for n in names})


def gpt2_mask(model, neurons: list[list[int]], heads=None, bias: bool = False) -> Mask:
    """Neuron i of layer l: column i of c_fc (and its bias), row i of the MLP's c_proj; head h: its q, k and v columns
    of c_attn and its rows of the attention's c_proj (GPT-2's Conv1D weights are [in, out])."""
    weights = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    names = [f"transformer.h.{i}.{w}" for i in range(len(neurons)) for w in (*weights, *["mlp.c_fc.bias"] * bias)]
    mask = full_mask(model, names)
    size = model.config.n_embd // model.config.n_head
    for layer, removed in enumerate(neurons):
        p = f"transformer.h.{layer}."
        mask[p + "mlp.c_fc.weight"][:, removed] = False
        mask[p + "mlp.c_proj.weight"][removed, :] = False
        if bias:
            mask[p + "mlp.c_fc.bias"][removed] = False
        for h in (heads or [[]] * len(neurons))[layer]:
            for block in range(3):
                start = block * model.config.n_embd + h * size
                mask[p + "attn.c_attn.weight"][:, start : start + size] = False
            mask[p + "attn.c_proj.weight"][h * size : (h + 1) * size, :] = False
    return mask


def llama_mask(model, neurons: list[list[int]], groups: list[list[int]]) -> Mask:
    """Neuron i: row i of gate_proj and up_proj, column i of down_proj. KV group g: its k and v rows, the rows of the
    query heads that share them, and those heads' columns of o_proj (nn.Linear weights are [out, in])."""
    cfg = model.config
    parts = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
    parts += ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
    names = [f"model.layers.{i}.{w}.weight" for i in range(len(neurons)) for w in parts]
    mask = full_mask(model, names)
    q_rows = cfg.num_attention_heads // cfg.num_key_value_heads * cfg.head_dim
    for layer, (removed, gone) in enumerate(zip(neurons, groups, strict=True)):
        p = f"model.layers.{layer}."
        for name in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):
            mask[p + name][removed, :] = False
        mask[p + "mlp.down_proj.weight"][:, removed] = False
        for g in gone:
            mask[p + "self_attn.q_proj.weight"][g * q_rows : (g + 1) * q_rows, :] = False
            mask[p + "self_attn.o_proj.weight"][:, g * q_rows : (g + 1) * q_rows] = False
            for name in ("self_attn.k_proj.weight", "self_attn.v_proj.weight"):
                mask[p + name][g * cfg.head_dim : (g + 1) * cfg.head_dim, :] = False
    return mask


def logits(model, vocab_size: int) -> torch.Tensor:
    ids = torch.randint(0, vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(ids).logits


def gpt2_parameters(c: GPT2Config, inner: int) -> int:
    """Counted by hand: embeddings (the LM head is tied), per layer 2 LayerNorms, c_attn, c_proj, c_fc, c_proj."""
    e = c.n_embd
    layer = 2 * 2 * e + (e * 3 * e + 3 * e) + (e * e + e) + (e * inner + inner) + (inner * e + e)
    return c.vocab_size * e + c.n_positions * e + c.n_layer * layer + 2 * e


def llama_parameters(c: LlamaConfig, heads: int, kv_heads: int, inner: int) -> int:
    """Counted by hand: embeddings and untied LM head, per layer q/k/v/o, gate/up/down and 2 RMSNorms, final norm."""
    h, d = c.hidden_size, c.head_dim
    layer = h * heads * d + 2 * h * kv_heads * d + heads * d * h + 3 * h * inner + 2 * h
    return 2 * c.vocab_size * h + c.num_hidden_layers * layer + h


@pytest.mark.parametrize("bias", [False, True], ids=["weights-masked", "bias-masked-too"])
def test_gpt2_without_its_masked_neurons_gives_the_masked_models_logits(bias):
    model = gpt2()
    mask = gpt2_mask(model, [[0, 5, 9, 127], [3, 4, 100, 64]], heads=[[1], []], bias=bias)
    masked(model, mask)
    smaller = shrink_model(model, mask)
    assert smaller.config.n_inner == 124 and smaller.config.n_head == 2
    assert smaller.num_parameters() == gpt2_parameters(model.config, 124)
    torch.testing.assert_close(logits(smaller, 300), logits(model, 300), atol=1e-5, rtol=0)
    # the masked head of layer 0 is still there, as zeros (GPT-2's head size is fixed)
    assert torch.equal(smaller.transformer.h[0].attn.c_attn.weight, model.transformer.h[0].attn.c_attn.weight)


@pytest.mark.parametrize(
    ("neurons", "groups"),
    [([[1, 2, 40], [0, 7, 47]], [[], []]), ([[], []], [[1], [0]]), ([[5, 6], [10, 20]], [[0], [1]])],
    ids=["neurons", "kv-groups", "both"],
)
def test_llama_without_its_masked_neurons_and_kv_groups_gives_the_masked_models_logits(neurons, groups):
    model = llama()
    mask = llama_mask(model, neurons, groups)
    masked(model, mask)
    smaller = shrink_model(model, mask)
    kv_heads, inner = 2 - len(groups[0]), 48 - len(neurons[0])
    c = smaller.config
    assert (c.num_key_value_heads, c.num_attention_heads, c.head_dim, c.intermediate_size) == (
        kv_heads,
        2 * kv_heads,
        12,
        inner,
    )
    assert smaller.num_parameters() == llama_parameters(model.config, 2 * kv_heads, kv_heads, inner)
    torch.testing.assert_close(logits(smaller, 100), logits(model, 100), atol=1e-5, rtol=0)


def test_unit_mask_is_the_hand_built_mask():
    model = gpt2()
    by_hand = gpt2_mask(model, [[0, 127], [5, 6]], bias=True)
    built = unit_mask(model, {"neurons": [[0, 127], [5, 6]]})
    assert sorted(built) == sorted(n for n in by_hand if ".mlp." in n)
    assert all(torch.equal(built[n], by_hand[n]) for n in built)
    model = llama()
    by_hand = llama_mask(model, [[1, 47], [3]], [[1], [0]])
    built = unit_mask(model, {"neurons": [[1, 47], [3]], "heads": [[1], [0]]})
    assert sorted(built) == sorted(by_hand) and all(torch.equal(built[n], by_hand[n]) for n in built)
    with pytest.raises(ConfigError, match="unit kind='neuron' is not allowed; did you mean neurons"):
        unit_mask(model, {"neuron": [[1]]})


def test_a_mask_of_mlp_weights_only_shrinks_and_a_weight_it_leaves_out_counts_as_kept():
    model = gpt2()
    mask = unit_mask(model, {"neurons": [[0, 9], [3, 4]]})
    masked(model, mask)
    smaller = shrink_model(model, mask)
    assert smaller.config.n_inner == 126
    torch.testing.assert_close(logits(smaller, 300), logits(model, 300), atol=1e-5, rtol=0)
    without_c_proj = Mask({name: m for name, m in mask.items() if ".mlp.c_proj." not in name})
    with pytest.raises(ConfigError, match=re.escape("MLP neuron 0 of layer 0 is partly masked")):
        shrink_model(model, without_c_proj)


def test_kept_positions_drop_every_part_a_parameter_holds():
    """GPT-2's c_attn holds a head's q, k and v columns (at 0, E and 2E): removing head 1 drops all three blocks."""
    model = gpt2()  # E = 32: 2 heads of 16
    (heads,) = layouts_of(model.config, ["attention"])
    kept = kept_positions(dict(model.named_parameters()), {heads: torch.tensor([[False, True], [False, False]])})
    p = "transformer.h.0.attn."
    assert [(axis, index.tolist()) for axis, index in (kept[p + "c_attn.weight"], kept[p + "c_attn.bias"])] == [
        (1, [*range(16), *range(32, 48), *range(64, 80)]),
        (0, [*range(16), *range(32, 48), *range(64, 80)]),
    ]
    assert kept[p + "c_proj.weight"][0] == 0 and kept[p + "c_proj.weight"][1].tolist() == list(range(16))
    assert p + "c_proj.bias" not in kept  # an output bias is shared by every head
    assert kept["transformer.h.1.attn.c_attn.weight"][1].tolist() == list(range(96))


def tokenizer():
    text = "The quick brown fox jumps over the lazy dog. " * 3 + "Pack my box with five dozen liquor jugs; " * 3
    return train_tokenizer([text, "How vexingly quick daft zebras jump! Sphinx of black quartz, judge my vow."], 300)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_the_shrunk_folder_loads_with_plain_from_pretrained(family, tmp_path):
    if family == "gpt2":
        model = gpt2()
        mask, expected = gpt2_mask(model, [list(range(0, 128, 2))] * 2), gpt2_parameters(model.config, 64)
    else:
        model = llama()
        mask = llama_mask(model, [list(range(24)), list(range(24, 48))], [[1], [1]])
        expected = llama_parameters(model.config, 2, 1, 24)
    masked(model, mask)
    out = write_shrunk(model, tokenizer(), mask, tmp_path / "shrunk")
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert loaded.num_parameters() == expected
    vocab = model.config.vocab_size
    torch.testing.assert_close(logits(loaded, vocab), logits(model, vocab), atol=1e-5, rtol=0)
    assert AutoTokenizer.from_pretrained(out)("fox")["input_ids"]
    record = json.loads((out / SHRINK_FILE).read_text())
    assert record["parameters"] == {"before": model.num_parameters(), "after": expected}
    if family == "llama":
        assert record["removed"] == {"heads": [[1], [1]], "neurons": [list(range(24)), list(range(24, 48))]}
    card = (out / "README.md").read_text()
    assert f"{model.num_parameters():,} -> {expected:,} parameters" in card
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shrunk"]  # no temp folder left


def _unequal(model):
    return gpt2_mask(model, [[1, 2], [3]])


def _partial_neuron(model):
    mask = gpt2_mask(model, [[1, 2], [3, 4]])
    mask["transformer.h.1.mlp.c_fc.weight"][0, 7] = False
    return mask


def _partial_kv_group(model):
    mask = llama_mask(model, [[1], [2]], [[0], [0]])
    mask["model.layers.1.self_attn.k_proj.weight"][:, :] = True  # group 0's queries masked, its key head kept
    return mask


def _single_weights_elsewhere(model):
    mask = gpt2_mask(model, [[1], [2]])
    mask["transformer.wte.weight"] = torch.rand(model.transformer.wte.weight.shape) > 0.5
    return mask


def _every_neuron(model):
    return gpt2_mask(model, [list(range(128))] * 2)


def _unequal_kv_groups(model):
    return llama_mask(model, [[1], [2]], [[0], []])


@pytest.mark.parametrize(
    ("make_model", "make_mask", "message"),
    [
        (gpt2, _unequal, "neurons removed per layer [2, 1]; a standard config needs the same count in every layer"),
        (gpt2, _partial_neuron, "neuron 7 of layer 1 is partly masked"),
        (llama, _partial_kv_group, "KV group 0 of layer 1 is partly masked"),
        (llama, _unequal_kv_groups, "KV groups removed per layer [1, 0]"),
        (gpt2, _single_weights_elsewhere, "the mask of 'transformer.wte.weight' prunes"),
        (gpt2, _every_neuron, "every MLP neuron of every layer is masked (128 of 128)"),
    ],
    ids=["unequal-widths", "partial-neuron", "partial-kv-group", "unequal-kv-groups", "single-weights", "all"],
)
def test_a_mask_that_does_not_shrink_is_one_line_and_nothing_is_written(make_model, make_mask, message, tmp_path):
    model = make_model()
    mask = make_mask(model)
    masked(model, mask)
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        write_shrunk(model, tokenizer(), mask, tmp_path / "shrunk")
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_an_unsupported_family_and_stray_weights_are_one_line(tmp_path):
    torch.manual_seed(0)
    neox = AutoModelForCausalLM.from_config(
        GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, vocab_size=100)
    )
    with pytest.raises(ConfigError, match="model_type 'gpt_neox' has no shrink support; supported: gpt2, llama"):
        write_shrunk(neox, tokenizer(), Mask(), tmp_path / "shrunk")
    model = gpt2()
    with pytest.raises(TicketError, match="'transformer.h.0.attn.c_attn.weight' is non-zero at 1536 positions"):
        write_shrunk(model, tokenizer(), gpt2_mask(model, [[1], [2]], heads=[[0], []]), tmp_path / "shrunk")
    assert list(tmp_path.iterdir()) == []


def write_ticket(model, mask, folder: Path, **kwargs) -> Path:
    cfg = load_config(None, [*MICRO, "--output_dir", str(folder.parent / "run")])
    return export_ticket(masked(model, mask), tokenizer(), mask, cfg, folder, **kwargs)


def test_cli_shrink_writes_a_model_with_the_tickets_logits(tmp_path, capsys):
    model = gpt2()
    ticket = write_ticket(model, gpt2_mask(model, [list(range(32)), list(range(96, 128))], bias=True), tmp_path / "t")
    assert main(["shrink", str(ticket), str(tmp_path / "small")]) == 0
    assert "-> " + f"{gpt2_parameters(model.config, 96):,} parameters (n_inner=96)" in capsys.readouterr().out
    smaller = AutoModelForCausalLM.from_pretrained(tmp_path / "small")
    torch.testing.assert_close(logits(smaller, 300), logits(load_ticket(ticket), 300), atol=1e-5, rtol=0)
    assert main(["shrink", str(ticket), str(tmp_path / "small")]) == 0  # an earlier shrink output is replaced


def test_cli_shrink_refuses_bad_input_with_exit_code_2(tmp_path, capsys):
    model = gpt2()
    ticket = write_ticket(model, gpt2_mask(model, [[1, 2], [3]]), tmp_path / "t")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    cases = {
        str(tmp_path / "small"): "neurons removed per layer [2, 1]",
        str(ticket): "is the ticket itself",
        str(tmp_path / "taken"): "exists and is not a shrunk export",
    }
    for out, message in cases.items():
        assert main(["shrink", str(ticket), out]) == 2
        (line,) = error_lines(capsys.readouterr().err)
        assert message in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t", "taken"]
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"


def test_export_format_shrink_writes_the_ticket_and_the_shrunk_model_beside_it(tmp_path):
    model = gpt2()
    ticket = write_ticket(model, gpt2_mask(model, [[0, 1], [2, 3]]), tmp_path / "ticket", weights_format="shrink")
    assert json.loads((ticket / "ticket_config.json").read_text())["weights_format"] == "dense"
    smaller = AutoModelForCausalLM.from_pretrained(tmp_path / "ticket_shrunk")
    assert smaller.config.n_inner == 126
    torch.testing.assert_close(logits(smaller, 300), logits(load_ticket(ticket), 300), atol=1e-5, rtol=0)
    assert "The ticket `ticket/` beside this" in (tmp_path / "ticket_shrunk" / "README.md").read_text()


def test_export_format_shrink_of_a_mask_that_does_not_shrink_writes_nothing(tmp_path):
    model = gpt2()
    with pytest.raises(ConfigError, match="neurons removed per layer"):
        write_ticket(model, gpt2_mask(model, [[0, 1], [2]]), tmp_path / "ticket", weights_format="shrink")
    assert list(tmp_path.iterdir()) == []


def test_export_format_shrink_is_an_allowed_config_value():
    cfg = load_config(None, ["--export.format", "shrink"])
    assert cfg.export.format == "shrink"
    with pytest.raises(ConfigError, match="shrink"):
        load_config(None, ["--export.format", "shrunk"])


def test_the_tickets_card_names_the_shrunk_model_beside_it_with_its_size(tmp_path):
    model = gpt2()
    mask = gpt2_mask(model, [[0, 1], [2, 3]])
    card = (write_ticket(model, mask, tmp_path / "ticket", weights_format="shrink") / "README.md").read_text()
    smaller = AutoModelForCausalLM.from_pretrained(tmp_path / "ticket_shrunk")
    before, after = model.num_parameters(), smaller.num_parameters()
    assert after < before
    assert "`../ticket_shrunk/` beside this folder" in card and "a plain `gpt2` model" in card
    assert f"{before:,} -> {after:,} parameters ({1 - after / before:.1%} fewer)" in card
    assert "`AutoModelForCausalLM.from_pretrained`, without masks" in card and "logits equal this ticket's" in card
    dense = (write_ticket(model, mask, tmp_path / "dense", weights_format="dense") / "README.md").read_text()
    assert "## A smaller model" in card and "## A smaller model" not in dense and "_shrunk" not in dense
