"""The experiment contract (lm.config): one loader, one typed override parser, derived fields,
sweeps, and no jax for any of it."""

import math
import pathlib
import subprocess
import sys

import pytest

from lm import config as config_lib
from lm.cli import train as cli
from lm.runs import sweep

REPO = pathlib.Path(__file__).resolve().parent.parent
EXPERIMENTS = REPO / "experiments"
SHAKESPEARE = f"{EXPERIMENTS}/gpt_shakespeare_char.py:cpu"


def test_config_and_every_experiment_file_load_without_jax():
    """A typo in a flag should not wait for jax, orbax, grain and TFDS to import."""
    script = (
        "import sys, pathlib\n"
        "import lm.config as c\n"
        "for path in sorted(pathlib.Path('experiments').glob('*.py')):\n"
        "    module = c.load_module(path, needs=None)\n"
        "    for arg in module.ARGS:\n"
        "        if hasattr(module, 'get_study'):\n"
        "            c.study_configs(c.load_study(f'{path}:{arg}'))\n"
        "        if not hasattr(module, 'get_config'):\n"
        "            continue\n"
        "        c.load(f'{path}:{arg}').to_dict()\n"
        "        if hasattr(module, 'get_sweep'):\n"
        "            c.load_sweep(f'{path}:{arg}')\n"
        "heavy = ('jax', 'flax', 'orbax', 'grain', 'tensorflow_datasets', 'optax')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_unknown_key_lists_the_near_valid_keys():
    with pytest.raises(config_lib.ConfigError, match=r"'train.lrr'.*train\.lr"):
        config_lib.load(SHAKESPEARE, {"train.lrr": "1e-3"})
    with pytest.raises(config_lib.ConfigError, match=r"'trian.warmup_steps'.*train\.warmup_steps"):
        config_lib.load(SHAKESPEARE, {"trian.warmup_steps": "3"})
    with pytest.raises(config_lib.ConfigError, match="is a block, not a value"):
        config_lib.load(SHAKESPEARE, {"train": "1"})


def test_the_train_command_fails_on_a_typo_before_touching_anything(tmp_path):
    with pytest.raises(config_lib.ConfigError, match=r"'model.num_layer'.*model.num_layers"):
        cli.main(["train", "--config", SHAKESPEARE, "--workdir", str(tmp_path / "w"),
                  "--config.model.num_layer=3"])
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("key, text", [("train.steps", "abc"), ("train.steps", "2.5"),
                                       ("train.lr", "fast"), ("train.eval_at_start", "maybe")])
def test_wrong_type_names_the_key(key, text):
    with pytest.raises(ValueError, match=rf"--config.{key}='{text}': expected (a|an|true) "):
        config_lib.load(SHAKESPEARE, {key: text})


def test_overrides_parse_to_the_field_type():
    config = config_lib.load(SHAKESPEARE, {
        "train.steps": "12", "train.lr": "3e-4", "train.eval_at_start": "true",
        "model.heads": "", "model.num_kv_heads": "2", "data.eval_split": "test"})
    assert (config.train.steps, config.train.lr, config.train.eval_at_start) == (12, 3e-4, True)
    assert config.model.heads == () and config.model.num_kv_heads == 2
    assert config.data.eval_split == "test"
    arg = config_lib.parse_arg("base,nsp=False", size="tiny", nsp=True)
    assert (arg.size, arg.nsp) == ("base", False)
    with pytest.raises(ValueError, match="unknown experiment arg 'nps'"):
        config_lib.parse_arg("nps=False", size="tiny", nsp=True)


@pytest.mark.parametrize("value", [("mlm", "nsp"), ("mlm",), (), (1, 2.5)])
def test_tuple_values_round_trip_through_the_flags_a_sweep_writes(value):
    flag = config_lib.as_flags({"model.heads": value})[0]
    _, overrides = config_lib.split_overrides([flag])
    assert config_lib.parse_value(overrides["model.heads"], (), name="x") == value


def test_both_flag_spellings_and_a_missing_value():
    rest, overrides = config_lib.split_overrides(
        ["--config.train.lr=3e-4", "--quiet", "--config.train.steps", "7"])
    assert rest == ["--quiet"] and overrides == {"train.lr": "3e-4", "train.steps": "7"}
    with pytest.raises(config_lib.ConfigError, match="needs a value"):
        config_lib.split_overrides(["--config.train.lr"])


def _lr_at(config, step):
    from lm.train import optim

    _, schedule = optim.make_optimizer(config.train)
    return float(schedule(step))


def test_derived_fields_follow_train_steps_in_every_experiment():
    """Shakespeare at 200 steps decays over 200 steps (not the default 2000), and the T5 tiny
    run accepts 10 steps (its warmup shrinks with it)."""
    short = config_lib.load(SHAKESPEARE, {"train.steps": "200"}).to_dict()
    assert short["train"]["warmup_steps"] == 10 and short["train"]["eval_every"] == 25
    assert math.isclose(_lr_at(config_lib.load(SHAKESPEARE, {"train.steps": "200"}), 199),
                        1e-4, rel_tol=0.05)  # at min_lr by the end
    assert _lr_at(config_lib.load(SHAKESPEARE), 199) > 9e-4  # the full run: still near peak
    t5 = config_lib.load(f"{EXPERIMENTS}/t5_span_corruption.py:tiny", {"train.steps": "10"})
    _lr_at(t5, 5)  # no "decay_steps <= warmup_steps"
    # An overridden derived field keeps the override.
    fixed = config_lib.load(SHAKESPEARE, {"train.steps": "200", "train.warmup_steps": "3"})
    assert fixed.to_dict()["train"]["warmup_steps"] == 3


def test_bert_sweep_switches_nsp_and_ranks_by_the_mlm_loss(tmp_path):
    spec = f"{EXPERIMENTS}/bert_mlm_nsp.py:tiny"
    grid = config_lib.load_sweep(spec)
    assert (grid.metric, grid.mode) == ("eval/mlm_loss", "min")
    configs = [sweep.point_config(spec, sweep.point_overrides(grid, [], p)) for p in grid.points]
    assert [(c.data.objective, tuple(c.model.heads)) for c in configs] == [
        ("mlm_nsp", ("mlm", "nsp")), ("mlm", ("mlm",))]
    assert all(c.train.best_metric == "eval/mlm_loss" for c in configs)
    # --print_commands gives flags that build exactly these configs.
    for command, config in zip(sweep.commands(spec, str(tmp_path)), configs):
        argv = command.split()
        flags = [a.strip("'") for a in argv if a.startswith(("--config.", "'--config."))]
        assert sweep.point_config(spec, flags).to_dict() == config.to_dict()


def test_every_experiment_lists_its_args_and_every_arg_builds():
    for path in sorted(EXPERIMENTS.glob("*.py")):
        module = config_lib.load_module(path, needs=None)
        assert module.ARGS, path
        for arg in module.ARGS:
            if hasattr(module, "get_study"):  # a study file: its variants' and tasks' build
                config_lib.study_configs(config_lib.load_study(f"{path}:{arg}"))
            if not hasattr(module, "get_config"):
                continue
            config = config_lib.load(f"{path}:{arg}").to_dict()
            assert set(config) == {"model", "data", "train", "mesh", "init"}


STUDY_FILE = """
from lm.config import Study, Task, Variant

ARGS = ("x",)


def get_study(arg=None):
    if arg == "bad":
        return {{"variants": []}}
    return Study([Variant("a", "{exp}", {{"train.lr": 0.5}}), Variant("b", "{exp}")],
                 [Task("t", "{exp}", "eval/accuracy", overrides={{"train.steps": 7}})],
                 pretrain_seeds=[0, 1])
"""


def test_a_study_file_needs_get_study_not_get_config(tmp_path):
    path = tmp_path / "study.py"
    path.write_text(STUDY_FILE.format(exp=SHAKESPEARE))
    study = config_lib.load_study(str(path))
    assert (study.baseline, study.pretrain_seeds, study.finetune_seeds) == ("a", (0, 1), (0,))
    configs = config_lib.study_configs(study)
    assert configs["variant/a"].train.lr == 0.5 and configs["task/t"].train.steps == 7
    with pytest.raises(config_lib.ConfigError, match="get_study must return"):
        config_lib.load_study(f"{path}:bad")
    with pytest.raises(config_lib.ConfigError, match="defines no get_config"):
        config_lib.load(str(path))
    with pytest.raises(config_lib.ConfigError, match="defines no get_study"):
        config_lib.load_study(SHAKESPEARE)


def test_sweep_seeds():
    assert config_lib.Sweep([{"train.lr": 1}]).seeds == ()
    assert config_lib.Sweep([{"train.lr": 1}], seeds=[2, 0]).seeds == (2, 0)
    with pytest.raises(config_lib.ConfigError, match="sets train.seed"):
        config_lib.Sweep([{"train.seed": 1}], seeds=(0,))
    with pytest.raises(config_lib.ConfigError, match="repeat a seed"):
        config_lib.Sweep([{"train.lr": 1}], seeds=(0, 0))
