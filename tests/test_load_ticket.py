"""load_ticket: masks attached so fine-tuning stays sparse, and every damaged folder refused with one clear line."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from gpt_tickets.cli import main
from gpt_tickets.errors import TicketError
from gpt_tickets.sparsity.apply import detach_masks
from gpt_tickets.sparsity.masks import Mask
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


def _stray_weight(folder: Path) -> None:
    """Set one pruned weight non-zero in model.safetensors (the file load_ticket reads when there are both)."""
    masks = load_packed_masks(folder / "ticket_masks.safetensors")
    name = sorted(masks)[0]
    tensors = load_file(folder / "model.safetensors")
    flat = tensors[name].reshape(-1)
    flat[(~masks[name]).reshape(-1).nonzero()[0]] = 0.5
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


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


BAD_TICKETS = [
    ("no-masks", lambda f: (f / "ticket_masks.safetensors").unlink(), "ticket_masks.safetensors is missing"),
    ("no-ticket-config", lambda f: (f / "ticket_config.json").unlink(), "is not a gpt_tickets ticket"),
    ("stray-weight", _stray_weight, "is non-zero at 1 positions where its mask is 0"),
    ("mask-shape", _masks_of_a_different_model, "(masks of a different model?)"),
    ("mask-no-such-weight", _masks_for_missing_weight, "which the model does not have"),
    ("masks-of-another-ticket", _masks_of_a_different_ticket, "masks of a different ticket?"),
    ("format-version", lambda f: _rewrite_json(f / "ticket_config.json", format_version=2), "format_version 2"),
    ("format-version-str", lambda f: _rewrite_json(f / "ticket_config.json", format_version="1"), "format_version"),
    ("weights-format", lambda f: _rewrite_json(f / "ticket_config.json", weights_format="pickle"), "'pickle'"),
    ("truncated-model", _truncate("model.safetensors"), "model.safetensors is not a readable safetensors file"),
    ("truncated-masks", _truncate("ticket_masks.safetensors"), "ticket_masks.safetensors is not a readable"),
    ("not-json", lambda f: (f / "ticket_config.json").write_text("{"), "ticket_config.json is not valid JSON"),
]


@pytest.mark.parametrize("damage, message", [b[1:] for b in BAD_TICKETS], ids=[b[0] for b in BAD_TICKETS])
def test_damaged_ticket_is_refused_with_one_line(ticket, damage, message):
    damage(ticket)
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
