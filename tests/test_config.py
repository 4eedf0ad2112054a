from pathlib import Path

import pytest

from gpt_tickets.config import ConfigError, RunConfig, apply_overrides, config_from_dict, load_config

CONFIGS = sorted(Path(__file__).resolve().parents[1].joinpath("configs").rglob("*.yaml"))
RUN_CONFIGS = [p for p in CONFIGS if not {"accelerate", "lm_eval"} & set(p.parts)]  # those two: other tools' YAML


def test_configs_folder_is_not_empty():
    assert any(p.name == "tiny.yaml" for p in RUN_CONFIGS)


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.name)
def test_every_yaml_in_configs_validates(path):
    from gpt_tickets.config.schema import control_entry
    from gpt_tickets.lottery.branches import get_branch
    from gpt_tickets.lottery.branches.runner import control_params

    cfg = load_config(path)
    control_params(cfg)  # every control's parameters are checked against the run, as find does before writing
    assert isinstance(cfg, RunConfig)
    names = [control_entry(entry)[0] for entry in cfg.controls]
    assert [get_branch(name).name for name in names] == names  # the branches a run ends with exist


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


def test_runs_of_0_2_keep_their_fingerprint():
    """Keys added since 0.2 enter the fingerprint only when set: a 0.2 run directory resumes under this version."""
    assert load_config(None, []).fingerprint() == "4e1c3135693f01a5"  # computed by gpt_tickets 0.2.0
    assert load_config(None, ["--prune.rewind_step", "5", "--seed", "3"]).fingerprint() == "f3a6caa6df38b3a8"
    for changed in (["--prune.retrain", "finetune"], ["--prune.score", "normalized_magnitude"]):
        assert load_config(None, changed).fingerprint() != "4e1c3135693f01a5", changed


def test_fingerprint_ignores_output_dir_but_not_hyperparameters():
    a, b = load_config(None, ["--output_dir", "x"]), load_config(None, ["--output_dir", "y"])
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != load_config(None, ["--prune.fraction", "0.3"]).fingerprint()
    assert a.fingerprint() == load_config(None, ["--controls", "[]"]).fingerprint()  # each control is its own branch


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
        (["--train.mixed_precision", "no"], r"train\.mixed_precision=False must be of type str; quote it, e\.g\. "
         r"train\.mixed_precision: 'no'"),
        (["--model.init", "pretrained"], r"model\.name_or_path is required"),
        (["--data.source", "files"], r"data\.train_files must list at least one file"),
        (["--controls", "[random_prune, random_prune]"], r"controls=\['random_prune', 'random_prune'\] lists a branch"),
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


CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
# file -> (num_processes in all, num_machines); a new launcher config must be added here to be checked.
ACCELERATE_CONFIGS = {"ddp_1node_8gpu.yaml": (8, 1), "multinode_2x8gpu.yaml": (16, 2)}


def test_every_accelerate_config_is_checked() -> None:
    assert sorted(p.name for p in (CONFIG_DIR / "accelerate").glob("*.yaml")) == sorted(ACCELERATE_CONFIGS)


@pytest.mark.parametrize("name", sorted(ACCELERATE_CONFIGS))
def test_accelerate_configs_load_as_accelerate_launch_reads_them(name: str) -> None:
    """``accelerate launch --config_file`` refuses unknown keys only at launch time, on the cluster: check here."""
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.utils import DistributedType

    launcher = load_config_from_file(str(CONFIG_DIR / "accelerate" / name))
    assert isinstance(launcher, ClusterConfig)
    assert launcher.distributed_type == DistributedType.MULTI_GPU
    assert (launcher.num_processes, launcher.num_machines) == ACCELERATE_CONFIGS[name]
    assert launcher.num_processes % launcher.num_machines == 0, "accelerate runs num_processes / num_machines per node"
    assert 0 <= launcher.machine_rank < launcher.num_machines
    assert launcher.mixed_precision == "bf16"
    if launcher.num_machines > 1:
        assert launcher.main_process_ip and launcher.main_process_port
        assert launcher.rdzv_backend == "static"


def test_gpt2_small_config_builds_a_124m_model() -> None:
    """The research config must describe GPT-2 small; counted on the meta device, so nothing is allocated."""
    import torch
    from transformers import AutoModelForCausalLM

    from gpt_tickets.models.build import check_context, scratch_config

    cfg = load_config(CONFIG_DIR / "gpt2_small_wikitext103.yaml")
    config = scratch_config(cfg.model, vocab_size=cfg.data.vocab_size)
    check_context(cfg.data.block_size, config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert next(model.parameters()).is_meta
    assert 120_000_000 <= sum(p.numel() for p in model.parameters()) <= 130_000_000


@pytest.mark.parametrize(
    "name, overrides, processes, layout",
    [
        ("gpt2_small_wikitext103.yaml", [], 1, (8, 8)),
        ("gpt2_small_wikitext103.yaml", [], 8, (8, 1)),
        ("gpt2_small_wikitext103.yaml", ["--train.micro_batch_size", "4"], 16, (4, 1)),
        ("gpt2_finetune_wikitext2.yaml", [], 1, (8, 4)),
        ("gpt2_finetune_wikitext2.yaml", ["--train.micro_batch_size", "4"], 8, (4, 1)),
    ],
)
def test_research_configs_launch_as_their_headers_say(
    name: str, overrides: list[str], processes: int, layout: tuple[int, int]
) -> None:
    """The launch lines in each config's header give (micro-batch per GPU, accumulation) for its global batch."""
    assert load_config(CONFIG_DIR / name, overrides).train.batch_layout(processes) == layout
