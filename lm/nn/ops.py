"""Ops in two variants, picked by `ModelConfig.kernels` through `kernels(setting)`.

'cpu': hand-written derivatives and 2-D matmul layouts, chosen from XLA:CPU profiles
(`python -m lm bench --profile`; measured on CPU, see docs/performance.md). 'plain': the
formulas themselves with autodiff, for GPU and TPU, where nothing measured the 'cpu'
variants. 'auto' is 'cpu' on the CPU backend, else 'plain'.

Both compute the same function: tests compare values and gradients with each other and with
`jax.grad` of the formula in float64 (tests/test_ops.py, tests/test_speed_equivalence.py).
"""

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from lm.nn.config import KERNELS

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


def matmul_2d(x: jax.Array, kernel: jax.Array, in_axes: int) -> jax.Array:
    """tensordot(x, kernel, in_axes) as one 2-D (rows, in) @ (in, out) matmul.

    The reshapes are free (row-major bitcasts). A 3-D dot makes XLA:CPU transpose the
    (B, T, F) gradient inside an elementwise fusion for the weight gradient; in 2-D the
    backward is two plain matmuls.
    """
    lead, contract = x.shape[: x.ndim - in_axes], x.shape[x.ndim - in_axes :]
    out = kernel.shape[in_axes:]
    x_RxI = x.reshape(-1, math.prod(contract))
    y_RxO = x_RxI @ kernel.reshape(x_RxI.shape[1], math.prod(out))
    return y_RxO.reshape(*lead, *out)


def matmul(x: jax.Array, kernel: jax.Array, in_axes: int) -> jax.Array:
    """The last `in_axes` axes of x contracted with the first of kernel: one dot_general."""
    return jnp.tensordot(x, kernel, in_axes)


# ----------------------------------------------------------------------------- the switch


class Kernels(NamedTuple):
    """The variant of each op that one `ModelConfig.kernels` setting uses."""

    name: str  # 'cpu' | 'plain' (never 'auto')
    gelu: Callable[[jax.Array], jax.Array]
    layer_norm: Callable[[jax.Array, jax.Array, jax.Array | None, float], jax.Array]
    matmul: Callable[[jax.Array, jax.Array, int], jax.Array]
    # lm.nn.attention: q, k and v from one matmul of the concatenated kernels; softmax
    # attention with its backward written out (else autodiff of the einsum formula).
    fused_qkv: bool
    attention_vjp: bool


_TABLE = {
    "cpu": Kernels("cpu", gelu, layer_norm, matmul_2d, fused_qkv=True, attention_vjp=True),
    "plain": Kernels("plain", functools.partial(jax.nn.gelu, approximate=False),
                     layer_norm_formula, matmul, fused_qkv=False, attention_vjp=False),
}


def resolve_kernels(setting: str) -> str:
    """'cpu' or 'plain': 'auto' is 'cpu' on the CPU backend (where the 'cpu' variants were
    measured) and 'plain' on GPU and TPU."""
    if setting == "auto":
        return "cpu" if jax.default_backend() == "cpu" else "plain"
    if setting not in _TABLE:
        raise ValueError(f"kernels={setting!r} is not one of {KERNELS}")
    return setting


def kernels(setting: str) -> Kernels:
    """The ops of `ModelConfig.kernels` = setting, 'auto' resolved at trace time."""
    return _TABLE[resolve_kernels(setting)]
