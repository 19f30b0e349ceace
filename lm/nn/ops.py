"""Ops with hand-written derivatives, where XLA's own (autodiff) compiles poorly on CPU.

Each computes the same function as its plain formula; tests compare values and gradients
with `jax.grad` of the formula in float64 (tests/test_ops.py). Why each one exists is
measured with `python -m lm bench --profile` on the GPT of experiments/gpt_shakespeare_char.py.
"""

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
