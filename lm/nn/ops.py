"""Ops with hand-written derivatives, where XLA's own (autodiff) compiles poorly on CPU.

Each computes the same function as its plain formula; tests compare values and gradients
with `jax.grad` of the formula in float64 (tests/test_ops.py). Why each one exists is
measured with `python -m lm bench --profile` on the GPT of experiments/gpt_shakespeare_char.py.
"""

import functools
import math

import jax
import jax.numpy as jnp

_SQRT_HALF = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def gelu_formula(x: jax.Array) -> jax.Array:
    """Exact GELU, x·Φ(x), in the erf form that PyTorch's nn.GELU() computes."""
    return 0.5 * x * (1.0 + jax.lax.erf(x * _SQRT_HALF))


@jax.custom_vjp
def gelu(x: jax.Array) -> jax.Array:
    """Exact GELU with its derivative Φ(x) + x·φ(x) written out.

    Autodiff of jax.nn.gelu(approximate=False) goes through erfc: XLA:CPU spends several
    elementwise passes over the (rows, F) activation on it; here the forward and the
    backward are one fusion each.
    """
    return gelu_formula(x)


def _gelu_fwd(x):
    return gelu_formula(x), x


def _gelu_bwd(x, g):
    # The barrier keeps XLA from sharing erf(x) with the forward: sharing it stores one more
    # (rows, F) array and splits each pass into two fusions; recomputing it is cheaper.
    x = jax.lax.optimization_barrier(x)
    cdf = 0.5 * (1.0 + jax.lax.erf(x * _SQRT_HALF))
    pdf = jnp.exp(-0.5 * x * x) * _INV_SQRT_2PI
    return (g * (cdf + x * pdf).astype(g.dtype),)


gelu.defvjp(_gelu_fwd, _gelu_bwd)


def layer_norm_formula(x: jax.Array, scale: jax.Array, bias: jax.Array | None, eps: float
                       ) -> jax.Array:
    """(x - mean) / sqrt(var + eps) * scale + bias over the last axis, var = E[(x - mean)^2]."""
    mean = jnp.mean(x, axis=-1, keepdims=True)
    centered = x - mean
    var = jnp.mean(centered * centered, axis=-1, keepdims=True)
    y = centered * (jax.lax.rsqrt(var + eps) * scale)  # flax.linen.LayerNorm's order
    return y if bias is None else y + bias


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array | None, eps: float) -> jax.Array:
    """LayerNorm with its derivative written out (one pass for dx, one reduction for the
    scale and bias gradients), where autodiff leaves XLA:CPU many small fusions."""
    return layer_norm_formula(x, scale, bias, eps)


def _layer_norm_fwd(x, scale, bias, eps):
    mean = jnp.mean(x, axis=-1, keepdims=True)
    centered = x - mean
    rstd = jax.lax.rsqrt(jnp.mean(centered * centered, axis=-1, keepdims=True) + eps)
    y = centered * (rstd * scale)
    return (y if bias is None else y + bias), (centered * rstd, rstd, scale, bias is not None)


def _layer_norm_bwd(eps, residuals, g):
    normed, rstd, scale, has_bias = residuals
    g_normed = g * scale
    # d/dx of (x - mean) * rstd, applied to g_normed: the two means are the projections
    # onto the constant direction and onto `normed`.
    dx = rstd * (g_normed - jnp.mean(g_normed, axis=-1, keepdims=True)
                 - normed * jnp.mean(g_normed * normed, axis=-1, keepdims=True))
    rows = g.reshape(-1, g.shape[-1])
    dscale = jnp.sum(rows * normed.reshape(rows.shape), axis=0)
    dbias = jnp.sum(rows, axis=0) if has_bias else None
    return dx, dscale, dbias


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)
