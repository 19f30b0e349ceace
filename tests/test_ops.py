"""Ops with hand-written derivatives equal their plain formulas (values and gradients)."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from lm.nn import ops


def _x(shape=(4, 257), seed=0):
    # Wide enough to reach both tails: Φ(x) underflows toward -8 and saturates toward +8.
    return np.random.default_rng(seed).normal(0.0, 3.0, shape).astype(np.float32)


def test_gelu_equals_the_float64_formula():
    x = _x()
    want = np.vectorize(lambda v: 0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))))(
        x.astype(np.float64))
    np.testing.assert_allclose(ops.gelu(jnp.asarray(x)), want, rtol=1e-6, atol=1e-6)
    # ... and what the library used before: jax.nn.gelu(approximate=False).
    np.testing.assert_allclose(ops.gelu(x), jax.nn.gelu(x, approximate=False), rtol=1e-6,
                               atol=1e-6)


def test_gelu_gradient_equals_autodiff_of_the_formula_in_float64():
    x, g = _x(seed=1), _x(seed=2)
    with jax.enable_x64(True):
        want = jax.vjp(ops.gelu_formula, jnp.asarray(x, jnp.float64))[1](
            jnp.asarray(g, jnp.float64))[0]
    got = jax.jit(lambda x, g: jax.vjp(ops.gelu, x)[1](g)[0])(x, g)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-5, atol=1e-6)
    # The custom rule also holds in float64 itself (it is the derivative, not a fit).
    with jax.enable_x64(True):
        got64 = jax.vjp(ops.gelu, jnp.asarray(x, jnp.float64))[1](jnp.asarray(g, jnp.float64))[0]
        np.testing.assert_allclose(got64, want, rtol=1e-12, atol=1e-12)


def test_layer_norm_value_and_gradients_equal_the_float64_formula():
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(3, 5, 32)) * 4 + 2).astype(np.float32)
    scale, bias = (rng.normal(size=(32,)).astype(np.float32) for _ in range(2))
    g = rng.normal(size=x.shape).astype(np.float32)
    for b in (bias, None):  # GPT without biases, BERT with
        got_y, vjp = jax.vjp(lambda x, s, b: ops.layer_norm(x, s, b, 1e-5), x, scale, b)
        got = vjp(g)
        with jax.enable_x64(True):
            args64 = [None if a is None else jnp.asarray(a, jnp.float64) for a in (x, scale, b)]
            want_y, vjp64 = jax.vjp(lambda x, s, b: ops.layer_norm_formula(x, s, b, 1e-5),
                                    *args64)
            want = vjp64(jnp.asarray(g, jnp.float64))
        np.testing.assert_allclose(got_y, np.asarray(want_y), rtol=1e-5, atol=1e-5)
        assert (got[2] is None) == (b is None)
        for name, u, w in zip(("dx", "dscale", "dbias"), got, want, strict=True):
            if w is not None:
                np.testing.assert_allclose(u, np.asarray(w), rtol=1e-4, atol=2e-5, err_msg=name)
