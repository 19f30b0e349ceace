"""The speed-motivated code paths compute what the plain ones do: values and gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.models import build, model_config

V, B, T = 97, 2, 8


def _inputs(cfg):
    toks = jax.random.randint(jax.random.key(0), (B, T), 1, V)
    if cfg.family == "t5":
        return toks, jax.random.randint(jax.random.key(1), (B, T - 2), 1, V)
    return (toks,)


def _loss_and_grads(cfg, params):
    def loss(p):
        out = build(cfg).apply({"params": p}, *_inputs(cfg))
        logits = out["mlm_logits"] if isinstance(out, dict) else out
        return jnp.mean(jax.nn.log_softmax(logits)[..., 3] * jnp.arange(logits.shape[-1])[3])

    return jax.jit(jax.value_and_grad(loss))(params)


def _params(cfg):
    return jax.jit(lambda k: nn.unbox(build(cfg).init(k, *_inputs(cfg)))["params"])(
        jax.random.key(0))


@pytest.mark.parametrize("family", ["gpt", "t5"])  # T5: cross-attention, relative bias
def test_unrolled_scan_equals_the_scan_loop(family):
    cfg = model_config(family, "tiny", vocab_size=V, num_layers=3, dropout_rate=0.0)
    params = _params(cfg)
    unrolled = cfg.replace(scan_unroll=3)
    # The same parameter tree, and the same values and gradients from it.
    shapes = lambda c: jax.eval_shape(lambda: _params(c))
    assert shapes(unrolled) == shapes(cfg)
    (want, want_grads), (got, got_grads) = (_loss_and_grads(c, params) for c in (cfg, unrolled))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    for x, y in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(x, y, atol=1e-6)


def test_scan_unroll_must_be_positive():
    with pytest.raises(ValueError, match="scan_unroll"):
        model_config("gpt", "tiny", scan_unroll=0)
