"""Finetuning: init from a pretraining checkpoint, dynamic padding, GLUE files, SST-2 slice."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util

from lm import config as config_lib
from lm.data import classification
from lm.eval import predictions as predict
from lm.models import build, model_config
from lm.train import pretrained as finetune
from tests.conftest import FULL_DATA, full_data

TOKENS = jnp.zeros((1, 8), jnp.int32)


def _init(cfg, seed):
    return build(cfg).init(jax.random.key(seed), TOKENS)["params"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A `bert_mlm_nsp` train state saved the way the trainer saves it (Checkpointer)."""
    import optax

    from lm.train.checkpoint import Checkpointer
    from lm.train.state import TrainState

    workdir = tmp_path_factory.mktemp("bert_mlm_nsp")
    cfg = model_config("bert", "tiny", heads=("mlm", "nsp"), vocab_size=96, max_len=32)
    params = nn.unbox(_init(cfg, seed=0))
    tx = optax.adamw(1e-3)
    state = TrainState(step=jnp.array(7, jnp.int32), params=params, opt_state=tx.init(params))
    ckpt = Checkpointer(str(workdir), every=1, keep=1, config={"model": dataclasses.asdict(cfg)})
    ckpt.save(7, state, {"position": 0}, force=True)
    ckpt.close()
    return workdir, cfg, params


def _finetune_config(cfg, workdir, **changes):
    ft_cfg = dataclasses.replace(cfg, heads=(), num_labels=2, **changes)
    return ft_cfg, ml_collections.ConfigDict({
        "model": dataclasses.asdict(ft_cfg), "init": {"checkpoint": str(workdir), "hf_dir": ""}})


@pytest.mark.parametrize("scan_layers", [True, False])
def test_init_from_bert_mlm_nsp_checkpoint(pretrained, scan_layers):
    workdir, cfg, pre = pretrained
    ft_cfg, config = _finetune_config(cfg, workdir, scan_layers=scan_layers, dropout_rate=0.2)
    fresh = _init(ft_cfg, seed=1)
    params = nn.unbox(finetune.init_params(config, fresh))

    assert "classifier" in params and not {"mlm_bias", "mlm_transform", "nsp"} & params.keys()
    np.testing.assert_array_equal(params["classifier"]["kernel"],
                                  nn.unbox(fresh)["classifier"]["kernel"])
    np.testing.assert_array_equal(params["token_embed"]["embedding"],
                                  pre["token_embed"]["embedding"])
    np.testing.assert_array_equal(params["pooler"]["kernel"], pre["pooler"]["kernel"])
    pre_q = pre["encoder"]["layers"]["attn"]["query"]["kernel"]  # L×D×N×H (scanned)
    if scan_layers:
        np.testing.assert_array_equal(params["encoder"]["layers"]["attn"]["query"]["kernel"],
                                      pre_q)
    else:  # the scanned checkpoint initialises an unrolled model layer by layer
        for i in range(cfg.num_layers):
            np.testing.assert_array_equal(
                params["encoder"][f"layers_{i}"]["attn"]["query"]["kernel"], pre_q[i])
    # Every encoder leaf, not just a few, equals the checkpoint's.
    got = traverse_util.flatten_dict(params)
    for path, value in traverse_util.flatten_dict(pre).items():
        if path[0] in got and scan_layers:
            np.testing.assert_array_equal(got[path], value, err_msg="/".join(path))


def test_checkpoint_config_mismatch_is_a_clear_error(pretrained):
    workdir, cfg, _ = pretrained
    ft_cfg, config = _finetune_config(cfg, workdir, d_ff=128)
    with pytest.raises(ValueError, match=r"model.d_ff: checkpoint 256, config 128"):
        finetune.init_params(config, _init(ft_cfg, seed=1))
    config.init.hf_dir = "/somewhere"
    with pytest.raises(ValueError, match="set one of init.checkpoint"):
        finetune.init_params(config, {})


def test_merge_reports_missing_and_misshapen_leaves():
    fresh = {"encoder": {"w": np.zeros((2, 3)), "b": np.zeros(3)}, "classifier": {"k": 1}}
    pre = {"encoder": {"w": np.zeros((3, 3))}, "nsp": {"k": 0}}
    with pytest.raises(ValueError, match=r"missing in the checkpoint \(1\): \['encoder/b'\]"):
        finetune.merge_pretrained(fresh, pre, "test")


def test_batch_cut_to_its_bucket_gives_the_same_logits():
    cfg = model_config("bert", "tiny", vocab_size=96, max_len=32, num_labels=3)
    model = build(cfg)
    rng = np.random.default_rng(0)
    lengths = np.array([5, 11, 3, 0])  # the last row is eval padding
    mask = (np.arange(32)[None] < lengths[:, None]).astype(np.int32)
    batch = {"inputs": rng.integers(1, 96, (4, 32)) * mask, "input_mask": mask,
             "token_type_ids": np.zeros((4, 32), np.int32), "labels": np.arange(4)}
    trimmed = {k: v[:, :16] if v.ndim == 2 else v for k, v in batch.items()}
    params = model.init(jax.random.key(0), TOKENS)["params"]
    logits = lambda b: jax.jit(model.apply)({"params": params}, jnp.asarray(b["inputs"]),
                                   token_type_ids=jnp.asarray(b["token_type_ids"]),
                                   input_mask=jnp.asarray(b["input_mask"]))["logits"]
    np.testing.assert_allclose(logits(trimmed)[:3], logits(batch)[:3], atol=1e-5)


def test_submission_lines():
    assert predict.submission_lines("rte", [2, 0, 1], [1, 0, 0]) == [
        "index\tprediction", "0\tentailment", "1\tentailment", "2\tnot_entailment"]
    assert predict.submission_lines("stsb", [0, 1], [5.7, 2.12345])[1:] == ["0\t5.000",
                                                                          "1\t2.123"]
    assert predict.submission_lines("sst2", [0], [1])[1] == "0\t1"
    with pytest.raises(ValueError, match="unknown GLUE task 'squad'"):
        predict.submission_lines("squad", [0], [1])


def test_experiment_sweep_is_the_bert_grid_and_keeps_steps_consistent():
    from lm.runs import sweep

    spec = "experiments/finetune_glue.py:rte,init=random"
    grid = config_lib.load_sweep(spec)
    assert len(grid.points) == 24 and grid.points[0] == {
        "train.lr": 5e-5, "train.batch_size": 16, "train.epochs": 2}
    assert (grid.metric, grid.mode) == ("eval/accuracy", "max")
    config = sweep.point_config(spec, sweep.point_overrides(grid, [], grid.points[0]))
    resolved = finetune.resolve(config)  # the trainer's start-up counts the train split
    per_epoch = math.ceil(len(classification.records(config.data, "train")) / 16)
    if FULL_DATA:
        assert per_epoch == 156  # RTE: 2,490 train examples
    assert (resolved.train.steps_per_epoch, resolved.train.eval_every) == (per_epoch, per_epoch)
    assert (resolved.train.steps, resolved.train.warmup_steps) == (2 * per_epoch,
                                                                   2 * per_epoch // 10)
    assert resolved.train.best_metric == "eval/accuracy"
    cola = config_lib.load("experiments/finetune_glue.py:cola,init=random")
    assert cola.train.best_metric == "eval/matthews_corr"


@pytest.mark.slow
@full_data("glue/sst2")
def test_finetune_tiny_model_on_sst2_slice(tmp_path):
    """A tiny random BERT learns an SST-2 slice beyond the majority class; predict writes the
    whole dev set (872 rows) in the GLUE format."""
    from lm.train.loop import train

    config = config_lib.load(
        "experiments/finetune_glue.py:sst2,init=random,train=train[:4000],epochs=2,seq_len=64",
        {"train.lr": "1e-3", "train.log_every": "1000"})
    result = train(config, str(tmp_path))
    majority = 444 / 872  # SST-2 dev: 444 positive, 428 negative
    assert result["best/eval/accuracy"] > majority + 0.05
    path, scores = predict.predict(str(tmp_path), "validation")
    lines = path.read_text().splitlines()
    assert scores["examples"] == len(lines) - 1 == 872
    assert lines[0] == "index\tprediction" and {x.split("\t")[1] for x in lines[1:]} <= {"0", "1"}
    assert scores["accuracy"] == pytest.approx(result["best/eval/accuracy"], abs=1e-6)
    assert scores["step"] == result["best/step"]


def test_any_experiment_starts_from_a_hugging_face_directory(gpt2_tokenizer_dir, tmp_path):
    """gpt_wikitext from a (random) HF GPT-2: the architecture and tokenizer come from the
    directory, whatever the experiment's own model block says, and the params are its."""
    from flax import linen as nn

    from lm.convert import from_hf
    from lm.train.loop import train
    from tests.test_convert import random_gpt2
    from tests.test_generate import with_tokenizer

    _, directory = random_gpt2(tmp_path / "hf", vocab_size=401, n_positions=32)
    directory = with_tokenizer(directory, gpt2_tokenizer_dir)
    config = config_lib.load("experiments/gpt_wikitext.py:tiny", {
        "init.hf_dir": directory, "data.seq_len": "32", "model.dropout_rate": "0.0",
        "model.attention_dropout_rate": "0.0", "data.train_split": "train[:25%]",
        "train.steps": "1", "train.lr": "0.0", "train.eval_steps": "1"})
    resolved = finetune.resolve(config)
    hf_model, hf_params = from_hf(directory)
    assert (resolved.model.num_layers, resolved.model.d_model, resolved.model.vocab_size) == (
        2, 32, 401) != (config.model.num_layers, config.model.d_model, config.model.vocab_size)
    assert resolved.data.tokenizer.to_dict() == {**config.data.tokenizer.to_dict(),
                                                 "kind": "hf", "path": directory,
                                                 "vocab_multiple": 1}
    train(config, str(tmp_path / "run"), quiet=True)  # lr 0: the params stay the HF ones
    from lm.train import saved

    run = saved.load(tmp_path / "run", "latest")
    for got, want in zip(jax.tree.leaves(run.params), jax.tree.leaves(nn.unbox(hf_params))):
        np.testing.assert_array_equal(got, want)
