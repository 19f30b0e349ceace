"""Every experiment file loads, and each of its args builds a model and an input pipeline."""

import pathlib

import jax
import numpy as np
import pytest

from lm import config as config_lib
from lm import data, models
from lm.train import objectives as tasks
from lm.train import pretrained, setup

EXPERIMENTS = pathlib.Path(__file__).resolve().parent.parent / "experiments"
ALL = sorted(EXPERIMENTS.glob("*.py"))
# A study file (get_study) declares runs of other experiment files; it has no config itself.
STUDIES = [p for p in ALL if hasattr(config_lib.load_module(p, needs=None), "get_study")]
FILES = [p for p in ALL if p not in STUDIES]


def _cases():
    for path in FILES:
        module = config_lib.load_module(path)
        for arg in module.ARGS:
            yield pytest.param(path, arg, id=f"{path.stem}:{arg}")


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.stem)
def test_docstring_starts_with_the_command(path):
    doc = config_lib.load_module(path, needs=None).__doc__ or ""
    command = "study" if path in STUDIES else "train"
    assert doc.startswith(f"python -m lm {command} --config experiments/{path.name}"), doc[:80]


@pytest.mark.parametrize("path, arg", [pytest.param(p, a, id=f"{p.stem}:{a}") for p in STUDIES
                                       for a in config_lib.load_module(p, needs=None).ARGS])
def test_study_builds_every_run(path, arg, tmp_path):
    """Every pretraining and finetuning run's config builds (`lm study --print_commands`)."""
    from lm.runs import study

    _, runs, configs = study.build(f"{path}:{arg}", str(tmp_path))
    assert runs[0].stage == "tokenizer" and set(configs) == {r.id for r in runs}


@pytest.mark.parametrize("path, arg", list(_cases()))
def test_config_builds_a_model_and_a_pipeline(path, arg, sentencepiece_model):
    config = pretrained.resolve(config_lib.load(f"{path}:{arg}"))  # as the trainer starts
    if config.data.tokenizer.kind == "sentencepiece" and not config.data.tokenizer.path:
        config.data.tokenizer.path = sentencepiece_model
    config.data.update(num_threads=1, prefetch=0, workers=0)
    model_cfg = models.ModelConfig(**config.model)
    tokenizer = data.make_tokenizer(config.data)
    setup.check_vocab(tokenizer.vocab_size, model_cfg.vocab_size)

    make_iterator = setup.iterator_factory(config.data)
    batch = next(make_iterator(config.data, tokenizer, split=config.data.train_split,
                               batch_size=2, seed=0))
    rows, length = batch["inputs"].shape
    # Classification batches may be cut to the longest example's bucket (dynamic padding).
    assert rows == 2 and length <= config.data.seq_len
    assert all(np.shape(v)[0] == 2 for v in batch.values())

    task = tasks.get(config.data.objective, model_cfg)
    model = models.build(model_cfg)
    params = jax.eval_shape(lambda: tasks.init_params(task, model, jax.random.key(0), batch))
    assert sum(np.prod(x.shape) for x in jax.tree.leaves(params)) > 0
    assert config.train.batch_size % config.train.grad_accum_steps == 0
