"""MFU: what counts as a matmul per token, and where the peak FLOP/s come from."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import models
from lm.train import mfu


def _params(cfg):
    shapes = jax.eval_shape(lambda: models.build(cfg).init(
        jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
    return nn.meta.unbox(shapes)


def _size(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_classification_bert_does_not_count_the_token_embedding():
    """BERT finetuned for classification looks tokens up and never projects to the vocabulary:
    its per-token matmuls are the encoder's; pooler and classifier run once per sequence."""
    cfg = models.model_config("bert", "tiny", heads=(), num_labels=2)
    params = _params(cfg)
    encoder = _size(params["encoder"]) + _size(params["embed_norm"])
    heads = _size(params["pooler"]) + _size(params["classifier"])
    T = 64
    assert mfu.embedding_is_output(cfg) is False
    assert mfu.per_sequence_params(params) == heads
    layers, width = cfg.num_layers, cfg.num_heads * cfg.dim_per_head
    assert mfu.model_flops_per_token(cfg, params, T) == pytest.approx(
        6 * encoder + 12 * layers * width * T + 6 * heads / T)


def test_mlm_bert_and_gpt_count_the_tied_embedding_as_their_output_projection():
    bert = models.model_config("bert", "tiny", heads=("mlm", "nsp"))
    gpt = models.model_config("gpt", "tiny")
    assert mfu.embedding_is_output(bert) and mfu.embedding_is_output(gpt)
    assert not mfu.embedding_is_output(gpt.replace(tie_embeddings=False))  # lm_head counts
    params = _params(bert)
    table = params["token_embed"]["embedding"]
    n = mfu.matmul_params(params, tie_embeddings=True)
    assert n - mfu.matmul_params(params, tie_embeddings=False) == table.size


def test_mlm_head_counts_only_at_its_prediction_slots():
    """With `mlm_positions` the MLM head (transform, norm, bias and the tied embedding) runs
    at P of the T positions: its FLOPs per token shrink by P/T, the encoder's do not."""
    cfg = models.model_config("bert", "tiny", heads=("mlm", "nsp"))
    params = _params(cfg)
    head = (_size(params["mlm_transform"]) + _size(params["mlm_norm"])
            + _size(params["mlm_bias"]) + _size(params["token_embed"]))
    T, P = 128, 20
    every, slots = (mfu.model_flops_per_token(cfg, params, T, mlm_slots=s) for s in (None, P))
    assert every - slots == pytest.approx(6 * head * (1 - P / T))
    assert mfu.model_flops_per_token(cfg, params, T, mlm_slots=T) == pytest.approx(every)


def test_peak_flops_env_var_overrides(monkeypatch):
    monkeypatch.setenv("LM_PEAK_FLOPS", "1.5e12")
    mfu.peak_flops_and_source.cache_clear()
    try:
        assert mfu.peak_flops_and_source(jax.devices()[0], "float32") == (1.5e12, "LM_PEAK_FLOPS")
    finally:
        mfu.peak_flops_and_source.cache_clear()


def test_cpu_peak_is_the_best_measured_on_this_machine(monkeypatch, tmp_path):
    """A run that starts while the machine is busy measures less, and keeps the cached best."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    measured = iter([2e11, 9e11, 5e11])
    monkeypatch.setattr(mfu, "cpu_matmul_peak", lambda seconds: next(measured))
    peaks = [mfu.cached_cpu_peak() for _ in range(3)]
    assert [p for p, _ in peaks] == [2e11, 9e11, 9e11]
    assert peaks[1][1].startswith("measured now") and peaks[2][1].startswith("the best measured")
    assert (tmp_path / "lm" / "cpu_peak_flops.json").exists()


def test_cpu_matmul_peak_is_a_plausible_rate():
    peak = mfu.cpu_matmul_peak(n=128, seconds=0.05)
    assert 1e8 < peak < 1e14
