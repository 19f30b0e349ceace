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
