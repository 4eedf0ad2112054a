"""N:M masks: each IMP round tightens toward N of every M inputs, the pattern holds after training, export and
load, and a ticket or a config that breaks it is refused in one line."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gpt_tickets.cli import main
from gpt_tickets.config import load_config
from gpt_tickets.errors import ConfigError, TicketError
from gpt_tickets.lottery import find_ticket
from gpt_tickets.sparsity.apply import detach_masks
from gpt_tickets.sparsity.masks import Mask, mask_checksum
from gpt_tickets.sparsity.nm import first_nm_violation, group_cap, kept_entries, prune_nm
from gpt_tickets.tickets import load as load_module
from gpt_tickets.tickets.encoding import load_packed_masks, save_packed_masks
from gpt_tickets.tickets.export import export_ticket
from gpt_tickets.tickets.load import load_ticket, load_ticket_tokenizer

from .conftest import MICRO

NM = ["--prune.structure", "nm", "--prune.nm", "2:4", "--controls", "[]", "--export.format", "both"]

LINEAR = "model.layers.0.mlp.up_proj.weight"  # nn.Linear: [out, in], inputs along dim 1
CONV1D = "transformer.h.0.mlp.c_fc.weight"  # GPT-2's Conv1D: [in, out], inputs along dim 0

# Two output units of eight inputs: two groups of four each. Ties keep the lower index.
WEIGHT = torch.tensor(
    [
        [0.1, -0.9, 0.5, 0.2, 1.0, 1.0, -1.0, 0.0],
        [3.0, 0.0, 0.0, -2.0, 0.5, 0.4, 0.3, -0.6],
    ]
)
KEEP_3_OF_4 = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 0], [1, 1, 0, 1, 1, 1, 0, 1]], dtype=torch.bool)
KEEP_2_OF_4 = torch.tensor([[0, 1, 1, 0, 1, 1, 0, 0], [1, 0, 0, 1, 1, 0, 0, 1]], dtype=torch.bool)
ORIENTATIONS = {"linear": ("llama", LINEAR, lambda t: t), "conv1d": ("gpt2", CONV1D, lambda t: t.T.contiguous())}


def _prune(model_type, name, weight, keep, r, rounds=2, n=2, m=4):
    return prune_nm({name: weight}, Mask({name: keep}), model_type, n, m, round=r, rounds=rounds)[name]


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_prune_nm_keeps_the_largest_magnitudes_of_every_group(orientation):
    model_type, name, layout = ORIENTATIONS[orientation]
    weight, full = layout(WEIGHT), torch.ones_like(layout(WEIGHT), dtype=torch.bool)
    round_1 = _prune(model_type, name, weight, full, 1)
    assert torch.equal(round_1, layout(KEEP_3_OF_4))
    assert torch.equal(_prune(model_type, name, weight, round_1, 2), layout(KEEP_2_OF_4))
    assert torch.equal(_prune(model_type, name, weight, full, 2), layout(KEEP_2_OF_4))  # 2:4 at once: the same


def test_an_entry_the_previous_round_pruned_stays_pruned_however_large():
    previous = torch.ones_like(WEIGHT, dtype=torch.bool)
    previous[1, 0] = False  # the largest |w| of all
    new = _prune("llama", LINEAR, WEIGHT, previous, 2)
    assert not new[1, 0] and torch.equal(new[1, :4], torch.tensor([False, True, False, True]))  # 0.0 (index 1), -2


def test_masks_nest_and_every_round_removes_its_share():
    """2:4 over 5 rounds: a weight keeps 90%, 80% ... 50%, every group floor or ceil of its mean (3.6 -> 3 or 4)."""
    weight = torch.randn(64, 32, generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(weight, dtype=torch.bool)
    for r in range(1, 6):
        new = _prune("llama", LINEAR, weight, mask, r, rounds=5)
        counts = new.reshape(-1, 4).sum(-1)
        assert not (new & ~mask).any()  # nested
        assert int(new.sum()) == kept_entries(weight.numel() // 4, 2, 4, r, 5) == round(weight.numel() * (1 - r / 10))
        assert int(counts.max()) == group_cap(2, 4, r, 5) and int(counts.min()) >= group_cap(2, 4, r, 5) - 1
        assert first_nm_violation(Mask({LINEAR: new}), "llama", group_cap(2, 4, r, 5), 4) is None
        mask = new
    assert torch.equal(mask.reshape(-1, 4).sum(-1), torch.full((64 * 8,), 2))  # round R: exactly N in every group


def test_the_groups_keeping_one_more_are_those_with_the_largest_next_entry():
    weight = torch.tensor([[4.0, 3.0, 0.1, 0.0], [4.0, 3.0, 2.0, 0.0]])  # next entries 0.1 and 2.0
    new = _prune("llama", LINEAR, weight, torch.ones_like(weight, dtype=torch.bool), 3, rounds=4)  # 2.5 per group
    assert new.sum(-1).tolist() == [2, 3] and not new[1, 3]


def test_a_violation_names_the_weight_output_and_inputs():
    keep = KEEP_2_OF_4.clone()
    keep[1, 5] = True
    assert first_nm_violation(Mask({LINEAR: keep}), "llama", 2, 4) == (
        f"weight {LINEAR!r} keeps 3 of the 4 inputs 4..7 of output 1, more than N=2"
    )
    conv = Mask({CONV1D: keep.T.contiguous()})
    assert "keeps 3 of the 4 inputs 4..7 of output 1" in first_nm_violation(conv, "gpt2", 2, 4)
    assert first_nm_violation(conv, "gpt2", 2, 3) == f"weight {CONV1D!r} has 8 inputs, which M=3 does not divide"


# ---------------------------------------------------------------------------------------------------- a real run


@pytest.fixture(scope="module")
def nm_run(tmp_path_factory) -> Path:
    """A micro run pruned toward 2:4 in 2 rounds (round 1: 3:4, round 2: 2:4), its ticket in both weight formats."""
    root = tmp_path_factory.mktemp("nm_run") / "run"
    find_ticket(load_config(None, [*MICRO, *NM, "--output_dir", str(root)]))
    return root


def _group_counts(mask: Mask, name: str) -> torch.Tensor:
    dim = 0 if name.startswith("transformer.h.") else 1  # Conv1D inputs along dim 0 (no embeddings pruned here)
    return mask[name].movedim(dim, -1).reshape(-1, 4).sum(-1)


def test_every_round_of_a_run_holds_its_pattern_and_nests(nm_run):
    masks = [Mask.load(nm_run / f"round_{r}" / "mask.safetensors") for r in range(3)]
    for r, kept in ((0, 4), (1, 3), (2, 2)):
        for name in masks[r]:
            assert torch.equal(_group_counts(masks[r], name), torch.full_like(_group_counts(masks[r], name), kept))
    assert all(not (masks[2][n] & ~masks[1][n]).any() for n in masks[2])


def test_trained_weights_are_zero_where_the_pattern_prunes(nm_run):
    mask = Mask.load(nm_run / "round_2" / "mask.safetensors")
    for folder in (nm_run / "round_2" / "trained.safetensors", nm_run / "ticket" / "model.safetensors"):
        weights = load_file(folder)
        for name, m in mask.items():
            assert int(weights[name][~m].count_nonzero()) == 0, (folder, name)
            assert int(weights[name][m].count_nonzero()) > 0.99 * int(m.sum())  # the kept entries trained


def test_the_ticket_records_the_pattern_and_loads_with_it(nm_run):
    ticket = nm_run / "ticket"
    assert json.loads((ticket / "ticket_config.json").read_text())["nm"] == "2:4"
    model = load_ticket(ticket)
    try:
        mask = Mask.load(nm_run / "round_2" / "mask.safetensors")
        assert model.ticket.config.nm == "2:4" and mask_checksum(model.ticket.mask) == mask_checksum(mask)
        assert first_nm_violation(model.ticket.mask, "gpt2", 2, 4) is None
        for name, m in model.ticket.mask.items():
            assert int(model.get_parameter(name).detach()[~m].count_nonzero()) == 0
    finally:
        detach_masks(model)


@pytest.fixture
def ticket(nm_run, tmp_path) -> Path:
    return Path(shutil.copytree(nm_run / "ticket", tmp_path / "ticket"))


def _rewrite_ticket_config(folder: Path, **changes) -> None:
    data = json.loads((folder / "ticket_config.json").read_text())
    data.update(changes)
    (folder / "ticket_config.json").write_text(json.dumps(data))


def _keep_one_more(folder: Path) -> str:
    """Keep a third entry in the first group of the first mask, with the new masks' checksum, in a dense-only ticket
    (the compact file counts the kept values): a ticket a broken exporter wrote, not a damaged file."""
    masks = load_packed_masks(folder / "ticket_masks.safetensors")
    name = sorted(masks)[0]
    masks[name][:4, 0] = torch.tensor([True, True, True, False])  # inputs 0..3 of output 0 (Conv1D: [in, out])
    save_packed_masks(masks, folder / "ticket_masks.safetensors")
    (folder / "ticket_compact.safetensors").unlink()
    _rewrite_ticket_config(folder, mask_checksum=mask_checksum(masks), weights_format="dense")
    return name


def _refused(folder: Path, monkeypatch) -> str:
    monkeypatch.setattr(load_module, "_load_weights", lambda *a: pytest.fail("a model was allocated"))
    with pytest.raises(TicketError) as err:
        load_ticket(folder)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_a_ticket_whose_masks_break_the_pattern_is_refused_on_load(ticket, monkeypatch):
    name = _keep_one_more(ticket)
    assert _refused(ticket, monkeypatch) == (
        f"the ticket's N:M pattern is 2:4, but weight {name!r} keeps 3 of the 4 inputs 0..3 of output 0, more than N=2"
    )


def test_a_ticket_claiming_a_tighter_pattern_is_refused_on_load(ticket, monkeypatch):
    _rewrite_ticket_config(ticket, nm="1:4")
    assert "the ticket's N:M pattern is 1:4, but weight " in _refused(ticket, monkeypatch)


@pytest.mark.parametrize("nm", ["2-4", "4:2", 24])
def test_a_malformed_pattern_in_ticket_config_is_refused(ticket, monkeypatch, nm):
    _rewrite_ticket_config(ticket, nm=nm)
    assert "ticket_config.json" in _refused(ticket, monkeypatch)


def test_a_mask_n_m_cannot_apply_to_is_refused_on_load(ticket, monkeypatch):
    masks = load_packed_masks(ticket / "ticket_masks.safetensors")
    masks["transformer.h.0.attn.c_attn.bias"] = torch.ones(96, dtype=torch.bool)
    save_packed_masks(masks, ticket / "ticket_masks.safetensors")
    _rewrite_ticket_config(ticket, mask_checksum=mask_checksum(masks))
    assert _refused(ticket, monkeypatch) == (
        "the ticket's N:M pattern is 2:4, but 'transformer.h.0.attn.c_attn.bias' is not a prunable weight of a "
        "gpt2 model"
    )


def test_a_ticket_without_the_pattern_entry_loads_as_before(ticket):
    data = json.loads((ticket / "ticket_config.json").read_text())
    del data["nm"]
    (ticket / "ticket_config.json").write_text(json.dumps(data))
    model = load_ticket(ticket)
    assert model.ticket.config.nm is None
    detach_masks(model)


def test_export_refuses_masks_that_break_the_recorded_pattern(nm_run, tmp_path):
    model = load_ticket(nm_run / "ticket")
    detach_masks(model)
    cfg = load_config(None, [*MICRO, *NM, "--output_dir", str(nm_run)])
    mask = Mask({n: m.clone() for n, m in model.ticket.mask.items()})
    name = sorted(mask)[0]
    mask[name][:, 0] = True  # the weights there are zero: only the pattern is broken
    with pytest.raises(TicketError, match=r"^the ticket's N:M pattern is 2:4, but weight .* more than N=2$"):
        export_ticket(model, load_ticket_tokenizer(nm_run / "ticket"), mask, cfg, tmp_path / "out")
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prune.nm", "4:2"], "prune.nm='4:2' keeps N=4 of every M=2; N must be in 1..M-1 (N >= M prunes nothing)"),
        (["--prune.nm", "4:4"], "prune.nm='4:4' keeps N=4 of every M=4; N must be in 1..M-1 (N >= M prunes nothing)"),
        (["--prune.nm", "0:4"], "N=0 keeps nothing"),
        (["--prune.nm", "2-4"], "prune.nm='2-4' is not N:M; write two positive integers N < M, e.g. 2:4"),
        (["--prune.nm", "a:b"], "prune.nm='a:b' is not N:M"),
        (["--prune.nm", "null"], "prune.nm is required with prune.structure=nm"),
        (["--prune.structure", "weights"], "prune.nm='2:4' applies to prune.structure=nm only, not weights"),
        (["--prune.nm", "2:3"], "prune.nm=2:3: M=3 does not divide the input size 32 of weight "),
        (
            ["--prune.nm", "2:64"],
            "prune.nm=2:64: M=64 does not divide the input size 32 of weight 'transformer.h.0.attn.c_attn.weight'",
        ),
    ],
    ids=["n-above-m", "n-equals-m", "n-zero", "dash", "letters", "missing", "not-nm-structure", "m-3", "m-64"],
)
def test_bad_nm_input_is_one_line_exit_2_nothing_written(tmp_path, capsys, args, message):
    run = tmp_path / "run"
    assert main(["find", *MICRO, *NM, "--output_dir", str(run), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not run.exists()


def test_a_yaml_pattern_is_text_not_a_base_60_number(tmp_path):
    path = tmp_path / "nm.yaml"
    path.write_text("prune:\n  structure: nm\n  nm: 2:4\n")  # YAML 1.1 reads an unquoted 2:4 as 124
    assert load_config(path).prune.nm_pattern() == (2, 4)
    with pytest.raises(ConfigError, match="prune.nm=124 must be of type str"):
        load_config(None, ["--prune.structure", "nm", "--prune.nm", "124"])
