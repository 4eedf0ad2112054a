import pytest
import torch
import torch.nn.utils.prune as torch_prune
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from gpt_tickets.config import ConfigError
from gpt_tickets.models.families import prunable_weights
from gpt_tickets.sparsity.apply import MaskedParameters
from gpt_tickets.sparsity.masks import Mask
from gpt_tickets.sparsity.report import sparsity_report
from gpt_tickets.sparsity.select import magnitude_prune

TINY_DECODER = dict(
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    vocab_size=50,
)


def tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, n_positions=16, vocab_size=50))


def expected_remaining(total: int, fraction: float, rounds: int) -> int:
    remaining = total
    for _ in range(rounds):
        remaining -= round(fraction * remaining)
    return remaining


def test_gpt2_prunable_weights_are_attention_and_mlp_per_layer():
    names = [w.name for w in prunable_weights(tiny_gpt2(), ["attention", "mlp"])]
    assert names == [
        f"transformer.h.{i}.{m}.weight"
        for i in range(2)
        for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    ]


def test_embeddings_are_opt_in_and_tied_head_counted_once():
    names = [w.name for w in prunable_weights(tiny_gpt2(), ["embeddings"])]
    assert names == ["transformer.wte.weight", "transformer.wpe.weight"]


@pytest.mark.parametrize(
    "model",
    [
        lambda: LlamaForCausalLM(LlamaConfig(**TINY_DECODER)),
        lambda: Qwen2ForCausalLM(Qwen2Config(**TINY_DECODER)),
    ],
    ids=["llama", "qwen2"],
)
def test_other_decoder_families_prune_and_train(model):
    torch.manual_seed(0)
    model = model()
    weights = prunable_weights(model, ["attention", "mlp"])
    assert len(weights) == 2 * (4 + 3)  # q, k, v, o and gate, up, down per layer
    mask = magnitude_prune(dict(model.named_parameters()), Mask.ones_like(model, weights), 0.5, "global")
    masked = MaskedParameters(model, mask)
    masked.zero_weights()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.randint(0, 50, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    masked.zero_grads()
    optimizer.step()
    masked.zero_weights()
    for name, m in mask.items():
        assert not model.get_parameter(name)[~m].any()
    report = sparsity_report(mask, model.config.model_type)
    assert report.overall == pytest.approx(0.5, abs=1e-3)
    assert set(report.per_layer) == {"0", "1"}


def test_unknown_architecture_is_a_clear_error():
    model = tiny_gpt2()
    model.config.model_type = "mamba"
    with pytest.raises(ConfigError, match="model_type 'mamba' is not supported; supported: gpt2, llama"):
        prunable_weights(model, ["attention"])


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("fraction", [0.2, 0.5])
def test_sparsity_compounds_exactly(scope, fraction):
    model = tiny_gpt2()
    weights = prunable_weights(model, ["attention", "mlp"])
    mask = Mask.ones_like(model, weights)
    params = dict(model.named_parameters())
    for r in range(1, 6):
        mask = magnitude_prune(params, mask, fraction, scope)
        if scope == "global":
            assert mask.num_remaining() == expected_remaining(mask.numel(), fraction, r)
        else:
            for m in mask.values():
                assert int(m.sum()) == expected_remaining(m.numel(), fraction, r)
        sparsity = 1 - mask.num_remaining() / mask.numel()
        assert sparsity == pytest.approx(1 - (1 - fraction) ** r, abs=1e-3)


def test_pruned_weights_stay_pruned_and_smallest_go_first():
    model = tiny_gpt2()
    weights = {n: p.detach() for n, p in model.named_parameters()}
    mask = Mask.ones_like(model, prunable_weights(model, ["attention", "mlp"]))
    first = magnitude_prune(weights, mask, 0.3, "global")
    second = magnitude_prune(weights, first, 0.3, "global")
    for name in mask:
        assert not (second[name] & ~first[name]).any()
    kept = torch.cat([weights[n][first[n]].abs() for n in first])
    dropped = torch.cat([weights[n][~first[n]].abs() for n in first])
    assert dropped.max() <= kept.min()


@pytest.mark.parametrize("ties", [False, True])
def test_global_selection_matches_torch_global_unstructured(ties):
    """Bitwise the same masks as torch's L1 global pruning; with tied magnitudes the same count, and any
    disagreement only among weights tied at the cut (torch breaks ties by topk order, we by position)."""
    model = tiny_gpt2()
    if ties:  # integer weights: many equal magnitudes
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randint(-4, 5, p.shape))
    weights = prunable_weights(model, ["attention", "mlp"])
    mask = Mask.ones_like(model, weights)
    reference = tiny_gpt2()
    reference.load_state_dict(model.state_dict())
    targets = [(reference.get_submodule(w.name.rsplit(".", 1)[0]), "weight") for w in weights]
    params = {n: p.detach() for n, p in model.named_parameters()}
    for _ in range(3):
        torch_prune.global_unstructured(targets, pruning_method=torch_prune.L1Unstructured, amount=0.2)
        mask = magnitude_prune(params, mask, 0.2, "global")
        theirs = {w.name: module.weight_mask.bool() for w, (module, _) in zip(weights, targets, strict=True)}
        assert mask.num_remaining() == sum(int(m.sum()) for m in theirs.values())
        if not ties:
            assert all(torch.equal(mask[n], theirs[n]) for n in mask)
        else:
            differ = torch.cat([params[n][mask[n] != theirs[n]].abs() for n in mask])
            pruned = torch.cat([params[n][~mask[n]].abs() for n in mask])
            assert differ.numel() == 0 or bool((differ == pruned.max()).all())
        if ties:  # go on from the same masks, so the next round compares like with like
            mask = Mask(theirs)


def test_mask_refuses_non_binary_and_round_trips(tmp_path):
    mask = Mask()
    with pytest.raises(ValueError, match="other than 0 and 1"):
        mask["w"] = torch.tensor([0.0, 0.5])
    mask["w"] = torch.tensor([[1, 0], [0, 1]])
    mask.save(tmp_path / "m.safetensors")
    loaded = Mask.load(tmp_path / "m.safetensors")
    assert loaded["w"].dtype == torch.bool and torch.equal(loaded["w"], mask["w"])


def _updated(value):
    mask = Mask()
    mask.update({"w": value})
    return mask


def _defaulted(value):
    mask = Mask()
    mask.setdefault("w", value)
    return mask


@pytest.mark.parametrize(
    "fill",
    [lambda v: Mask({"w": v}), lambda v: Mask(w=v), lambda v: Mask([("w", v)]), _updated, _defaulted],
    ids=["dict", "keywords", "pairs", "update", "setdefault"],
)
def test_every_way_of_filling_a_mask_checks_for_0_and_1(fill):
    with pytest.raises(ValueError, match="other than 0 and 1"):
        fill(torch.tensor([0.0, 2.0]))
    mask = fill(torch.tensor([0.0, 1.0]))
    assert mask["w"].dtype == torch.bool and mask["w"].tolist() == [False, True]


def test_sparsity_report_groups_and_layers():
    model = tiny_gpt2()
    mask = Mask.ones_like(model, prunable_weights(model, ["attention", "mlp"]))
    mask["transformer.h.1.mlp.c_fc.weight"] = torch.zeros_like(mask["transformer.h.1.mlp.c_fc.weight"])
    report = sparsity_report(mask, "gpt2")
    assert report.groups["attention"] == 0.0
    assert report.per_layer["1"]["mlp"] == 0.5  # c_fc and c_proj have the same size
    assert report.per_layer["0"]["mlp"] == 0.0
    assert report.overall == pytest.approx(16 * 64 / mask.numel())
