"""The exported ticket: repo layout, bit-packed masks, the compact encoding and the model card."""

import json
import os
import stat
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from gpt_tickets.lottery import RunDir
from gpt_tickets.sparsity.apply import detach_masks
from gpt_tickets.sparsity.masks import Mask
from gpt_tickets.tickets.bitpack import pack_bits, packed_size, unpack_bits
from gpt_tickets.tickets.card import card_metadata
from gpt_tickets.tickets.encoding import compact_tensors, dense_tensors, load_packed_masks
from gpt_tickets.tickets.export import export_ticket
from gpt_tickets.tickets.format import read_ticket_config
from gpt_tickets.tickets.load import load_ticket

from .conftest import table_rows


def run_artifacts(run: Path):
    """What export_ticket takes, as the micro run left it: its config, ticket config, final mask and ticket model."""
    cfg = RunDir(run).stored_config()
    summary = json.loads((run / "results.json").read_text())
    rounds = len(summary["rounds"]) - 1
    mask = Mask.load(run / f"round_{rounds}" / "mask.safetensors")
    model = AutoModelForCausalLM.from_pretrained(run / "ticket")
    tcfg = read_ticket_config(run / "ticket")
    return cfg, tcfg, mask, model, AutoTokenizer.from_pretrained(run / "ticket")


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("shape", [(1,), (7,), (8,), (9,), (3, 5), (64, 96), (2, 3, 11), (0,)])
def test_pack_bits_is_numpy_packbits_little_and_round_trips(shape):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(0)) > 0.3
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_size(mask.numel())
    np.testing.assert_array_equal(packed.numpy(), np.packbits(mask.numpy().reshape(-1), bitorder="little"))
    assert torch.equal(unpack_bits(packed, shape), mask)


def test_unpack_bits_refuses_a_byte_count_that_does_not_fit_the_shape():
    with pytest.raises(ValueError, match="needs 2 uint8 bytes"):
        unpack_bits(torch.zeros(3, dtype=torch.uint8), (3, 5))


def test_compact_encoding_stores_kept_values_only_and_decodes_exactly():
    weight = torch.randn(40, 50)
    mask = Mask({"w": torch.rand(40, 50) > 0.9})
    dense = {"w": weight * mask["w"], "b": torch.randn(50)}
    compact = compact_tensors(dense, mask)
    assert compact["w"].shape == (int(mask["w"].sum()),) and torch.equal(compact["b"], dense["b"])
    assert_bitwise_equal(dense_tensors(compact, mask), dense)


def test_run_exports_the_documented_repo_layout(micro_run):
    ticket = micro_run / "ticket"
    names = {p.name for p in ticket.iterdir()}
    assert {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "ticket_config.json",
        "ticket_masks.safetensors",
        "ticket_compact.safetensors",
        "README.md",
    } <= names
    assert not any(n.endswith((".bin", ".pt", ".py", ".tmp")) for n in names)

    summary = json.loads((micro_run / "results.json").read_text())
    final = summary["rounds"][-1]
    mask = Mask.load(micro_run / f"round_{final['round']}" / "mask.safetensors")
    with safe_open(str(ticket / "ticket_masks.safetensors"), framework="pt") as f:
        assert sorted(f.keys()) == sorted(mask)  # one tensor per pruned weight, named after it
        for name in mask:
            packed = f.get_tensor(name)
            assert packed.dtype == torch.uint8 and packed.numel() == packed_size(mask[name].numel())
    loaded = load_packed_masks(ticket / "ticket_masks.safetensors")
    assert all(torch.equal(loaded[n], mask[n]) for n in mask)

    tcfg = json.loads((ticket / "ticket_config.json").read_text())
    assert tcfg["format_version"] == 1 and tcfg["weights_format"] == "both"
    assert tcfg["rounds"] == 2 and tcfg["fraction_per_round"] == 0.5 and tcfg["scope"] == "global"
    assert tcfg["rewind_step"] == 3 and tcfg["seed"] == 0 and tcfg["base_model"] is None
    assert tcfg["base_config"]["model_type"] == "gpt2"
    assert tcfg["sparsity"]["overall"] == pytest.approx(0.75, abs=1e-9)  # 1 - (1 - 0.5)^2
    assert set(tcfg["sparsity"]) >= {"overall", "attention", "mlp"} and set(tcfg["per_layer_sparsity"]) == {"0", "1"}
    assert tcfg["gpt_tickets_version"] == version("gpt-tickets")
    assert (
        tcfg["val_perplexity"] == json.loads((micro_run / "results.json").read_text())["rounds"][-1]["val_perplexity"]
    )


def test_model_card_metadata_parses_with_huggingface_hub(micro_run):
    card = ModelCard.load(micro_run / "ticket" / "README.md")
    summary = json.loads((micro_run / "results.json").read_text())
    final = summary["rounds"][-1]
    assert card.data.library_name == "transformers"
    assert {"lottery-ticket", "sparse", "pruned"} <= set(card.data.tags)
    (result,) = card.data.eval_results
    assert result.metric_type == "perplexity"
    assert result.metric_value == pytest.approx(final["val_perplexity"], rel=1e-6)
    assert result.dataset_type == "pydoc_data.topics" and result.dataset_split == "validation"
    for text in ("from gpt_tickets import load_ticket", "AutoModelForCausalLM.from_pretrained"):
        assert text in card.text
    rows = table_rows(card.text)
    assert rows[0][:2] == ["round", "run"]
    phases = summary["rounds"] + summary["branches"]  # the run's table: every round and control, in order
    assert [row[5] for row in rows[1 : 1 + len(phases)]] == [f"{r['val_perplexity']:.2f}" for r in phases]


def test_model_card_names_a_hub_base_model_and_its_dataset(micro_run):
    cfg, tcfg, *_ = run_artifacts(micro_run)
    cfg.model.init, cfg.model.name_or_path = "pretrained", "openai-community/gpt2"
    cfg.data.source, cfg.data.name, cfg.data.config_name = "hub", "wikitext", "wikitext-2-raw-v1"
    data = card_metadata(cfg, tcfg)
    assert data.base_model == "openai-community/gpt2" and data.datasets == ["wikitext"]
    (result,) = data.eval_results
    assert (result.dataset_type, result.dataset_config, result.dataset_split) == (
        "wikitext",
        "wikitext-2-raw-v1",
        "validation",
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dense_compact_and_both_load_back_bitwise_equal(micro_run, tmp_path, dtype):
    cfg, _, mask, model, tokenizer = run_artifacts(micro_run)
    model = model.to(dtype)
    reference = state(model)
    for weights_format in ("dense", "compact", "both"):
        folder = export_ticket(model, tokenizer, mask, cfg, tmp_path / weights_format, weights_format=weights_format)
        has_dense = (folder / "model.safetensors").exists()
        assert has_dense == (weights_format != "compact")
        assert (folder / "ticket_compact.safetensors").exists() == (weights_format != "dense")
        loaded = load_ticket(folder)
        detach_masks(loaded)
        assert_bitwise_equal(state(loaded), reference)
        assert all(torch.equal(loaded.ticket.mask[n], mask[n]) for n in mask)
        assert loaded.lm_head.weight is loaded.transformer.wte.weight  # ties survive the compact path


def test_compact_file_holds_kept_values_plus_rest_of_model(micro_run):
    ticket = micro_run / "ticket"
    mask = load_packed_masks(ticket / "ticket_masks.safetensors")
    with (
        safe_open(str(ticket / "ticket_compact.safetensors"), framework="pt") as compact,
        safe_open(str(ticket / "model.safetensors"), framework="pt") as dense,
    ):
        assert set(compact.keys()) == set(dense.keys())
        for name in dense.keys():
            if name in mask:
                assert compact.get_slice(name).get_shape() == [int(mask[name].sum())]
            else:
                assert torch.equal(compact.get_tensor(name), dense.get_tensor(name))


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_exported_and_run_files_get_the_mode_of_any_new_file(micro_run, tmp_path, umask):
    """safetensors creates files 0600: a ticket copied to a shared folder must be as readable as its README."""
    cfg, _, mask, model, tokenizer = run_artifacts(micro_run)
    previous = os.umask(umask)
    try:
        folder = export_ticket(model, tokenizer, mask, cfg, tmp_path / "ticket", weights_format="both")
        mask.save(tmp_path / "mask.safetensors")
    finally:
        os.umask(previous)
    files = [*folder.iterdir(), tmp_path / "mask.safetensors"]
    assert {p.name for p in files} >= {"model.safetensors", "ticket_masks.safetensors", "ticket_compact.safetensors"}
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == {p.name: 0o666 & ~umask for p in files}


def test_a_compact_only_card_does_not_claim_plain_transformers(micro_run, tmp_path):
    cfg, _, mask, model, tokenizer = run_artifacts(micro_run)
    folder = export_ticket(model, tokenizer, mask, cfg, tmp_path / "t", weights_format="compact")
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name is None and card.data.pipeline_tag is None
    assert "holds only the compact encoding" in card.text and "AutoModelForCausalLM" not in card.text
    assert "pypi.org" not in card.text  # the package has no index page to link to
    dense = ModelCard.load(micro_run / "ticket" / "README.md")  # format both: plain transformers loads it
    assert (dense.data.library_name, dense.data.pipeline_tag) == ("transformers", "text-generation")
