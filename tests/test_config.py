from pathlib import Path

import pytest

from gpt_tickets.config import ConfigError, RunConfig, apply_overrides, config_from_dict, load_config

CONFIGS = sorted(Path(__file__).resolve().parents[1].joinpath("configs").rglob("*.yaml"))
RUN_CONFIGS = [p for p in CONFIGS if "accelerate" not in p.parts]


def test_configs_folder_is_not_empty():
    assert any(p.name == "tiny.yaml" for p in RUN_CONFIGS)


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.name)
def test_every_yaml_in_configs_validates(path):
    assert isinstance(load_config(path), RunConfig)


def test_tiny_yaml_is_the_embedded_default():
    tiny = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
    assert load_config(tiny) == load_config(None) == RunConfig()


def test_dotted_overrides_both_spellings():
    cfg = load_config(None, ["--prune.rounds", "3", "--train.lr=3e-4", "--prune.scope", "layer"])
    assert (cfg.prune.rounds, cfg.train.lr, cfg.prune.scope) == (3, 3e-4, "layer")


def test_overrides_do_not_mutate_input():
    data = {"prune": {"rounds": 2}}
    apply_overrides(data, ["--prune.rounds", "4"])
    assert data == {"prune": {"rounds": 2}}


def test_fingerprint_ignores_output_dir_but_not_hyperparameters():
    a, b = load_config(None, ["--output_dir", "x"]), load_config(None, ["--output_dir", "y"])
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != load_config(None, ["--prune.fraction", "0.3"]).fingerprint()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--prune.round", "3"], r"unknown config key prune\.round; did you mean prune\.rounds\?"),
        (["--trian.steps", "3"], r"unknown config key trian; did you mean train\?"),
        (["--prune.fraction", "1.0"], r"prune\.fraction=1\.0 must be in \(0, 1\)"),
        (["--prune.fraction", "0"], r"prune\.fraction=0\.0 must be in \(0, 1\)"),
        (["--prune.rounds", "0"], r"prune\.rounds=0 must be >= 1"),
        (["--prune.rewind_step", "301", "--train.steps", "300"], r"prune\.rewind_step=301 is beyond train\.steps=300"),
        (["--prune.scope", "row"], r"prune\.scope='row' is not allowed; choose one of global, layer"),
        (["--prune.groups", "[attention, lm_head]"], r"prune\.groups\[\]='lm_head' is not allowed"),
        (["--train.steps", "ten"], r"train\.steps='ten' must be of type int"),
        (["--model.init", "pretrained"], r"model\.name_or_path is required"),
        (["--data.source", "files"], r"data\.train_files must list at least one file"),
        (["--controls", "[random_pruning]"], r"controls\[\]='random_pruning' is not allowed"),
    ],
)
def test_bad_values_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config(None, overrides)
    assert "\n" not in str(err.value)


def test_section_must_be_a_mapping():
    with pytest.raises(ConfigError, match="prune must be a mapping"):
        config_from_dict({"prune": 3})


def test_missing_config_file():
    with pytest.raises(ConfigError, match="config file 'nope.yaml' does not exist"):
        load_config("nope.yaml")
