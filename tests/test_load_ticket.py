"""load_ticket: masks attached so fine-tuning stays sparse, and every damaged folder refused with one clear line."""

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from gpt_tickets.cli import main
from gpt_tickets.errors import TicketError
from gpt_tickets.sparsity.apply import detach_masks
from gpt_tickets.sparsity.masks import Mask
from gpt_tickets.tickets import load as load_module
from gpt_tickets.tickets.encoding import load_packed_masks, save_packed_masks
from gpt_tickets.tickets.load import load_ticket


@pytest.fixture
def ticket(micro_run, tmp_path) -> Path:
    """A private copy of the micro run's ticket (dense and compact weights), free to damage."""
    return Path(shutil.copytree(micro_run / "ticket", tmp_path / "ticket"))


def fine_tune(model, optimizer, steps=3):
    ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    for _ in range(steps):
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def test_load_ticket_gives_the_plain_model_with_its_masks(ticket):
    model = load_ticket(ticket)
    plain = AutoModelForCausalLM.from_pretrained(ticket)
    for name, value in plain.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    assert model.ticket.folder == ticket and model.ticket.config.weights_format == "both"
    assert model.ticket.mask.keys() == load_packed_masks(ticket / "ticket_masks.safetensors").keys()
    detach_masks(model)


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1),
        lambda params: torch.optim.SGD(params, lr=1e-1, momentum=0.9, weight_decay=0.01),
        lambda params: torch.optim.Adam(params, lr=1e-2),
    ],
    ids=["adamw", "sgd-momentum", "adam"],
)
def test_fine_tuning_a_loaded_ticket_keeps_it_exactly_sparse(ticket, make_optimizer):
    model = load_ticket(ticket)
    mask = model.ticket.mask
    before = {n: model.get_parameter(n).detach().clone() for n in mask}
    fine_tune(model, make_optimizer(model.parameters()))
    for name, m in mask.items():
        weight = model.get_parameter(name).detach()
        assert int(weight[~m].count_nonzero()) == 0, name
        assert not torch.equal(weight[m], before[name][m]), name  # the kept weights did train
    detach_masks(model)


def test_detached_masks_let_the_pruned_weights_train_again(ticket):
    model = load_ticket(ticket)
    mask = model.ticket.mask
    detach_masks(model)
    fine_tune(model, torch.optim.AdamW(model.parameters(), lr=1e-2))
    assert sum(int(model.get_parameter(n).detach()[~m].count_nonzero()) for n, m in mask.items()) > 0


def test_an_unrelated_optimizer_step_leaves_the_ticket_alone(ticket):
    model = load_ticket(ticket)
    other = torch.nn.Parameter(torch.ones(3))
    other.grad = torch.ones(3)
    calls = []
    model.ticket.masked.zero_weights = lambda: calls.append(1)
    torch.optim.SGD([other], lr=0.1).step()
    assert calls == [] and torch.equal(other.detach(), torch.full((3,), 0.9))
    detach_masks(model)


# ---------------------------------------------------------------------------------------------------- bad input


def _rewrite_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _drop_json_key(path: Path, key: str) -> None:
    data = json.loads(path.read_text())
    del data[key]
    path.write_text(json.dumps(data))


def _nested(depth: int, leaf=0.5):
    for _ in range(depth):
        leaf = [leaf]
    return leaf


def _rewrite_tensors(folder: Path, change, name: str = "model.safetensors") -> None:
    """Rewrite one weight file with save_file after ``change(tensors)``, keeping its metadata."""
    with safe_open(folder / name, "pt") as f:
        metadata = f.metadata()
    tensors = load_file(folder / name)
    change(tensors)
    save_file(tensors, folder / name, metadata=metadata)


def _stray_weight(folder: Path) -> None:
    """Set one pruned weight non-zero in model.safetensors (the file load_ticket reads when there are both)."""
    masks = load_packed_masks(folder / "ticket_masks.safetensors")
    name = sorted(masks)[0]

    def change(tensors):
        flat = tensors[name].reshape(-1)
        flat[(~masks[name]).reshape(-1).nonzero()[0]] = 0.5

    _rewrite_tensors(folder, change)


def _masks_with(folder: Path, change) -> None:
    masks = load_packed_masks(folder / "ticket_masks.safetensors")
    save_packed_masks(Mask({n: change(n, m) for n, m in masks.items()}), folder / "ticket_masks.safetensors")


def _masks_of_a_different_model(folder: Path) -> None:
    """A masks file for a wider model: same weight names, other shapes."""
    _masks_with(folder, lambda n, m: torch.ones(tuple(d * 2 for d in m.shape), dtype=torch.bool))


def _masks_of_a_different_ticket(folder: Path) -> None:
    """Same model, another mask (shifted by one element): a mismatched pair of files."""
    _masks_with(folder, lambda n, m: m.reshape(-1).roll(1).reshape(m.shape))


def _masks_for_missing_weight(folder: Path) -> None:
    masks = load_packed_masks(folder / "ticket_masks.safetensors")
    masks["transformer.h.9.mlp.c_fc.weight"] = torch.ones(2, 2, dtype=torch.bool)
    save_packed_masks(masks, folder / "ticket_masks.safetensors")


def _truncate(name: str):
    def damage(folder: Path) -> None:
        path = folder / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return damage


def _config(**changes):
    return lambda folder: _rewrite_json(folder / "config.json", **changes)


def _ticket_config(**changes):
    return lambda folder: _rewrite_json(folder / "ticket_config.json", **changes)


# The micro ticket: GPT-2, 2 layers, n_embd 32, 32 positions, vocabulary 300, lm_head tied to wte (not in the file).
BAD_TICKETS = [
    ("no-masks", lambda f: (f / "ticket_masks.safetensors").unlink(), "ticket_masks.safetensors is missing"),
    ("no-ticket-config", lambda f: (f / "ticket_config.json").unlink(), "is not a gpt_tickets ticket"),
    ("stray-weight", _stray_weight, "is non-zero at 1 positions where its mask is 0"),
    ("mask-shape", _masks_of_a_different_model, "(masks of a different model?)"),
    ("mask-no-such-weight", _masks_for_missing_weight, "which the model does not have"),
    ("masks-of-another-ticket", _masks_of_a_different_ticket, "masks of a different ticket?"),
    ("format-version", _ticket_config(format_version=2), "format_version 2"),
    ("format-version-str", _ticket_config(format_version="1"), "format_version"),
    ("weights-format", _ticket_config(weights_format="pickle"), "'pickle'"),
    ("truncated-model", _truncate("model.safetensors"), "model.safetensors is not a readable safetensors file"),
    ("truncated-masks", _truncate("ticket_masks.safetensors"), "ticket_masks.safetensors is not a readable"),
    ("not-json", lambda f: (f / "ticket_config.json").write_text("{"), "ticket_config.json is not valid JSON"),
    # ticket_config.json nested or mistyped: one line, never RecursionError, KeyError or TypeError
    (
        "ticket-config-nested-too-deep",
        lambda f: (f / "ticket_config.json").write_text("[" * 100_000 + "]" * 100_000),
        "ticket_config.json is not valid JSON",
    ),
    ("ticket-config-a-list", lambda f: (f / "ticket_config.json").write_text("[1, 2]"), "must hold a JSON object"),
    ("ticket-config-null", lambda f: (f / "ticket_config.json").write_text("null"), "must hold a JSON object"),
    ("format-version-null", _ticket_config(format_version=None), "format_version None"),
    ("weights-format-a-list", _ticket_config(weights_format=["dense"]), "weights_format ['dense']"),
    ("sparsity-nested", _ticket_config(sparsity={"overall": _nested(500)}), "sparsity={'overall': [[[["),
    ("sparsity-a-list", _ticket_config(sparsity=[0.5]), "sparsity=[0.5] is not of type dict[str, float]"),
    ("per-layer-one-level", _ticket_config(per_layer_sparsity={"h.0": 0.5}), "per_layer_sparsity={'h.0': 0.5}"),
    ("groups-nested", _ticket_config(groups=[["attention"]]), "groups=[['attention']] is not of type list[str]"),
    ("seed-a-string", _ticket_config(seed="0"), "seed='0' is not of type <class 'int'>"),
    ("seed-a-bool", _ticket_config(seed=True), "seed=True"),
    ("no-mask-checksum", lambda f: _drop_json_key(f / "ticket_config.json", "mask_checksum"), "'mask_checksum'"),
    # config.json and the weights' headers disagree: refused before any model is allocated
    ("config-extra-layer", _config(n_layer=3), "num_hidden_layers=3, model.safetensors holds the weights of 2 layers"),
    ("config-one-layer-fewer", _config(n_layer=1), "num_hidden_layers=1, model.safetensors holds the weights of 2"),
    ("config-200000-layers", _config(n_layer=200_000), "config.json declares num_hidden_layers=200000"),
    (
        "config-n-embd",
        _config(n_embd=64),
        "model.safetensors: tensor 'transformer.wte.weight' has shape (300, 32), config.json implies (300, 64)",
    ),
    ("config-untied", _config(tie_word_embeddings=False), "tensor 'lm_head.weight' of shape (300, 32), which"),
    (
        "tensor-removed",
        lambda f: _rewrite_tensors(f, lambda t: t.pop("transformer.ln_f.bias")),
        "model.safetensors: tensor 'transformer.ln_f.bias' of shape (32,), which config.json implies, is missing",
    ),
    (
        "tensor-extra",
        lambda f: _rewrite_tensors(f, lambda t: t.update({"transformer.extra.weight": torch.zeros(4)})),
        "model.safetensors: tensor 'transformer.extra.weight' is not in the model config.json describes",
    ),
    (
        "tensor-mis-shaped",
        lambda f: _rewrite_tensors(f, lambda t: t.update({"transformer.wpe.weight": torch.zeros(16, 32)})),
        "model.safetensors: tensor 'transformer.wpe.weight' has shape (16, 32), config.json implies (32, 32)",
    ),
    (
        "compact-tensor-removed",  # format both: the compact file is checked too, though load_ticket reads the dense
        lambda f: _rewrite_tensors(f, lambda t: t.pop("transformer.ln_f.weight"), "ticket_compact.safetensors"),
        "ticket_compact.safetensors: tensor 'transformer.ln_f.weight' of shape (32,), which config.json implies",
    ),
]
NEEDS_THE_WEIGHTS = {"stray-weight"}  # every other case is refused from the headers, before a model is allocated


@pytest.mark.parametrize("case, damage, message", BAD_TICKETS, ids=[b[0] for b in BAD_TICKETS])
def test_damaged_ticket_is_refused_with_one_line(ticket, monkeypatch, case, damage, message):
    damage(ticket)
    if case not in NEEDS_THE_WEIGHTS:
        monkeypatch.setattr(load_module, "_load_weights", lambda *a: pytest.fail("a model was allocated"))
    with pytest.raises(TicketError) as err:
        load_ticket(ticket)
    assert message in str(err.value) and "\n" not in str(err.value)


# Enormous layer counts: refused from the headers before transformers builds the config (a qwen2 config builds a
# list entry per layer: 5 million take ~10 s) or the model, even on the meta device.
ENORMOUS_CONFIGS = {
    "gpt2-200000-layers": ({"n_layer": 200_000}, "num_hidden_layers=200000"),
    "qwen2-5000000-layers": ({"model_type": "qwen2", "num_hidden_layers": 5_000_000}, "num_hidden_layers=5000000"),
}


@pytest.mark.parametrize("case", sorted(ENORMOUS_CONFIGS))
def test_an_enormous_config_is_refused_in_well_under_a_second(ticket, case):
    changes, message = ENORMOUS_CONFIGS[case]
    _rewrite_json(ticket / "config.json", **changes)
    start = time.perf_counter()
    with pytest.raises(TicketError, match=message):
        load_ticket(ticket)
    assert time.perf_counter() - start < 0.5


def test_a_tied_weight_saved_anyway_is_accepted(ticket):
    """lm_head.weight is tied to wte: save_pretrained leaves it out, but a file holding it too is no damage."""
    _rewrite_tensors(ticket, lambda t: t.update({"lm_head.weight": t["transformer.wte.weight"].clone()}))
    model = load_ticket(ticket)
    assert model.lm_head.weight is model.transformer.wte.weight
    detach_masks(model)


def test_sharded_weights_are_checked_across_the_shards(ticket):
    plain = AutoModelForCausalLM.from_pretrained(ticket)
    (ticket / "model.safetensors").unlink()
    plain.save_pretrained(ticket, max_shard_size="20KB")
    shards = sorted(ticket.glob("model-*.safetensors"))
    assert len(shards) > 1 and (ticket / "model.safetensors.index.json").exists()
    detach_masks(load_ticket(ticket))

    def drop_ln_f_bias(tensors):
        tensors.pop("transformer.ln_f.bias")

    (holder,) = [s for s in shards if "transformer.ln_f.bias" in load_file(s)]
    _rewrite_tensors(ticket, drop_ln_f_bias, holder.name)
    with pytest.raises(TicketError, match=r"^the shards of model.safetensors.index.json: tensor 'transformer.ln_f.b"):
        load_ticket(ticket)


def _compact_only(folder: Path) -> None:
    _rewrite_json(folder / "ticket_config.json", weights_format="compact")
    (folder / "model.safetensors").unlink()


def _first_pruned(folder: Path) -> str:
    return sorted(load_packed_masks(folder / "ticket_masks.safetensors"))[0]


BAD_COMPACT = [
    ("extra-layer", _config(n_layer=3), "num_hidden_layers=3, ticket_compact.safetensors holds the weights of 2"),
    (
        "tensor-removed",
        lambda f: _rewrite_tensors(f, lambda t: t.pop("transformer.wpe.weight"), "ticket_compact.safetensors"),
        "ticket_compact.safetensors: tensor 'transformer.wpe.weight' of shape (32, 32), which config.json implies",
    ),
    (
        "tensor-mis-shaped",
        lambda f: _rewrite_tensors(
            f, lambda t: t.update({"transformer.ln_f.bias": torch.zeros(31)}), "ticket_compact.safetensors"
        ),
        "ticket_compact.safetensors: tensor 'transformer.ln_f.bias' has shape (31,), config.json implies (32,)",
    ),
    (
        "pruned-weight-not-1d",
        lambda f: _rewrite_tensors(
            f,
            lambda t: t.update({_first_pruned(f): t[_first_pruned(f)].reshape(1, -1)}),
            "ticket_compact.safetensors",
        ),
        "a pruned weight is stored as the 1-D run of the",
    ),
    (
        "pruned-weight-one-value-short",
        lambda f: _rewrite_tensors(
            f, lambda t: t.update({_first_pruned(f): t[_first_pruned(f)][1:]}), "ticket_compact.safetensors"
        ),
        "values, its mask keeps",
    ),
]


@pytest.mark.parametrize("damage, message", [b[1:] for b in BAD_COMPACT], ids=[b[0] for b in BAD_COMPACT])
def test_damaged_compact_only_ticket_is_refused_before_allocating(ticket, monkeypatch, damage, message):
    _compact_only(ticket)
    damage(ticket)
    monkeypatch.setattr(load_module, "_load_weights", lambda *a: pytest.fail("a model was allocated"))
    with pytest.raises(TicketError) as err:
        load_ticket(ticket)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_compact_only_ticket_with_a_truncated_compact_file(ticket):
    _rewrite_json(ticket / "ticket_config.json", weights_format="compact")
    (ticket / "model.safetensors").unlink()
    _truncate("ticket_compact.safetensors")(ticket)
    with pytest.raises(TicketError, match="ticket_compact.safetensors is not a readable safetensors file"):
        load_ticket(ticket)


def test_compact_values_that_do_not_fit_the_masks(ticket):
    _rewrite_json(ticket / "ticket_config.json", weights_format="compact")
    (ticket / "model.safetensors").unlink()
    _masks_with(ticket, lambda n, m: torch.ones_like(m) if n.endswith("c_fc.weight") else m)
    with pytest.raises(TicketError, match="holds .* values, its mask keeps"):
        load_ticket(ticket)


def test_neither_folder_nor_repo_id(tmp_path):
    with pytest.raises(TicketError, match="neither a ticket folder nor a Hub repo id"):
        load_ticket(str(tmp_path / "no" / "such" / "dir"))


def test_repo_not_in_the_cache_offline(tmp_path):
    with pytest.raises(TicketError, match="cannot download the ticket 'org/not-cached'") as err:
        load_ticket("org/not-cached", cache_dir=tmp_path / "cache")
    assert "\n" not in str(err.value)


def test_cli_push_of_a_damaged_ticket_is_one_line_exit_2(ticket, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    (ticket / "ticket_masks.safetensors").unlink()
    assert main(["push", str(ticket), "--repo-id", "org/name"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gpt-tickets: error:") and "ticket_masks.safetensors is missing" in err
    assert "\n" not in err and "hf_not_a_real_token" not in err


# ------------------------------------------------------------------------------------------------------ security


def test_a_config_asking_for_remote_code_is_refused(ticket):
    config = json.loads((ticket / "config.json").read_text())
    config.update(model_type="evil", auto_map={"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"})
    (ticket / "config.json").write_text(json.dumps(config))
    (ticket / "modeling_evil.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(TicketError, match="does not load as a transformers causal LM") as err:
        load_ticket(ticket)
    assert "\n" not in str(err.value)


def test_a_shard_index_cannot_point_outside_the_folder(ticket, tmp_path):
    outside = tmp_path / "outside.safetensors"
    shutil.copy(ticket / "model.safetensors", outside)
    (ticket / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": {"transformer.wte.weight": "../outside.safetensors"}}
    (ticket / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(TicketError, match="names the shard '../outside.safetensors', which is not a plain file name"):
        load_ticket(ticket)


def test_a_compact_only_ticket_fine_tunes_sparse_with_its_ties(ticket):
    _rewrite_json(ticket / "ticket_config.json", weights_format="compact")
    (ticket / "model.safetensors").unlink()
    model = load_ticket(ticket)
    assert all(p.requires_grad for p in model.parameters())
    fine_tune(model, torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1))
    assert model.lm_head.weight is model.transformer.wte.weight
    for name, m in model.ticket.mask.items():
        assert int(model.get_parameter(name).detach()[~m].count_nonzero()) == 0, name
    detach_masks(model)
