"""GPT: a decoder-only causal LM (GPT-2 at the default config), or with `num_labels` a
sequence classifier (HF GPT2ForSequenceClassification)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.nn.attention import causal_mask, combine_masks, padding_mask, segment_mask
from lm.nn.config import ModelConfig
from lm.nn.layers import LMHead, dense, embed, logits
from lm.nn.transformer import DecodeIndex, Stack


def check_length(cfg: ModelConfig, length: int) -> None:
    """Learned position tables have max_len rows; longer inputs would index past them."""
    if cfg.position == "learned" and length > cfg.max_len:
        raise ValueError(f"sequence length {length} > max_len={cfg.max_len} position embeddings")


class GPT(nn.Module):
    """Token (+ learned position) embedding, a causal stack, tied or untied LM head; with
    cfg.num_labels a classifier of the last real token instead (1 label = regression)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(
        self,
        tokens_BxT: jax.Array,
        *,
        segment_ids: jax.Array | None = None,
        positions: jax.Array | None = None,
        input_mask: jax.Array | None = None,
        deterministic: bool = True,
        decode: bool = False,
    ) -> jax.Array | dict[str, jax.Array]:
        """Logits BxTxV, or with cfg.num_labels {'logits': BxC} (as BERT's classifier).
        `positions` (BxT) default to the sequence (decode: cache-slot) index; `input_mask`
        (1 = real token) masks padded keys: BxT, or BxS over the cache slots when decoding
        (left-padded prompts: generate.py)."""
        cfg = self.cfg
        B, T = tokens_BxT.shape
        if decode:
            if segment_ids is not None:
                raise ValueError("segment_ids are not supported with decode=True")
            index_BxT, key_index_1xS = DecodeIndex(name="decode_index")(B, T)
            mask = causal_mask(index_BxT, key_index_1xS)
        else:
            check_length(cfg, T)
            index_BxT = key_index_1xS = jnp.arange(T, dtype=jnp.int32)[None]
            seg = None if segment_ids is None else segment_mask(segment_ids, segment_ids)
            mask = combine_masks(causal_mask(index_BxT, key_index_1xS), seg)
        mask = combine_masks(mask, None if input_mask is None else padding_mask(input_mask))
        positions_BxT = index_BxT if positions is None else positions
        token_embed = embed(cfg, cfg.vocab_size, ("vocab", "embed"), "token_embed")
        x_BxTxD = token_embed(tokens_BxT)
        if cfg.position == "learned":
            x_BxTxD += embed(cfg, cfg.max_len, ("position", "embed"), "pos_embed")(positions_BxT)
        x_BxTxD = nn.Dropout(cfg.dropout_rate, deterministic=deterministic)(x_BxTxD)
        x_BxTxD = Stack(cfg, cfg.num_layers, causal=True, name="decoder")(
            x_BxTxD,
            mask,
            positions_BxT=positions_BxT,
            key_positions_BxS=key_index_1xS if decode else positions_BxT,
            deterministic=deterministic,
            decode=decode,
        )
        if cfg.num_labels:
            return {"logits": self._classify(x_BxTxD, input_mask)}
        if cfg.tie_embeddings:
            return logits(x_BxTxD, token_embed.embedding, cfg.dtype)
        return LMHead(cfg, name="lm_head")(x_BxTxD)

    def _classify(self, x_BxTxD: jax.Array, input_mask_BxT: jax.Array | None) -> jax.Array:
        """A bias-free `score` of the final hidden state at each row's rightmost real token
        (HF's rule, so left or right padding; the last token without a mask)."""
        T = x_BxTxD.shape[1]
        index_T = jnp.arange(T, dtype=jnp.int32)
        last_B = (jnp.full(x_BxTxD.shape[:1], T - 1) if input_mask_BxT is None
                  else jnp.argmax(index_T * input_mask_BxT, axis=-1))
        x_BxD = jnp.take_along_axis(x_BxTxD, last_B[:, None, None], axis=1)[:, 0]
        score = dense(self.cfg, self.cfg.num_labels, ("embed", "classes"), "classifier",
                      use_bias=False)
        return score(x_BxD).astype(jnp.float32)
