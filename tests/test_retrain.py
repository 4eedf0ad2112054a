"""Retraining variants (``prune.retrain``): what each pruned round starts from and the learning rates it trains at.

A spy on ``AdamW.step`` sees every optimizer step of a micro run in order: the LR it used and the weights just
before and after it, so a round's start weights and LR sequence are observed, not inferred.
"""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from gpt_tickets.config import load_config
from gpt_tickets.io import load_tensors
from gpt_tickets.lottery import find_ticket
from gpt_tickets.sparsity.masks import Mask

from .conftest import MICRO

STEPS = 8  # MICRO's train.steps
LR = 1e-3  # the default train.lr


def spied_run(tmp_path, monkeypatch, retrain: str) -> tuple[list[dict], list[str]]:
    """Run a micro IMP (rounds 0..2, no controls); one record per optimizer step: lr, weights before and after."""
    steps: list[dict] = []
    original = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        params = [p for group in self.param_groups for p in group["params"]]
        before = [p.detach().clone() for p in params]
        out = original(self, *args, **kwargs)
        after = [p.detach().clone() for p in params]
        steps.append({"lr": self.param_groups[0]["lr"], "before": before, "after": after})
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    run = tmp_path / "run"
    find_ticket(load_config(None, [*MICRO, "--output_dir", str(run), "--controls", "[]", "--prune.retrain", retrain]))
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(run / "ticket"))
    names = [n for n, _ in model.named_parameters()]  # the optimizer's parameter order
    assert len(steps) == 3 * STEPS and len(names) == len(steps[0]["before"])
    return steps, names


def weights(record: list[torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
    return dict(zip(names, record, strict=True))


def round_steps(steps: list[dict], r: int) -> list[dict]:
    return steps[r * STEPS : (r + 1) * STEPS]


@pytest.mark.parametrize("retrain", ["rewind", "lr_rewind", "finetune"])
def test_what_each_pruned_round_starts_from_and_its_learning_rates(tmp_path, monkeypatch, retrain):
    steps, names = spied_run(tmp_path, monkeypatch, retrain)
    run = tmp_path / "run"
    rewind = load_tensors(run / "rewind.safetensors")
    round_0_lrs = [s["lr"] for s in round_steps(steps, 0)]
    assert round_0_lrs == [LR * (STEPS - i) / STEPS for i in range(STEPS)]  # linear decay, no warm-up
    for r in (1, 2):
        mask = Mask.load(run / f"round_{r}" / "mask.safetensors")
        start = weights(round_steps(steps, r)[0]["before"], names)
        trained_before = weights(round_steps(steps, r - 1)[-1]["after"], names)  # round r-1's trained weights
        origin = rewind if retrain == "rewind" else trained_before
        for name, value in start.items():
            expected = origin[name] * mask[name] if name in mask else origin[name]
            assert torch.equal(value, expected), (retrain, r, name)
        lrs = [s["lr"] for s in round_steps(steps, r)]
        if retrain == "finetune":
            assert lrs == [round_0_lrs[-1]] * STEPS  # round 0's final LR throughout
        else:
            assert lrs == round_0_lrs  # the whole schedule replayed


def test_rewind_and_lr_rewind_differ_only_in_start_weights(tmp_path, monkeypatch):
    """Both replay the schedule; lr_rewind keeps the trained weights, so its round 1 starts elsewhere."""
    rewind, names = spied_run(tmp_path / "a", monkeypatch, "rewind")
    lr_rewind, _ = spied_run(tmp_path / "b", monkeypatch, "lr_rewind")
    round_0 = zip(rewind[STEPS - 1]["after"], lr_rewind[STEPS - 1]["after"], strict=True)
    assert all(torch.equal(a, b) for a, b in round_0)  # the same round 0
    start = zip(rewind[STEPS]["before"], lr_rewind[STEPS]["before"], strict=True)
    assert not all(torch.equal(a, b) for a, b in start)


def test_unknown_retrain_mode_names_the_allowed_ones():
    from gpt_tickets.errors import ConfigError

    with pytest.raises(ConfigError, match=r"prune.retrain='lr-rewind' is not allowed; did you mean lr_rewind\?"):
        load_config(None, ["--prune.retrain", "lr-rewind"])
