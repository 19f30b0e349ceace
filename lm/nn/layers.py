"""Layers with logical axis names: dense, embeddings, norms, the MLP, output logits.

Params are float32; layers compute in `cfg.dtype`; logits come out float32.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.nn import ops
from lm.nn.config import ModelConfig
from lm.nn.partitioning import constrain, param_init

ACTIVATIONS = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),  # exact (erf): BERT, nanoGPT
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),  # GPT-2 "gelu_new", T5 v1.1
    "relu": jax.nn.relu,  # original T5
    "silu": jax.nn.silu,  # SwiGLU when gated
}


def activation(cfg: ModelConfig) -> Callable[[jax.Array], jax.Array]:
    """cfg.activation; exact GELU in the variant of cfg.kernels (lm.nn.ops)."""
    if cfg.activation == "gelu":
        return ops.kernels(cfg.kernels).gelu
    return ACTIVATIONS[cfg.activation]


def init_std(cfg: ModelConfig, fan_in: int | None = None, role: str = "") -> float:
    """The standard deviation a parameter starts from, by `cfg.init` (lm.nn.config.INITS).

    `fan_in` is a kernel's input size (None: an embedding table); `role` is 'residual' for a
    projection into the residual stream (attention out, MLP wo) and 'query' for the
    attention query: T5 does not divide its logits by sqrt(head_dim), it starts the query
    that much smaller instead.
    """
    if cfg.init == "t5":
        if fan_in is None:
            return 1.0
        return fan_in**-0.5 * (cfg.dim_per_head**-0.5 if role == "query" else 1.0)
    if cfg.init == "gpt2" and role == "residual":
        return cfg.init_std / math.sqrt(2 * cfg.num_layers)
    return cfg.init_std


class Dense(nn.Module):
    """Contract the last `in_axes` axes of x with a kernel (in axes..., out axes...).

    Not nn.DenseGeneral: it initialises a flattened 2-D kernel, which breaks the kernel's
    N-D logical names under a mesh (flax 0.12).
    """

    cfg: ModelConfig
    features: tuple[int, ...]
    names: tuple[str | None, ...]  # the kernel's input then output axes
    in_axes: int = 1
    use_bias: bool = True
    role: str = ""  # 'query' | 'residual' | '': how it starts (init_std)

    @nn.compact
    def weights(self, in_shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array | None]:
        """(kernel in_shape + features, bias features or None) in the compute dtype."""
        cfg = self.cfg
        std = init_std(cfg, math.prod(in_shape), self.role)
        init = param_init(nn.initializers.normal(std), self.names)
        kernel = self.param("kernel", init, tuple(in_shape) + self.features, jnp.float32)
        bias = None
        if self.use_bias:
            bias_init = param_init(nn.initializers.zeros, self.names[-len(self.features) :])
            bias = self.param("bias", bias_init, self.features, jnp.float32).astype(cfg.dtype)
        return kernel.astype(cfg.dtype), bias

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel, bias = self.weights(x.shape[x.ndim - self.in_axes :])
        matmul = ops.kernels(self.cfg.kernels).matmul
        y = matmul(x.astype(self.cfg.dtype), kernel, self.in_axes)
        return y if bias is None else y + bias


def dense(
    cfg: ModelConfig,
    features: int | Sequence[int],
    names: Sequence[str | None],
    name: str,
    *,
    in_axes: int = 1,
    use_bias: bool | None = None,
    role: str = "",
) -> Dense:
    """A Dense layer to `features` (an int, or output axes such as (N, H)); `role` sets how
    its kernel starts (init_std)."""
    features = (features,) if isinstance(features, int) else tuple(features)
    use_bias = cfg.use_bias if use_bias is None else use_bias
    return Dense(cfg, features, tuple(names), in_axes=in_axes, use_bias=use_bias, role=role,
                 name=name)


def embed(cfg: ModelConfig, num: int, names: Sequence[str], name: str) -> nn.Embed:
    """A lookup table num x d_model (tokens, positions, token types)."""
    return nn.Embed(
        num,
        cfg.d_model,
        dtype=cfg.dtype,
        param_dtype=jnp.float32,
        embedding_init=param_init(nn.initializers.normal(init_std(cfg)), names),
        name=name,
    )


class LayerNorm(nn.Module):
    """flax.linen.LayerNorm(use_fast_variance=False)'s params and function, in the variant of
    cfg.kernels (lm.nn.ops). The variance is E[(x - mean)^2] as PyTorch computes it; the fast
    E[x^2] - mean^2 loses digits."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg, shape = self.cfg, (x.shape[-1],)
        scale = self.param("scale", param_init(nn.initializers.ones, ("embed",)), shape)
        bias = None
        if cfg.use_bias:
            bias = self.param("bias", param_init(nn.initializers.zeros, ("embed",)), shape)
        layer_norm = ops.kernels(cfg.kernels).layer_norm
        return layer_norm(x.astype(jnp.float32), scale, bias, cfg.norm_eps).astype(cfg.dtype)


def norm(cfg: ModelConfig, name: str) -> nn.Module:
    """LayerNorm (GPT-2, BERT) or RMSNorm (T5: no mean subtraction, no bias)."""
    scale_init = param_init(nn.initializers.ones, ("embed",))
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(epsilon=cfg.norm_eps, dtype=cfg.dtype, scale_init=scale_init, name=name)
    return LayerNorm(cfg, name=name)


class Mlp(nn.Module):
    """wo(act(wi x)), or wo(act(wi x) * wi_linear x) when gated (GeGLU / SwiGLU)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        cfg = self.cfg
        h_BxTxF = activation(cfg)(dense(cfg, cfg.d_ff, ("embed", "mlp"), "wi")(x_BxTxD))
        if cfg.gated:
            h_BxTxF = h_BxTxF * dense(cfg, cfg.d_ff, ("embed", "mlp"), "wi_linear")(x_BxTxD)
        h_BxTxF = constrain(h_BxTxF, ("batch", "length", "mlp"))
        return dense(cfg, cfg.d_model, ("mlp", "embed"), "wo", role="residual")(h_BxTxF)


def logits(x_BxTxD: jax.Array, table_VxD: jax.Array, dtype: str) -> jax.Array:
    """x @ table^T in the compute dtype, accumulated and returned in float32."""
    out_BxTxV = jnp.einsum(
        "BTD,VD->BTV",
        x_BxTxD.astype(dtype),
        table_VxD.astype(dtype),
        preferred_element_type=jnp.float32,
    )
    return constrain(out_BxTxV, ("batch", "length", "vocab"))


class LMHead(nn.Module):
    """Untied output projection: a D x V kernel, no bias."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        init = param_init(nn.initializers.normal(init_std(self.cfg)), ("embed", "vocab"))
        kernel_DxV = self.param("kernel", init, (self.cfg.d_model, self.cfg.vocab_size))
        return logits(x_BxTxD, kernel_DxV.T, self.cfg.dtype)
