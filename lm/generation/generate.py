"""Sampling: GPT continues prompts, T5 decodes given encoder inputs; one jitted function.

`generate` prefills the KV cache with the prompts in one call, then a `lax.while_loop`
adds one token per step and stops early once every row has emitted end-of-sequence
(finished rows emit `pad_id`). Tokens are greedy (temperature 0) or sampled from
softmax(logits / temperature) cut to the top k and/or the top-p nucleus, as Hugging Face
orders them (temperature, top-k, top-p).

Ragged GPT prompts are left-padded (`prompt_mask`: 0 = padding, then 1 = real tokens):
every row's positions start at 0 at its first real token and its padded slots are masked,
so a row gets exactly the continuation it gets alone. T5 takes ragged encoder inputs
through `encoder_mask`; its decoder prompt (the start token) is the same length in every row.

Learned positions stop at `max_len` (M). A longer text slides the context window, as
nanoGPT's sampler crops to `block_size`: each step sees the last M tokens. A fixed-size
cache cannot simply slide (every cached key was computed at its old position), so once a
row's text is longer than M, each new token recomputes the whole M-token window: about M
times the work of a cached step. `use_cache=False` recomputes a window for every token
(the reference the cache is tested against, and the speed baseline).

Decoding runs the layers unrolled (scanned params are unstacked inside the jitted function):
on CPU a scan over layers copies the whole cache at every step, where unrolled layers update
it in place.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lm.errors import UserError
from lm.models import build
from lm.nn.transformer import unstack_layers


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How the next token is chosen from the logits."""

    temperature: float = 0.0  # 0 = greedy (argmax); top_k and top_p then do nothing
    top_k: int = 0  # keep the k most probable tokens; 0 = all
    top_p: float = 1.0  # keep the smallest set of most probable tokens with mass >= p

    def __post_init__(self):
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise UserError(f"need temperature >= 0, top_k >= 0, 0 < top_p <= 1: {self}")


def filter_logits(logits_BxV: jax.Array, sampling: Sampling) -> jax.Array:
    """logits / temperature, with every token outside the top-k and top-p sets at -inf.

    Top-p keeps a token iff the tokens more probable than it hold less than p of the mass
    (Hugging Face's rule): the most probable token is always kept.
    """
    logits_BxV = logits_BxV.astype(jnp.float32) / sampling.temperature
    if sampling.top_k and sampling.top_k < logits_BxV.shape[-1]:
        kth_Bx1 = jax.lax.top_k(logits_BxV, sampling.top_k)[0][:, -1:]
        logits_BxV = jnp.where(logits_BxV < kth_Bx1, -jnp.inf, logits_BxV)
    if sampling.top_p < 1.0:
        sorted_BxV = -jnp.sort(-logits_BxV, axis=-1)  # most probable first
        probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
        before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
        kept_B = jnp.sum(before_BxV < sampling.top_p, axis=-1)
        cutoff_Bx1 = jnp.take_along_axis(sorted_BxV, kept_B[:, None] - 1, axis=-1)
        logits_BxV = jnp.where(logits_BxV < cutoff_Bx1, -jnp.inf, logits_BxV)
    return logits_BxV


def pick_tokens(logits_BxV: jax.Array, key: jax.Array, sampling: Sampling) -> jax.Array:
    """The next token of each row: argmax, or a sample of the filtered distribution."""
    if sampling.temperature == 0.0:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, filter_logits(logits_BxV, sampling)).astype(jnp.int32)


def generate(
    model: nn.Module,
    params: Any,
    prompt_BxP: jax.Array,
    *,
    max_new_tokens: int,
    prompt_mask: jax.Array | None = None,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_id: int | None = None,
    pad_id: int = 0,
    rng: jax.Array | None = None,
    encoder_tokens: jax.Array | None = None,
    encoder_mask: jax.Array | None = None,
    use_cache: bool = True,
) -> jax.Array:
    """The next `max_new_tokens` tokens (BxN) after `prompt_BxP`.

    GPT: the prompt is the text so far, left-padded where `prompt_mask` is 0. T5: the prompt
    is the decoder's start (the pad id 0 for HF T5) and `encoder_tokens` the input. After
    `eos_id` a row emits `pad_id`. `rng` seeds sampling (default key 0).
    """
    cfg = model.cfg
    B, P = np.shape(prompt_BxP)
    if cfg.family == "bert":
        raise UserError("generate needs a decoder: family 'gpt' or 't5', not 'bert'")
    if (cfg.family == "t5") != (encoder_tokens is not None):
        raise UserError("encoder_tokens are required for t5 and only for t5")
    if max_new_tokens < 1 or P < 1:
        raise UserError(f"need a prompt and max_new_tokens >= 1, got {P} and {max_new_tokens}")
    prompt_mask = np.ones((B, P), np.int32) if prompt_mask is None else np.asarray(prompt_mask)
    if not (np.all(np.diff(prompt_mask, axis=1) >= 0) and np.all(prompt_mask[:, -1] == 1)):
        raise UserError("prompt_mask must be left padding: each row 0...0 1...1, ending in 1")
    if cfg.family == "t5" and not np.all(prompt_mask):
        raise UserError("T5 decoder prompts are not padded: put ragged text in encoder_tokens")
    if cfg.scan_layers or cfg.remat_policy != "none":
        # A scan over layers copies the whole KV cache at each step: unroll. No remat.
        model = build(cfg.replace(scan_layers=False, remat_policy="none"))
    return _generate(
        params,
        jnp.asarray(prompt_BxP, jnp.int32),
        jnp.asarray(prompt_mask, jnp.int32),
        jax.random.key(0) if rng is None else rng,
        encoder_tokens,
        encoder_mask,
        model=model,
        max_new_tokens=max_new_tokens,
        sampling=Sampling(temperature, top_k, top_p),
        eos_id=eos_id,
        pad_id=pad_id,
        use_cache=use_cache,
    )


# A forward over a chunk of tokens: (tokens BxT, positions BxT, key validity BxS, cache)
# -> (logits BxTxV, updated cache).
Forward = Callable[[jax.Array, jax.Array, jax.Array, Any], tuple[jax.Array, Any]]


def _forward(model: nn.Module, params, encoder_tokens, encoder_mask) -> Forward:
    """The family's forward: GPT with per-row positions, T5's decoder on its encoded input."""
    if model.cfg.family == "gpt":

        def apply(variables, toks_BxT, positions_BxT, valid_BxS, **kw):
            return model.apply(
                variables, toks_BxT, positions=positions_BxT, input_mask=valid_BxS, **kw
            )

    else:
        encoded_BxSxD = model.apply(
            {"params": params}, encoder_tokens, encoder_mask, method="encode"
        )

        def apply(variables, toks_BxT, positions_BxT, valid_BxS, **kw):
            # Decoder prompts are unpadded (checked by `generate`): positions are the slots.
            del positions_BxT, valid_BxS
            return model.apply(
                variables, encoded_BxSxD, toks_BxT, encoder_mask=encoder_mask,
                method="decode", **kw,
            )

    def forward(toks_BxT, positions_BxT, valid_BxS, cache):
        """cache None: no cache; {}: create one (sized by toks_BxT); else use and update it."""
        if cache is None:
            return apply({"params": params}, toks_BxT, positions_BxT, valid_BxS), None
        logits_BxTxV, state = apply(
            {"params": params, **cache}, toks_BxT, positions_BxT, valid_BxS,
            decode=True, mutable=["cache"],
        )
        return logits_BxTxV, {"cache": state["cache"]}

    return forward


@functools.partial(
    jax.jit,
    static_argnames=("model", "max_new_tokens", "sampling", "eos_id", "pad_id", "use_cache"),
)
def _generate(
    params, prompt_BxP, prompt_mask_BxP, rng, encoder_tokens, encoder_mask, *,
    model, max_new_tokens, sampling, eos_id, pad_id, use_cache,
):
    cfg = model.cfg
    params = {k: unstack_layers(v) if isinstance(v, Mapping) and "layers" in v else v
              for k, v in params.items()}
    B, P = prompt_BxP.shape
    L = P + max_new_tokens  # columns of the token buffer: prompt, then new tokens
    # Learned positions see at most max_len tokens: the window (and cache) width W.
    W = min(L, cfg.max_len) if cfg.position == "learned" else L
    start_B = P - jnp.sum(prompt_mask_BxP, axis=1)  # each row's first real column
    forward = _forward(model, params, encoder_tokens, encoder_mask)
    new_BxN = jnp.full((B, max_new_tokens), pad_id, jnp.int32)
    buffer_BxL = jnp.concatenate([prompt_BxP, new_BxN], axis=1)

    def emit(t, buffer_BxL, done_B, logits_BxV):
        """Chooses the token of column t; rows already finished get pad_id."""
        token_B = pick_tokens(logits_BxV, jax.random.fold_in(rng, t), sampling)
        token_B = jnp.where(done_B, pad_id, token_B)
        buffer_BxL = jax.lax.dynamic_update_slice(buffer_BxL, token_B[:, None], (0, t))
        if eos_id is not None:
            done_B = done_B | (token_B == eos_id)
        return t + 1, buffer_BxL, done_B

    def running(last_column):
        return lambda carry: (carry[0] <= last_column) & ~jnp.all(carry[2])

    def positions(first_column, length):
        """Columns first_column... as positions counted from each row's first real token."""
        columns_1xT = first_column + jnp.arange(length)[None]
        return jnp.maximum(columns_1xT - start_B[:, None], 0), columns_1xT

    carry = (jnp.int32(P), buffer_BxL, jnp.zeros((B,), bool))
    cached = use_cache and P <= W
    if cached:
        # The cache holds W slots = columns 0..W-1; slots before a row's start are masked.
        positions_BxW, columns_1xW = positions(0, W)
        valid_BxW = columns_1xW >= start_B[:, None]
        # Creating the cache runs a forward whose output is unused: XLA drops it.
        _, cache = forward(jnp.zeros((B, W), jnp.int32), positions_BxW, valid_BxW, {})
        logits_BxPxV, cache = forward(prompt_BxP, positions(0, P)[0], valid_BxW, cache)
        carry = (*emit(*carry, logits_BxPxV[:, -1]), cache)

        def cached_step(carry):
            t, buffer_BxL, done_B, cache = carry
            token_Bx1 = jax.lax.dynamic_slice(buffer_BxL, (0, t - 1), (B, 1))
            logits_Bx1xV, cache = forward(token_Bx1, positions(t - 1, 1)[0], valid_BxW, cache)
            return (*emit(t, buffer_BxL, done_B, logits_Bx1xV[:, 0]), cache)

        # The token of column t feeds slot t - 1: the cache serves columns up to W.
        carry = jax.lax.while_loop(running(min(W, L - 1)), cached_step, carry)[:3]

    def window_step(carry):
        """Recomputes the W columns ending at t - 1 (or the first W, while t < W)."""
        t, buffer_BxL, done_B = carry
        s = jnp.clip(t - W, 0, L - W)
        window_BxW = jax.lax.dynamic_slice(buffer_BxL, (0, s), (B, W))
        # A row's context starts at its first real column or at the window's start.
        columns_1xW = s + jnp.arange(W)[None]
        begin_Bx1 = jnp.maximum(start_B, s)[:, None]
        positions_BxW = jnp.maximum(columns_1xW - begin_Bx1, 0)
        logits_BxWxV, _ = forward(window_BxW, positions_BxW, columns_1xW >= begin_Bx1, None)
        logits_BxV = jax.lax.dynamic_index_in_dim(logits_BxWxV, t - 1 - s, 1, keepdims=False)
        return emit(t, buffer_BxL, done_B, logits_BxV)

    if not (cached and W >= L - 1):  # else the cache served every column
        carry = jax.lax.while_loop(running(L - 1), window_step, carry)
    return carry[1][:, P:]
