"""Ops with hand-written derivatives equal their plain formulas (values and gradients), and
both variants of `ModelConfig.kernels` compute the same function."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.nn import ops
from lm.nn.config import ModelConfig
from tests.conftest import f32_tolerance

# GELU: erf is accurate to a few ulps, then four more roundings; its terms 0.5 x and
# 0.5 x erf(x / sqrt 2) cancel for x < 0, so the atol scales with max |x|.
GELU_ROUNDINGS = 8
F64_EPS = float(np.finfo(np.float64).eps)


def _x(shape=(4, 257), seed=0):
    # Wide enough to reach both tails: Φ(x) underflows toward -8 and saturates toward +8.
    return np.random.default_rng(seed).normal(0.0, 3.0, shape).astype(np.float32)


def _max(a) -> float:
    return float(np.max(np.abs(a)))


@pytest.mark.parametrize("variant", ["cpu", "plain"])
def test_gelu_equals_the_float64_formula(variant):
    x = _x()
    want = np.vectorize(lambda v: 0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))))(
        x.astype(np.float64))
    got = ops.kernels(variant).gelu(jnp.asarray(x))
    np.testing.assert_allclose(got, want, **f32_tolerance(GELU_ROUNDINGS, _max(x)))


@pytest.mark.parametrize("variant", ["cpu", "plain"])
def test_gelu_gradient_equals_autodiff_of_the_formula_in_float64(variant):
    x, g = _x(seed=1), _x(seed=2)
    with jax.enable_x64(True):
        want = jax.vjp(ops.gelu_formula, jnp.asarray(x, jnp.float64))[1](
            jnp.asarray(g, jnp.float64))[0]
    gelu = ops.kernels(variant).gelu
    got = jax.jit(lambda x, g: jax.vjp(gelu, x)[1](g)[0])(x, g)
    assert got.dtype == jnp.float32
    # g (Φ(x) + x φ(x)), and Φ + x φ <= 1.13: the terms are at most about max |g|.
    np.testing.assert_allclose(got, np.asarray(want), **f32_tolerance(GELU_ROUNDINGS, _max(g)))


def test_custom_gelu_gradient_holds_in_float64():
    """The hand-written rule is the derivative, not a float32 fit."""
    x, g = _x(seed=1), _x(seed=2)
    with jax.enable_x64(True):
        x64, g64 = jnp.asarray(x, jnp.float64), jnp.asarray(g, jnp.float64)
        want = jax.vjp(ops.gelu_formula, x64)[1](g64)[0]
        got = jax.vjp(ops.gelu, x64)[1](g64)[0]
        tol = GELU_ROUNDINGS * F64_EPS
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * _max(g))


@pytest.mark.parametrize("variant", ["cpu", "plain"])
def test_layer_norm_value_and_gradients_equal_the_float64_formula(variant):
    rng = np.random.default_rng(3)
    R, D = 15, 32
    x = (rng.normal(size=(3, 5, D)) * 4 + 2).astype(np.float32)
    scale, bias = (rng.normal(size=(D,)).astype(np.float32) for _ in range(2))
    g = rng.normal(size=x.shape).astype(np.float32)
    layer_norm = ops.kernels(variant).layer_norm
    # y: two length-D means; dx: two more; dscale and dbias: then a length-R sum.
    n = 4 * D + R
    for b in (bias, None):  # GPT without biases, BERT with
        got_y, vjp = jax.vjp(lambda x, s, b: layer_norm(x, s, b, 1e-5), x, scale, b)
        got = vjp(g)
        with jax.enable_x64(True):
            args64 = [None if a is None else jnp.asarray(a, jnp.float64) for a in (x, scale, b)]
            want_y, vjp64 = jax.vjp(lambda x, s, b: ops.layer_norm_formula(x, s, b, 1e-5),
                                    *args64)
            want = vjp64(jnp.asarray(g, jnp.float64))
        np.testing.assert_allclose(got_y, np.asarray(want_y), **f32_tolerance(n, _max(want_y)))
        assert (got[2] is None) == (b is None)
        for name, u, w in zip(("dx", "dscale", "dbias"), got, want, strict=True):
            if w is not None:
                np.testing.assert_allclose(u, np.asarray(w), **f32_tolerance(n, _max(w)),
                                           err_msg=name)


@pytest.mark.parametrize("variant", ["cpu", "plain"])
@pytest.mark.parametrize("in_axes", [1, 2])  # Dense, and the attention output (N, H) -> D
def test_matmul_equals_tensordot_in_float64(in_axes, variant):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 3, 4, 8)).astype(np.float32)
    kernel = rng.normal(size=(4, 8, 5)[2 - in_axes:]).astype(np.float32)
    g = rng.normal(size=x.shape[: 4 - in_axes] + (5,)).astype(np.float32)
    with jax.enable_x64(True):
        a64 = [jnp.asarray(a, jnp.float64) for a in (x, kernel, g)]
        y, vjp = jax.vjp(lambda x, k: jnp.tensordot(x, k, in_axes), *a64[:2])
        want = (y, *vjp(a64[2]))
    rows, width = math.prod(x.shape[: 4 - in_axes]), math.prod(kernel.shape[:in_axes])
    matmul = ops.kernels(variant).matmul
    y, vjp = jax.vjp(lambda x, k: matmul(x, k, in_axes), x, kernel)
    # y sums `width` products, dx 5, dkernel `rows`; each term is at most max|a| max|b|.
    terms = [(width, _max(x) * _max(kernel)), (5, _max(g) * _max(kernel)),
             (rows, _max(x) * _max(g))]
    for name, u, w, (n, m) in zip(("y", "dx", "dkernel"), (y, *vjp(g)), want, terms,
                                  strict=True):
        assert u.shape == w.shape, name
        np.testing.assert_allclose(u, np.asarray(w), **f32_tolerance(n, m), err_msg=name)


def test_kernels_auto_is_cpu_on_the_cpu_backend_and_plain_elsewhere(monkeypatch):
    assert jax.default_backend() == "cpu"  # the test machine
    assert ops.resolve_kernels("auto") == "cpu"
    assert ops.kernels("auto") is ops.kernels("cpu")
    assert ops.kernels("cpu").gelu is ops.gelu and ops.kernels("plain").gelu is not ops.gelu
    for backend in ("gpu", "tpu"):
        monkeypatch.setattr(jax, "default_backend", lambda b=backend: b)
        assert ops.resolve_kernels("auto") == "plain"
        assert ops.resolve_kernels("cpu") == "cpu"  # an explicit choice holds everywhere
    with pytest.raises(ValueError, match="kernels='fast' is not one of"):
        ops.resolve_kernels("fast")
    with pytest.raises(ValueError, match="ModelConfig.kernels='fast' is not one of"):
        ModelConfig(kernels="fast")
