import pytest
import torch
import torch.nn.utils.prune as torch_prune
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from gpt_tickets.config import ConfigError
from gpt_tickets.models.families import prunable_weights
from gpt_tickets.sparsity.apply import MaskedParameters
from gpt_tickets.sparsity.masks import Mask
from gpt_tickets.sparsity.report import sparsity_report
from gpt_tickets.sparsity.scores import Score, magnitude
from gpt_tickets.sparsity.select import magnitude_prune, prune

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


def pruned_tiny_gpt2(dtype: torch.dtype) -> tuple[GPT2LMHeadModel, Mask]:
    model = tiny_gpt2()
    mask = Mask.ones_like(model, prunable_weights(model, ["attention", "mlp"]))
    mask = magnitude_prune(dict(model.named_parameters()), mask, 0.6, "global")
    return model.to(dtype), mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_masked_parameters_zero_exactly_the_pruned_weights_and_grads(dtype):
    model, mask = pruned_tiny_gpt2(dtype)
    names = list(mask)
    for name in names[1:]:  # the first weight has no gradient (unused this step): it is skipped
        model.get_parameter(name).grad = torch.randn_like(model.get_parameter(name))
    weights = {n: model.get_parameter(n).detach().clone() for n in names}
    grads = {n: model.get_parameter(n).grad.clone() for n in names[1:]}
    masked = MaskedParameters(model, mask)
    masked.zero_grads()
    masked.zero_weights()
    assert model.get_parameter(names[0]).grad is None
    for name, m in mask.items():
        param = model.get_parameter(name)
        assert param.dtype == dtype and m.dtype == torch.bool
        assert not param[~m].any() and torch.equal(param[m], weights[name][m])  # survivors bitwise unchanged
        if name in grads:
            assert not param.grad[~m].any() and torch.equal(param.grad[m], grads[name][m])
    MaskedParameters(model, Mask()).zero_grads()  # an empty mask (a dense round) is a no-op


def test_masks_follow_their_parameters_to_another_device():
    """The parameters stay the same objects, moved (as ``model.to("cuda")`` does); "meta" stands in for a GPU."""
    model, mask = pruned_tiny_gpt2(torch.float32)
    masked = MaskedParameters(model, mask)
    swapping = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)  # CPU -> meta keeps the Parameter objects
    try:
        model.to("meta")
    finally:
        torch.__future__.set_swap_module_params_on_conversion(swapping)
    masked.follow_devices()
    assert all(param.device.type == "meta" and m.device.type == "meta" for param, m in masked.pairs)
    for param, _ in masked.pairs:
        param.grad = torch.ones_like(param)
    masked.zero_grads()
    masked.zero_weights()
    assert all(m.device.type == "cpu" for m in mask.values())  # the caller's mask is not moved


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


# ------------------------------------------------------------------------------------------------ radix select
# The reference: the bisection over float32 bit patterns that selection used before the radix select, kept here
# unchanged (~31 counting passes, obviously correct) so the new selection can be checked bitwise against it.

_INF_BITS = 0x7F800000


def _reference_bits(score: Score, name: str, weight: torch.Tensor) -> torch.Tensor:
    return score(name, weight).contiguous().view(torch.int32)


def _reference_count_at_most(weights, keep, score, bits: int) -> int:
    return sum(int((keep[n] & (_reference_bits(score, n, w) <= bits)).sum()) for n, w in weights.items())


def _reference_kth_smallest_bits(weights, keep, score, k: int) -> int:
    lo, hi = 0, _INF_BITS
    while lo < hi:
        mid = (lo + hi) // 2
        if _reference_count_at_most(weights, keep, score, mid) >= k:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _reference_prune_group(weights, mask, fraction, score):
    keep = {n: mask[n].to(w.device) for n, w in weights.items()}
    n_prune = round(fraction * sum(int(m.sum()) for m in keep.values()))
    if n_prune == 0:
        return {n: m.clone() for n, m in keep.items()}
    cut = _reference_kth_smallest_bits(weights, keep, score, n_prune)
    ties_left = n_prune - _reference_count_at_most(weights, keep, score, cut - 1)
    new = {}
    for n, w in weights.items():
        bits = _reference_bits(score, n, w)
        survives = keep[n] & (bits > cut)
        tied = (keep[n] & (bits == cut)).flatten().nonzero().squeeze(1)
        kept_ties = tied[ties_left:]
        ties_left = max(0, ties_left - tied.numel())
        survives.view(-1)[kept_ties] = True
        new[n] = survives
    return new


def reference_prune(weights, mask: Mask, fraction: float, scope: str, score: Score = magnitude) -> Mask:
    groups = [list(mask)] if scope == "global" else [[n] for n in mask]
    new = Mask()
    for group in groups:
        for name, keep in _reference_prune_group({n: weights[n] for n in group}, mask, fraction, score).items():
            new[name] = keep.cpu()
    return new


def tied_weights(seed: int) -> dict[str, torch.Tensor]:
    """Random matrices of odd shapes with planted ties: equal magnitudes of both signs, exact zeros, denormals, and
    neighbours of 0.5 that share its high 16 bits (so only the second histogram tells them apart)."""
    g = torch.Generator().manual_seed(seed)
    neighbours = (torch.tensor(0.5).view(torch.int32) + torch.arange(1, 6, dtype=torch.int32)).view(torch.float32)
    planted = torch.cat([torch.tensor([0.0, -0.0, 1e-40, -1e-40, 0.5, -0.5, 0.25, 1.0, -1.0]), neighbours, -neighbours])
    weights = {}
    for i, shape in enumerate([(8, 24), (1, 7), (16, 16), (3, 1), (32, 12), (5,)]):
        w = torch.randn(shape, generator=g)
        flat = w.view(-1)
        where = (torch.rand(flat.numel(), generator=g) < 0.4).nonzero().squeeze(1)
        flat[where] = planted[torch.randint(len(planted), (where.numel(),), generator=g)]
        weights[f"layer{i}.weight"] = w
    return weights


def ones(weights: dict[str, torch.Tensor]) -> Mask:
    return Mask({n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()})


def groups_of(mask: Mask, scope: str) -> list[list[str]]:
    return [list(mask)] if scope == "global" else [[n] for n in mask]


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("fraction", [0.05, 0.2, 0.5, 0.9])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_radix_select_is_bitwise_the_bisection(scope, fraction, seed):
    weights = tied_weights(seed)
    mask = ones(weights)
    for r in range(1, 5):
        expected = reference_prune(weights, mask, fraction, scope)
        new = magnitude_prune(weights, mask, fraction, scope)
        assert list(new) == list(expected)
        assert all(new[n].dtype == torch.bool and torch.equal(new[n], expected[n]) for n in new)
        for group in groups_of(mask, scope):  # the exact count: 1-(1-p)^r pruned, up to rounding each round
            assert sum(int(new[n].sum()) for n in group) == expected_remaining(
                sum(new[n].numel() for n in group), fraction, r
            )
        mask = new
        for n, m in mask.items():  # IMP zeroes what it prunes: the pruned entries then all share bin 0
            weights[n] = weights[n] * m


def test_radix_select_is_the_bisection_for_any_score():
    def squared(name: str, w: torch.Tensor) -> torch.Tensor:  # not |w|, and ranked differently per matrix
        return w.float() ** 2 + (1.0 if name.startswith("layer0") else 0.0)

    weights = tied_weights(3)
    mask = ones(weights)
    for _ in range(3):
        new = prune(weights, mask, 0.3, "global", squared)
        assert all(torch.equal(new[n], m) for n, m in reference_prune(weights, mask, 0.3, "global", squared).items())
        mask = new


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.5, 0.9])
def test_equal_magnitudes_go_in_parameter_then_index_order(scope, fraction):
    weights = {"a": torch.full((4, 5), -0.3), "b": torch.full((7,), 0.3), "c": torch.full((3, 3), 0.3)}
    g = torch.Generator().manual_seed(0)
    mask = Mask({n: torch.rand(w.shape, generator=g) < 0.7 for n, w in weights.items()})
    new = magnitude_prune(weights, mask, fraction, scope)
    for group in groups_of(mask, scope):
        before = torch.cat([mask[n].flatten() for n in group])
        n_prune = round(fraction * int(before.sum()))
        expected = before.clone()
        expected[before.nonzero().squeeze(1)[:n_prune]] = False  # the first survivors, in order
        assert torch.equal(torch.cat([new[n].flatten() for n in group]), expected)


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5, 0.75])
def test_zeros_among_the_survivors_go_first(fraction):
    g = torch.Generator().manual_seed(0)
    weights = {n: torch.randn(6, 10, generator=g) for n in ("a", "b")}
    mask = Mask({n: torch.rand(6, 10, generator=g) < 0.8 for n in weights})
    for n, w in weights.items():
        w[~mask[n]] = 0.0  # pruned entries are zero, as in IMP
        w[torch.rand(6, 10, generator=g) < 0.3] = 0.0  # and so are some survivors
    new = magnitude_prune(weights, mask, fraction, "global")
    assert all(torch.equal(new[n], m) for n, m in reference_prune(weights, mask, fraction, "global").items())
    surviving = mask.num_remaining()
    assert surviving - new.num_remaining() == round(fraction * surviving)
    removed = torch.cat([weights[n][mask[n] & ~new[n]].abs() for n in weights])
    kept = torch.cat([weights[n][new[n]].abs() for n in weights])
    assert removed.max() <= kept.min()


def test_a_single_matrix_prunes_alike_in_both_scopes():
    weights = {"only": torch.randn(33, 17, generator=torch.Generator().manual_seed(0))}
    mask = ones(weights)
    for r in range(1, 4):
        new = magnitude_prune(weights, mask, 0.2, "global")
        assert torch.equal(new["only"], magnitude_prune(weights, mask, 0.2, "layer")["only"])
        assert torch.equal(new["only"], reference_prune(weights, mask, 0.2, "global")["only"])
        assert new.num_remaining() == expected_remaining(33 * 17, 0.2, r)
        mask = new


@pytest.mark.parametrize("survivors", [1, 2, 3])
@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_tiny_matrix_with_few_survivors(survivors, fraction):
    weights = {"w": torch.tensor([[0.3, -0.1], [0.2, 0.3]])}
    mask = Mask(w=torch.tensor([[True, False], [True, True]]))  # 0.3 and 0.3 tie
    mask["w"].view(-1)[mask["w"].flatten().nonzero().squeeze(1)[survivors:]] = False
    new = magnitude_prune(weights, mask, fraction, "global")
    assert survivors - new.num_remaining() == round(fraction * survivors)
    assert torch.equal(new["w"], reference_prune(weights, mask, fraction, "global")["w"])
    assert new["w"] is not mask["w"]  # a copy even when nothing is pruned


def test_negative_or_non_float32_scores_are_refused():
    weights = {"w": torch.randn(4, 4)}
    with pytest.raises(ValueError, match="negative"):
        prune(weights, ones(weights), 0.5, "global", lambda name, w: w - 10)
    with pytest.raises(TypeError, match="float32"):
        prune(weights, ones(weights), 0.5, "global", lambda name, w: w.double().abs())


@pytest.mark.parametrize("seed", [0, 1])
def test_pools_are_each_the_bisection_on_their_own(seed):
    """Pools at their own fractions select, bitwise, what the reference selects on each pool's weights alone."""
    from gpt_tickets.sparsity.select import Pool, prune_pools

    weights = tied_weights(seed)
    names = list(weights)
    pools = [Pool(tuple(names[0::2]), 0.2), Pool(tuple(names[1::2]), 0.6)]
    mask = ones(weights)
    for _ in range(3):
        new = prune_pools(weights, mask, pools)
        assert list(new) == names
        for pool in pools:
            alone = {n: weights[n] for n in pool.names}
            expected = reference_prune(alone, Mask({n: mask[n] for n in pool.names}), pool.fraction, "global")
            assert all(torch.equal(new[n], expected[n]) for n in pool.names)
        mask = new
