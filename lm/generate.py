"""Sampling with the KV cache: GPT continues a prompt, T5 decodes given encoder tokens.

The prompt is prefilled in one call; the remaining tokens come one at a time from a
`lax.scan`, so the whole generation is one jitted function.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.errors import UserError


def _pick(logits_BxV: jax.Array, key: jax.Array, temperature: float) -> jax.Array:
    """Greedy at temperature 0, else a sample from softmax(logits / temperature)."""
    if temperature == 0.0:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, logits_BxV / temperature).astype(jnp.int32)


def generate(
    model: nn.Module,
    params: Any,
    prompt_BxP: jax.Array,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    rng: jax.Array | None = None,
    encoder_tokens: jax.Array | None = None,
    encoder_mask: jax.Array | None = None,
) -> jax.Array:
    """The next `max_new_tokens` tokens (BxN) after `prompt_BxP`.

    For T5 the prompt is the decoder's start (e.g. the pad id 0) and `encoder_tokens` the
    input; for GPT the prompt is the text so far.
    """
    cfg = model.cfg
    B, P = prompt_BxP.shape
    if cfg.family == "bert":
        raise UserError("generate needs a decoder: family 'gpt' or 't5', not 'bert'")
    if (cfg.family == "t5") != (encoder_tokens is not None):
        raise UserError("encoder_tokens are required for t5 and only for t5")
    if cfg.position == "learned" and P + max_new_tokens > cfg.max_len:
        raise UserError(f"prompt {P} + {max_new_tokens} new tokens > max_len={cfg.max_len}")
    rng = jax.random.key(0) if rng is None else rng
    run = functools.partial(
        _generate, model, max_new_tokens=max_new_tokens, temperature=temperature
    )
    return jax.jit(run)(params, prompt_BxP, rng, encoder_tokens, encoder_mask)


def _generate(
    model, params, prompt_BxP, rng, encoder_tokens, encoder_mask, *, max_new_tokens, temperature
):
    B, P = prompt_BxP.shape
    if encoder_tokens is None:
        decoder = lambda variables, toks_BxT: model.apply(
            variables, toks_BxT, decode=True, mutable=["cache"]
        )
    else:
        encoded_BxSxD = model.apply(
            {"params": params}, encoder_tokens, encoder_mask, method="encode"
        )
        decoder = lambda variables, toks_BxT: model.apply(
            variables,
            encoded_BxSxD,
            toks_BxT,
            encoder_mask=encoder_mask,
            decode=True,
            method="decode",
            mutable=["cache"],
        )
    # A call without a cache creates one sized by its input: prompt + new tokens.
    _, state = decoder({"params": params}, jnp.zeros((B, P + max_new_tokens), jnp.int32))
    logits_BxPxV, state = decoder({"params": params, **state}, prompt_BxP)
    keys = jax.random.split(rng, max_new_tokens)
    first_B = _pick(logits_BxPxV[:, -1], keys[0], temperature)

    def step(carry, key):
        cache, token_B = carry
        logits_Bx1xV, state = decoder({"params": params, "cache": cache}, token_B[:, None])
        next_B = _pick(logits_Bx1xV[:, -1], key, temperature)
        return (state["cache"], next_B), next_B

    _, rest_NxB = jax.lax.scan(step, (state["cache"], first_B), keys[1:])
    return jnp.concatenate([first_B[:, None], rest_NxB.T], axis=1)
