"""One transformer block and one stack of them, shared by GPT, BERT and T5.

The stack runs its blocks with `nn.scan` (params `layers`, every leaf with a leading L
axis, logical name 'layers'; `scan_unroll` layers per loop iteration) or unrolled
(`layers_0` ... `layers_{L-1}`), optionally under `nn.remat` with a named checkpoint policy.
Masks and biases arrive built; blocks know nothing of the task.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.nn.attention import MultiHeadAttention, RelativePositionBias
from lm.nn.config import ModelConfig
from lm.nn.layers import Mlp, norm
from lm.nn.partitioning import constrain


def _residual(x: jax.Array, sublayer: Callable, norm_fn: nn.Module, drop: Callable, prenorm: bool):
    """Pre-LN: x + f(norm(x)) (GPT-2, T5). Post-LN: norm(x + f(x)) (BERT)."""
    if prenorm:
        return x + drop(sublayer(norm_fn(x)))
    return norm_fn(x + drop(sublayer(x)))


class Block(nn.Module):
    """Self-attention, optional cross-attention, MLP; each a residual sublayer."""

    cfg: ModelConfig
    cross: bool = False

    @nn.compact
    def __call__(
        self,
        x_BxTxD: jax.Array,
        mask: jax.Array | None,
        bias: jax.Array | None,
        positions_BxT: jax.Array | None,
        encoded_BxSxD: jax.Array | None,
        cross_mask: jax.Array | None,
        deterministic: bool,
        decode: bool,
    ) -> tuple[jax.Array, None]:
        # Positional arguments and a (carry, None) result: the shape nn.scan needs.
        cfg = self.cfg
        drop = nn.Dropout(cfg.dropout_rate, deterministic=deterministic)
        attn = MultiHeadAttention(cfg, decode=decode, deterministic=deterministic, name="attn")
        x = _residual(
            x_BxTxD,
            lambda h: attn(h, mask=mask, bias=bias, positions_BxT=positions_BxT),
            norm(cfg, "attn_norm"),
            drop,
            cfg.prenorm,
        )
        if self.cross:
            cross = MultiHeadAttention(cfg, deterministic=deterministic, name="cross_attn")
            x = _residual(
                x,
                lambda h: cross(h, encoded_BxSxD, mask=cross_mask),
                norm(cfg, "cross_attn_norm"),
                drop,
                cfg.prenorm,
            )
        x = _residual(x, Mlp(cfg, name="mlp"), norm(cfg, "mlp_norm"), drop, cfg.prenorm)
        return constrain(x, ("batch", "length", "embed")), None


def remat_policy(name: str) -> Callable | None:
    """'full' saves nothing (None policy); other names are jax.checkpoint_policies."""
    return None if name == "full" else getattr(jax.checkpoint_policies, name)


def _block_class(cfg: ModelConfig) -> type[Block]:
    if cfg.remat_policy == "none":
        return Block
    # Block.__call__ args, counting self as 0: deterministic = 7, decode = 8.
    return nn.remat(
        Block,
        policy=remat_policy(cfg.remat_policy),
        prevent_cse=not cfg.scan_layers,  # scan already stops CSE across layers
        static_argnums=(7, 8),
    )


class Stack(nn.Module):
    """L blocks (+ T5 relative bias at the bottom, + final norm when pre-LN)."""

    cfg: ModelConfig
    num_layers: int
    causal: bool = False  # only decides the relative-bias buckets; masks come built
    cross: bool = False

    @nn.compact
    def __call__(
        self,
        x_BxTxD: jax.Array,
        mask: jax.Array | None,
        *,
        positions_BxT: jax.Array | None = None,
        key_positions_BxS: jax.Array | None = None,
        encoded_BxSxD: jax.Array | None = None,
        cross_mask: jax.Array | None = None,
        deterministic: bool = True,
        decode: bool = False,
    ) -> jax.Array:
        cfg = self.cfg
        if self.cross and encoded_BxSxD is None:
            raise ValueError("a stack with cross-attention needs encoded_BxSxD")
        bias = None
        if cfg.position == "relative":
            key_positions_BxS = positions_BxT if key_positions_BxS is None else key_positions_BxS
            rel = RelativePositionBias(cfg, bidirectional=not self.causal, name="rel_bias")
            bias = rel(positions_BxT, key_positions_BxS)
        args = (mask, bias, positions_BxT, encoded_BxSxD, cross_mask, deterministic, decode)
        x = constrain(x_BxTxD, ("batch", "length", "embed"))
        block = _block_class(cfg)
        if cfg.scan_layers:
            layers = nn.scan(
                block,
                variable_axes={"params": 0, "cache": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast,) * len(args),
                length=self.num_layers,
                unroll=cfg.scan_unroll,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(cfg, cross=self.cross, name="layers")
            x, _ = layers(x, *args)
        else:
            for i in range(self.num_layers):
                x, _ = block(cfg, cross=self.cross, name=f"layers_{i}")(x, *args)
        if cfg.prenorm:
            x = norm(cfg, "final_norm")(x)
        return x


class DecodeIndex(nn.Module):
    """Cache-slot indices of the current chunk when decoding with a KV cache.

    Holds the model-level 'cache' counter. The init call sizes the cache (its input length
    is the number of slots) and does not advance.
    Returns (query slots BxT, all key slots 1xS): causal_mask of the two is the decode mask.
    """

    @nn.compact
    def __call__(self, batch: int, length: int) -> tuple[jax.Array, jax.Array]:
        initialized = self.has_variable("cache", "index")
        index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
        slots = self.variable("cache", "slots", lambda: jnp.arange(length, dtype=jnp.int32))
        q_BxT = jnp.broadcast_to(index.value + jnp.arange(length, dtype=jnp.int32), (batch, length))
        if initialized:
            index.value = index.value + length
        return q_BxT, slots.value[None]


def stack_layers(stack: Mapping[str, Any], num_layers: int) -> dict[str, Any]:
    """Unrolled stack params (`layers_i`) -> scanned (`layers`, leading L axis)."""
    layers = [stack[f"layers_{i}"] for i in range(num_layers)]
    rest = {k: v for k, v in stack.items() if not k.startswith("layers_")}
    return {**rest, "layers": jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}


def unstack_layers(stack: Mapping[str, Any]) -> dict[str, Any]:
    """Scanned stack params (`layers`) -> unrolled (`layers_0` ... `layers_{L-1}`)."""
    num_layers = jax.tree.leaves(stack["layers"])[0].shape[0]
    rest = {k: v for k, v in stack.items() if k != "layers"}
    layers = {
        f"layers_{i}": jax.tree.map(lambda x, i=i: x[i], stack["layers"]) for i in range(num_layers)
    }
    return {**rest, **layers}
