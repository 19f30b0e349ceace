"""Attention: masks, positions (RoPE, T5 relative bias), the attention math, the module.

Shape letters used in names and einsums throughout `lm.nn`:
  B batch          T query length     S key length      D model width
  N query heads    K key/value heads  G = N // K (query heads per kv head)
  H head dim       F mlp width        V vocab           L layers

Masks are boolean (True = may attend), shaped (B|1, 1, T, S) and built once at the top of
a model, then passed down; an additive bias (T5 relative positions) is (B|1, N, T, S).
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lm.nn import ops
from lm.nn.config import ModelConfig
from lm.nn.layers import dense
from lm.nn.partitioning import constrain, param_init

# Logits of masked pairs. Finite (HF uses the dtype's min too), so a fully masked row gives a
# uniform softmax instead of NaN; with any unmasked key it contributes exactly 0.
MASKED_LOGIT = float(np.finfo(np.float32).min)


# ----------------------------------------------------------------------------- masks


def causal_mask(q_index_BxT: jax.Array, k_index_BxS: jax.Array) -> jax.Array:
    """Query i may see key j iff j <= i (indices are sequence or cache-slot positions)."""
    return k_index_BxS[:, None, None, :] <= q_index_BxT[:, None, :, None]


def padding_mask(k_valid_BxS: jax.Array) -> jax.Array:
    """Nobody attends to padded keys (valid: 1 = real token, 0 = padding)."""
    return k_valid_BxS.astype(bool)[:, None, None, :]


def segment_mask(q_segment_BxT: jax.Array, k_segment_BxS: jax.Array) -> jax.Array:
    """Packed documents: attend within the same segment id; segment 0 is padding."""
    same_BxTxS = q_segment_BxT[:, :, None] == k_segment_BxS[:, None, :]
    return (same_BxTxS & (k_segment_BxS[:, None, :] != 0))[:, None]


def combine_masks(*masks: jax.Array | None) -> jax.Array | None:
    """Logical AND of the masks that are not None (None if all are)."""
    present = [m for m in masks if m is not None]
    if not present:
        return None
    out = present[0]
    for m in present[1:]:
        out = jnp.logical_and(out, m)
    return out


# ----------------------------------------------------------------------------- positions


def apply_rope(x_BxTxNxH: jax.Array, positions_BxT: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding, rotate-half convention (GPT-NeoX / Llama in HF)."""
    H = x_BxTxNxH.shape[-1]
    inv_freq = 1.0 / theta ** (jnp.arange(0, H, 2, dtype=jnp.float32) / H)
    angle_BxTxh = positions_BxT[..., None].astype(jnp.float32) * inv_freq
    sin, cos = jnp.sin(angle_BxTxh)[:, :, None], jnp.cos(angle_BxTxh)[:, :, None]
    x1, x2 = jnp.split(x_BxTxNxH.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxTxNxH.dtype)


def relative_position_bucket(
    relative_position: jax.Array, *, bidirectional: bool, num_buckets: int, max_distance: int
) -> jax.Array:
    """T5's bucket of (key position - query position), exactly as Hugging Face computes it.

    Half the buckets are exact small distances, the rest log-spaced up to max_distance;
    bidirectional (encoder) splits the buckets between keys before and after the query,
    unidirectional (decoder) only counts distances to the past.
    """
    buckets = jnp.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0).astype(relative_position.dtype) * num_buckets
        distance = jnp.abs(relative_position)
    else:
        distance = -jnp.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    # float32 log then truncation toward zero, as torch's `.to(torch.long)` does.
    safe = jnp.maximum(distance, 1).astype(jnp.float32)
    log_ratio = jnp.log(safe / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (num_buckets - max_exact)).astype(relative_position.dtype)
    large = jnp.minimum(large, num_buckets - 1)
    return buckets + jnp.where(distance < max_exact, distance, large)


class RelativePositionBias(nn.Module):
    """T5 relative position bias: a learned scalar per (bucket, head), shared by a stack."""

    cfg: ModelConfig
    bidirectional: bool

    @nn.compact
    def __call__(self, q_pos_BxT: jax.Array, k_pos_BxS: jax.Array) -> jax.Array:
        cfg = self.cfg
        rel_BxTxS = k_pos_BxS[:, None, :] - q_pos_BxT[:, :, None]
        bucket_BxTxS = relative_position_bucket(
            rel_BxTxS,
            bidirectional=self.bidirectional,
            num_buckets=cfg.rel_buckets,
            max_distance=cfg.rel_max_distance,
        )
        # Mesh TF / HF T5: N(0, d_model^-1/2); the plain scheme's std otherwise.
        std = cfg.d_model**-0.5 if cfg.init == "t5" else cfg.init_std
        init = param_init(nn.initializers.normal(std), ("rel_buckets", "heads"))
        table = self.param("embedding", init, (cfg.rel_buckets, cfg.num_heads), jnp.float32)
        bias_BxTxSxN = jnp.take(table, bucket_BxTxS, axis=0)
        return jnp.transpose(bias_BxTxSxN, (0, 3, 1, 2))


# ----------------------------------------------------------------------------- the math


def _probs(q_BxTxNxH, k_BxSxNxH, mask, bias, scale):
    """Softmax(q k^T * scale + bias, masked), float32 (B, N, T, S)."""
    logits_BxNxTxS = jnp.einsum(
        "BTNH,BSNH->BNTS", q_BxTxNxH, k_BxSxNxH, preferred_element_type=jnp.float32
    )
    logits_BxNxTxS = logits_BxNxTxS * scale
    if bias is not None:
        logits_BxNxTxS = logits_BxNxTxS + bias.astype(jnp.float32)
    if mask is not None:
        logits_BxNxTxS = jnp.where(mask, logits_BxNxTxS, MASKED_LOGIT)
    return jax.nn.softmax(logits_BxNxTxS, axis=-1)


def _weighted_values(probs_BxNxTxS, v_BxSxNxH):
    return jnp.einsum("BNTS,BSNH->BTNH", probs_BxNxTxS.astype(v_BxSxNxH.dtype), v_BxSxNxH)


def _softmax_attention_formula(q_BxTxNxH, k_BxSxNxH, v_BxSxNxH, mask, bias, scale):
    """Attention without dropout; autodiff gives its backward (kernels='plain')."""
    return _weighted_values(_probs(q_BxTxNxH, k_BxSxNxH, mask, bias, scale), v_BxSxNxH)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _softmax_attention(q_BxTxNxH, k_BxSxNxH, v_BxSxNxH, mask, bias, scale):
    """Attention without dropout, with its backward written out (FlashAttention's) for
    kernels='cpu': autodiff of the masked softmax costs XLA:CPU slow row reductions and extra
    passes over the (B, N, T, S) probabilities (measured on CPU, see docs/performance.md)."""
    return _softmax_attention_formula(q_BxTxNxH, k_BxSxNxH, v_BxSxNxH, mask, bias, scale)


def _softmax_attention_fwd(q_BxTxNxH, k_BxSxNxH, v_BxSxNxH, mask, bias, scale):
    probs_BxNxTxS = _probs(q_BxTxNxH, k_BxSxNxH, mask, bias, scale)
    out_BxTxNxH = _weighted_values(probs_BxNxTxS, v_BxSxNxH)
    return out_BxTxNxH, (q_BxTxNxH, k_BxSxNxH, v_BxSxNxH, mask, probs_BxNxTxS, bias)


def _softmax_attention_bwd(scale, residuals, dout_BxTxNxH):
    q_BxTxNxH, k_BxSxNxH, v_BxSxNxH, mask, probs_BxNxTxS, bias = residuals
    dprobs_BxNxTxS = jnp.einsum(
        "BTNH,BSNH->BNTS", dout_BxTxNxH, v_BxSxNxH, preferred_element_type=jnp.float32
    )
    # Softmax backward: p * (dp - Σ_s p dp). Masked keys have p = 0; a query that sees no
    # key at all has uniform p but, as in autodiff through the mask, no gradient.
    row_BxNxTx1 = jnp.sum(probs_BxNxTxS * dprobs_BxNxTxS, axis=-1, keepdims=True)
    dlogits_BxNxTxS = probs_BxNxTxS * (dprobs_BxNxTxS - row_BxNxTx1)
    if mask is not None:
        dlogits_BxNxTxS = jnp.where(mask, dlogits_BxNxTxS, 0.0)
    dscores_BxNxTxS = (dlogits_BxNxTxS * scale).astype(q_BxTxNxH.dtype)
    dq_BxTxNxH = jnp.einsum("BNTS,BSNH->BTNH", dscores_BxNxTxS, k_BxSxNxH)
    dk_BxSxNxH = jnp.einsum("BNTS,BTNH->BSNH", dscores_BxNxTxS, q_BxTxNxH)
    dv_BxSxNxH = jnp.einsum(
        "BNTS,BTNH->BSNH", probs_BxNxTxS.astype(v_BxSxNxH.dtype), dout_BxTxNxH
    )
    dbias = None
    if bias is not None:  # summed over the axes the bias is broadcast along
        axes = tuple(i for i, n in enumerate(bias.shape) if n < dlogits_BxNxTxS.shape[i])
        dbias = jnp.sum(dlogits_BxNxTxS, axis=axes, keepdims=True).astype(bias.dtype)
    return dq_BxTxNxH, dk_BxSxNxH, dv_BxSxNxH, None, dbias


_softmax_attention.defvjp(_softmax_attention_fwd, _softmax_attention_bwd)


def _xla_attention(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask, bias, scale, dropout_rate, rng,
                   kernels):
    G = q_BxTxNxH.shape[2] // k_BxSxKxH.shape[2]
    # Query head n = k * G + g reads kv head k. Repeating the kv heads keeps every product
    # a plain batched matmul over (B, N); autodiff of the repeat sums their gradients.
    k_BxSxNxH = jnp.repeat(k_BxSxKxH, G, axis=2) if G > 1 else k_BxSxKxH
    v_BxSxNxH = jnp.repeat(v_BxSxKxH, G, axis=2) if G > 1 else v_BxSxKxH
    if rng is None:
        vjp = ops.kernels(kernels).attention_vjp
        fn = _softmax_attention if vjp else _softmax_attention_formula
        return fn(q_BxTxNxH, k_BxSxNxH, v_BxSxNxH, mask, bias, scale)
    probs_BxNxTxS = _probs(q_BxTxNxH, k_BxSxNxH, mask, bias, scale)
    keep = jax.random.bernoulli(rng, 1.0 - dropout_rate, probs_BxNxTxS.shape)
    probs_BxNxTxS = jnp.where(keep, probs_BxNxTxS / (1.0 - dropout_rate), 0.0)
    return _weighted_values(probs_BxNxTxS, v_BxSxNxH)


def attention(
    q_BxTxNxH: jax.Array,
    k_BxSxKxH: jax.Array,
    v_BxSxKxH: jax.Array,
    *,
    mask: jax.Array | None = None,
    bias: jax.Array | None = None,
    scale: float = 1.0,
    impl: str = "xla",
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    kernels: str = "auto",
) -> jax.Array:
    """Softmax(q k^T * scale + bias, masked) v, with K kv heads shared by G = N/K query heads.

    impl 'xla': einsum + float32 softmax (supports attention dropout);
    'dot': `jax.nn.dot_product_attention` (XLA); 'cudnn': its fused cuDNN kernel on an NVIDIA
    GPU, the same function through XLA elsewhere (so a GPU config runs, and is tested, on CPU).
    dropout_rng=None means no attention dropout. `kernels` (ModelConfig.kernels) picks the
    backward of 'xla' without dropout: written out ('cpu') or autodiff ('plain').
    """
    N, K = q_BxTxNxH.shape[2], k_BxSxKxH.shape[2]
    if N % K:
        raise ValueError(f"{K} kv heads do not divide {N} query heads")
    if impl == "xla":
        return _xla_attention(
            q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask, bias, scale, dropout_rate, dropout_rng,
            kernels
        )
    if impl not in ("dot", "cudnn"):
        raise ValueError(f"attention impl {impl!r} is not one of ('xla', 'dot', 'cudnn')")
    if dropout_rng is not None:
        raise ValueError(
            f"attention_impl={impl!r} has no attention dropout: "
            "set attention_dropout_rate=0 or use attention_impl='xla'"
        )
    if bias is not None:  # cuDNN wants the bias in the compute dtype
        bias = bias.astype(jnp.float32 if impl == "dot" else q_BxTxNxH.dtype)
    return jax.nn.dot_product_attention(
        q_BxTxNxH,
        k_BxSxKxH,
        v_BxSxKxH,
        bias=bias,
        mask=mask,
        scale=scale,
        implementation="cudnn" if impl == "cudnn" and _on_gpu() else None,
    )


@functools.cache
def _on_gpu() -> bool:
    return jax.default_backend() == "gpu"


# ----------------------------------------------------------------------------- the module


class MultiHeadAttention(nn.Module):
    """Self-attention (x_kv=None; RoPE and the KV cache apply) or cross-attention."""

    cfg: ModelConfig
    decode: bool = False
    deterministic: bool = True

    @nn.compact
    def __call__(
        self,
        x_BxTxD: jax.Array,
        x_kv_BxSxD: jax.Array | None = None,
        *,
        mask: jax.Array | None = None,
        bias: jax.Array | None = None,
        positions_BxT: jax.Array | None = None,
    ) -> jax.Array:
        cfg = self.cfg
        is_self = x_kv_BxSxD is None
        x_kv_BxSxD = x_BxTxD if is_self else x_kv_BxSxD
        N, K, H = cfg.num_heads, cfg.kv_heads, cfg.dim_per_head
        if is_self and N == K:  # q, k and v share their input
            q_BxTxNxH, k_BxSxKxH, v_BxSxKxH = self._project(
                x_BxTxD, N, "heads", ("query", "key", "value"))
        else:
            (q_BxTxNxH,) = self._project(x_BxTxD, N, "heads", ("query",))
            k_BxSxKxH, v_BxSxKxH = self._project(x_kv_BxSxD, K, "kv_heads", ("key", "value"))
        if is_self and cfg.position == "rope":
            if positions_BxT is None:
                raise ValueError("position='rope' needs positions_BxT for self-attention")
            q_BxTxNxH = apply_rope(q_BxTxNxH, positions_BxT, cfg.rope_theta)
            k_BxSxKxH = apply_rope(k_BxSxKxH, positions_BxT, cfg.rope_theta)
        if is_self and self.decode:
            k_BxSxKxH, v_BxSxKxH = self._update_cache(k_BxSxKxH, v_BxSxKxH)
        use_dropout = not self.deterministic and cfg.attention_dropout_rate > 0
        out_BxTxNxH = attention(
            q_BxTxNxH,
            k_BxSxKxH,
            v_BxSxKxH,
            mask=mask,
            bias=bias,
            scale=H**-0.5 if cfg.scale_attention else 1.0,
            impl=cfg.attention_impl,
            dropout_rate=cfg.attention_dropout_rate,
            dropout_rng=self.make_rng("dropout") if use_dropout else None,
            kernels=cfg.kernels,
        )
        out_BxTxNxH = constrain(out_BxTxNxH, ("batch", "length", "heads", "head_dim"))
        out = dense(cfg, cfg.d_model, ("heads", "head_dim", "embed"), "out", in_axes=2,
                    role="residual")
        out_BxTxD = out(out_BxTxNxH)
        return constrain(out_BxTxD, ("batch", "length", "embed"))

    def _project(self, x_BxTxD: jax.Array, heads: int, head_axis: str, names: tuple[str, ...]
                 ) -> tuple[jax.Array, ...]:
        """x @ each named (D, heads, H) kernel. With kernels='cpu', as ONE matmul with the
        kernels concatenated along H (params unchanged; the heads axis, which tensor
        parallelism shards, is left whole): on CPU three 128-wide products cost more than one
        384-wide one (measured on CPU, see docs/performance.md)."""
        cfg, H = self.cfg, self.cfg.dim_per_head
        axes = ("embed", head_axis, "head_dim")
        layers = [dense(cfg, (heads, H), axes, name, role="query" if name == "query" else "")
                  for name in names]
        names_out = ("batch", "length", head_axis, "head_dim")
        if not ops.kernels(cfg.kernels).fused_qkv:
            return tuple(constrain(layer(x_BxTxD), names_out) for layer in layers)
        weights = [layer.weights(x_BxTxD.shape[-1:]) for layer in layers]
        kernel_DxNxCH = jnp.concatenate([kernel for kernel, _ in weights], axis=2)
        y_BxTxNxCH = ops.matmul_2d(x_BxTxD.astype(cfg.dtype), kernel_DxNxCH, 1)
        if weights[0][1] is not None:
            y_BxTxNxCH = y_BxTxNxCH + jnp.concatenate([bias for _, bias in weights], axis=1)
        return tuple(constrain(y_BxTxNxH, names_out)
                     for y_BxTxNxH in jnp.split(y_BxTxNxCH, len(names), axis=3))

    def _update_cache(
        self, k_BxTxKxH: jax.Array, v_BxTxKxH: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """Write this chunk's keys/values at the cache index; return the whole cache.

        The first (init) call only creates the cache, sized by its input length, and
        attends over its own chunk; later calls prefill a chunk or add one token.
        """
        initialized = self.has_variable("cache", "cached_key")
        key = self.variable("cache", "cached_key", jnp.zeros, k_BxTxKxH.shape, k_BxTxKxH.dtype)
        value = self.variable("cache", "cached_value", jnp.zeros, v_BxTxKxH.shape, v_BxTxKxH.dtype)
        index = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
        if not initialized:
            return k_BxTxKxH, v_BxTxKxH
        start = (0, index.value, 0, 0)
        key.value = jax.lax.dynamic_update_slice(
            key.value, k_BxTxKxH.astype(key.value.dtype), start
        )
        value.value = jax.lax.dynamic_update_slice(
            value.value, v_BxTxKxH.astype(value.value.dtype), start
        )
        index.value = index.value + k_BxTxKxH.shape[1]
        return key.value, value.value
