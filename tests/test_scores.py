"""Scores and scopes of IMP's selection: the scale-normalised score, per-group fractions and per-kind sparsity."""

import pytest
import torch
from safetensors.torch import load_file

from gpt_tickets import lottery
from gpt_tickets.config import ConfigError, load_config
from gpt_tickets.config.schema import SCORE_NAMES
from gpt_tickets.models.families import prunable_weights
from gpt_tickets.sparsity.masks import Mask
from gpt_tickets.sparsity.report import sparsity_report, weight_group, weight_kind
from gpt_tickets.sparsity.scores import SCORES, magnitude, normalized_magnitude
from gpt_tickets.sparsity.select import Pool, group_pools, magnitude_prune, prune, prune_pools

from .conftest import MICRO
from .test_pruning import expected_remaining, tiny_gpt2


def full(weights: dict[str, torch.Tensor]) -> Mask:
    return Mask({n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()})


def remaining_by_group(mask: Mask, model_type: str = "gpt2") -> dict[str, tuple[int, int]]:
    """group -> (surviving, total) entries."""
    counts: dict[str, tuple[int, int]] = {}
    for name, m in mask.items():
        kept, total = counts.get(weight_group(model_type, name), (0, 0))
        counts[weight_group(model_type, name)] = (kept + int(m.sum()), total + m.numel())
    return counts


def micro_run(tmp_path, *overrides: str) -> tuple[lottery.RunDir, object]:
    cfg = load_config(None, [*MICRO, "--output_dir", str(tmp_path / "run"), "--controls", "[]", *overrides])
    lottery.find_ticket(cfg)
    return lottery.RunDir(cfg.output_dir), cfg


# ------------------------------------------------------------------------------------------------ scores


def test_normalized_score_picks_what_a_hand_computation_says():
    """a has RMS 2.5 (scores .4 .8 .8 1.6); b, at 10x the scale, has RMS 30 (scores 1/3 1/3 1 5/3)."""
    weights = {"a": torch.tensor([[1.0, -2.0, 2.0, 4.0]]), "b": torch.tensor([[10.0, -10.0, 30.0, 50.0]])}
    assert torch.equal(normalized_magnitude("a", weights["a"]), torch.tensor([[0.4, 0.8, 0.8, 1.6]]))
    assert torch.equal(normalized_magnitude("b", weights["b"]), torch.tensor([[10.0, 10.0, 30.0, 50.0]]) / 30)
    mask = full(weights)
    normalized = prune(weights, mask, 3 / 8, "global", normalized_magnitude)  # 1/3, 1/3 and 0.4 go
    assert normalized["a"].tolist() == [[False, True, True, True]]
    assert normalized["b"].tolist() == [[False, False, True, True]]
    plain = prune(weights, mask, 3 / 8, "global", magnitude)  # |w|: 1, 2, 2 go, all from the small matrix
    assert plain["a"].tolist() == [[False, False, False, True]]
    assert plain["b"].tolist() == [[True, True, True, True]]


def test_pruned_zeros_do_not_shrink_the_scale():
    """Earlier rounds' pruned entries are exact zeros: the RMS is over the survivors only."""
    w = torch.tensor([[1.0, 0.0, -2.0], [0.0, 2.0, 4.0]])
    assert torch.equal(normalized_magnitude("w", w), torch.tensor([[0.4, 0.0, 0.8], [0.0, 0.8, 1.6]]))


def test_normalized_score_is_invariant_to_scale_and_size():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(24, 40, generator=g)
    scores = normalized_magnitude("w", w)
    assert torch.equal(normalized_magnitude("w", 2.0 * w), scores)  # a power of two scales exactly
    torch.testing.assert_close(normalized_magnitude("w", 10.0 * w), scores, rtol=1e-6, atol=0)
    tiled = normalized_magnitude("w", torch.cat([w, -w]))  # twice the size, the same distribution
    torch.testing.assert_close(tiled, torch.cat([scores, scores]), rtol=1e-6, atol=0)
    weights = {"x": w, "y": torch.randn(16, 8, generator=g)}
    scaled = {"x": 10.0 * weights["x"], "y": 0.01 * weights["y"]}
    mask = full(weights)
    expected = prune(weights, mask, 0.3, "global", normalized_magnitude)
    assert all(torch.equal(m, expected[n]) for n, m in prune(scaled, mask, 0.3, "global", normalized_magnitude).items())
    assert prune(scaled, mask, 0.3, "global", magnitude)["y"].sum() == 0  # |w| strips the small matrix whole


def test_zero_matrix_scores_zero_and_prunes():
    zero = torch.zeros(3, 5)
    scores = normalized_magnitude("z", zero)
    assert scores.dtype == torch.float32 and torch.equal(scores, zero)
    weights = {"z": zero, "w": torch.ones(3, 5)}
    new = prune(weights, full(weights), 0.5, "global", normalized_magnitude)
    assert int(new["z"].sum()) == 0 and int(new["w"].sum()) == 15  # 15 of 30: the zeros first


def test_bf16_weights_score_in_float32():
    w = torch.randn(8, 8, generator=torch.Generator().manual_seed(1)).bfloat16()
    scores = normalized_magnitude("w", w)
    assert scores.dtype == torch.float32 and torch.equal(scores, normalized_magnitude("w", w.float()))


def test_every_config_score_has_a_function():
    assert tuple(SCORES) == SCORE_NAMES


# ------------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--prune.score", "magnitde"], "prune.score='magnitde' is not allowed; did you mean magnitude?"),
        (
            ["--prune.group_fractions", "{embeddings: 0.2}"],
            "key='embeddings' is not allowed; choose one of attention, mlp",
        ),
        (["--prune.group_fractions", "{mlp: 0}"], "prune.group_fractions.mlp=0 must be a number in (0, 1)"),
        (["--prune.group_fractions", "{mlp: 1}"], "prune.group_fractions.mlp=1 must be a number in (0, 1)"),
        (["--prune.group_fractions", "{mlp: 1.0}"], "prune.group_fractions.mlp=1.0 must be a number in (0, 1)"),
        (["--prune.group_fractions", "{mlp: high}"], "prune.group_fractions.mlp='high' must be a number in (0, 1)"),
        (["--prune.group_fractions", "{}"], "prune.group_fractions is empty"),
        (["--prune.group_fractions", "[0.2]"], "prune.group_fractions=[0.2] must be a mapping"),
    ],
)
def test_bad_score_or_group_fractions_are_one_line(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_group_fractions_may_name_an_added_group():
    cfg = load_config(
        None, ["--prune.groups", "[attention, mlp, embeddings]", "--prune.group_fractions", "{embeddings: 0.1}"]
    )
    assert cfg.prune.group_fractions == {"embeddings": 0.1}


# ------------------------------------------------------------------------------------------------ pools


def test_listed_groups_prune_apart_and_the_rest_together():
    """attention at 0.2 on its own; mlp and embeddings (unlisted) ranked together at 0.5."""
    model = tiny_gpt2()
    mask = Mask.ones_like(model, prunable_weights(model, ["attention", "mlp", "embeddings"]))
    params = {n: p.detach() for n, p in model.named_parameters()}
    pools = group_pools(mask, "gpt2", 0.5, "global", {"attention": 0.2})
    rest = next(pool for pool in pools if pool.fraction == 0.5)
    assert sorted(p.fraction for p in pools) == [0.2, 0.5]
    assert {weight_group("gpt2", n) for n in rest.names} == {"mlp", "embeddings"}
    for r in range(1, 4):
        new = prune_pools(params, mask, pools, magnitude)
        assert list(new) == list(mask)
        counts = remaining_by_group(new)
        assert counts["attention"][0] == expected_remaining(counts["attention"][1], 0.2, r)
        pooled = [counts[g] for g in ("mlp", "embeddings")]
        assert sum(k for k, _ in pooled) == expected_remaining(sum(n for _, n in pooled), 0.5, r)
        dropped = torch.cat([params[n][~new[n]].abs() for n in rest.names])
        kept = torch.cat([params[n][new[n]].abs() for n in rest.names])
        assert dropped.max() <= kept.min()  # one ranking across mlp and embeddings
        mask = new


def test_layer_scope_prunes_each_matrix_by_its_group_fraction():
    model = tiny_gpt2()
    mask = Mask.ones_like(model, prunable_weights(model, ["attention", "mlp"]))
    params = {n: p.detach() for n, p in model.named_parameters()}
    pools = group_pools(mask, "gpt2", 0.5, "layer", {"mlp": 0.3})
    assert all(len(p.names) == 1 for p in pools) and len(pools) == len(mask)
    for r in range(1, 4):
        mask = prune_pools(params, mask, pools)
        for name, m in mask.items():
            fraction = 0.3 if weight_group("gpt2", name) == "mlp" else 0.5
            assert int(m.sum()) == expected_remaining(m.numel(), fraction, r)


def test_without_group_fractions_the_pools_are_the_scope():
    weights = {
        "transformer.h.0.attn.c_attn.weight": torch.randn(4, 12),
        "transformer.h.0.mlp.c_fc.weight": torch.randn(4, 16),
    }
    mask = full(weights)
    for scope in ("global", "layer"):
        new = prune_pools(weights, mask, group_pools(mask, "gpt2", 0.3, scope))
        assert all(torch.equal(m, magnitude_prune(weights, mask, 0.3, scope)[n]) for n, m in new.items())


def test_pools_must_cover_every_masked_weight_once():
    weights = {"a": torch.randn(3, 3), "b": torch.randn(3, 3)}
    with pytest.raises(ValueError, match="exactly once"):
        prune_pools(weights, full(weights), [Pool(("a",), 0.2)])
    with pytest.raises(ValueError, match="exactly once"):
        prune_pools(weights, full(weights), [Pool(("a", "b"), 0.2), Pool(("b",), 0.2)])
    with pytest.raises(ValueError, match=r"must be in \(0, 1\)"):
        Pool(("a",), 1.0)
    with pytest.raises(ValueError, match="mlp, which has no weights"):
        group_pools(["transformer.h.0.attn.c_attn.weight"], "gpt2", 0.2, "global", {"mlp": 0.3})


# ------------------------------------------------------------------------------------------------ per kind


def test_per_kind_pools_each_weight_kind_over_layers():
    model = tiny_gpt2()
    mask = Mask.ones_like(model, prunable_weights(model, ["attention", "mlp", "embeddings"]))
    mask["transformer.h.0.attn.c_proj.weight"][:4] = False  # 4 of 16 rows in layer 0; layer 1 untouched
    mask["transformer.h.1.mlp.c_fc.weight"][:] = False
    report = sparsity_report(mask, "gpt2")
    assert report.per_kind == {
        "transformer.wte": 0.0,
        "transformer.wpe": 0.0,
        "attn.c_attn": 0.0,
        "attn.c_proj": 4 * 16 / (2 * 16 * 16),
        "mlp.c_fc": 0.5,
        "mlp.c_proj": 0.0,
    }
    assert weight_kind("llama", "model.layers.11.self_attn.q_proj.weight") == "self_attn.q_proj"


# ------------------------------------------------------------------------------------------------ micro runs


def test_run_pruning_attention_only_leaves_the_mlp_dense(tmp_path):
    run, cfg = micro_run(tmp_path, "--prune.groups", "[attention]")
    results = lottery.RunResults.load(run.results)
    for r in range(cfg.prune.rounds + 1):
        mask = run.round_mask(r)
        assert {weight_group("gpt2", n) for n in mask} == {"attention"}
        report = sparsity_report(mask, "gpt2")
        assert report.groups == {"attention": 1 - expected_remaining(mask.numel(), 0.5, r) / mask.numel()}
        assert set(report.per_kind) == {"attn.c_attn", "attn.c_proj"}
        assert results.rounds[r].mlp_sparsity == 0.0
        assert results.rounds[r].attention_sparsity == report.groups["attention"]
    ticket = load_file(str(run.ticket / "model.safetensors"))
    assert all(ticket[n].count_nonzero() == ticket[n].numel() for n in ticket if ".mlp." in n and "weight" in n)


def test_run_with_group_fractions_prunes_each_group_by_its_own_share(tmp_path):
    run, cfg = micro_run(tmp_path, "--prune.group_fractions", "{attention: 0.2, mlp: 0.5}")
    for r in range(cfg.prune.rounds + 1):
        counts = remaining_by_group(run.round_mask(r))
        for group, fraction in {"attention": 0.2, "mlp": 0.5}.items():
            kept, total = counts[group]
            assert kept == expected_remaining(total, fraction, r)


def test_run_with_normalized_score_selects_as_the_hand_call(tmp_path, monkeypatch):
    """Round 1's mask is ``prune(round 0's trained weights, full mask, p, global, normalized_magnitude)``.

    A spy reads round 0's trained weights when round 1 prunes (round 0's are kept, for the one-shot baselines).
    """
    run = lottery.RunDir(tmp_path / "run")
    trained: dict[str, torch.Tensor] = {}
    original = lottery.imp.prune_pools

    def spy(weights, mask, pools, score):
        trained.update(load_file(str(run.round(0) / "trained.safetensors")))
        return original(weights, mask, pools, score=score)

    monkeypatch.setattr(lottery.imp, "prune_pools", spy)
    _, cfg = micro_run(tmp_path, "--prune.score", "normalized_magnitude", "--prune.rounds", "1")
    assert trained and (run.round(0) / "trained.safetensors").exists()
    round_0 = run.round_mask(0)
    expected = prune(trained, round_0, cfg.prune.fraction, "global", normalized_magnitude)
    round_1 = run.round_mask(1)
    assert list(round_1) == list(expected)
    assert all(torch.equal(round_1[n], expected[n]) for n in expected)
    plain = prune(trained, round_0, cfg.prune.fraction, "global", magnitude)
    assert any(not torch.equal(round_1[n], plain[n]) for n in plain)  # the score made a difference
