"""T5: encoder-decoder with a shared embedding and relative position bias per stack."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.nn.attention import causal_mask, combine_masks, padding_mask
from lm.nn.config import ModelConfig
from lm.nn.layers import LMHead, embed, logits
from lm.nn.transformer import DecodeIndex, Stack


def _key_mask(valid_BxS: jax.Array | None) -> jax.Array | None:
    return None if valid_BxS is None else padding_mask(valid_BxS)


class T5(nn.Module):
    """`__call__` = `decode(encode(...))`; `encode`/`decode` serve generation."""

    cfg: ModelConfig

    def setup(self):
        cfg = self.cfg
        self.token_embed = embed(cfg, cfg.vocab_size, ("vocab", "embed"), "token_embed")
        self.encoder = Stack(cfg, cfg.num_layers, causal=False)
        self.decoder = Stack(cfg, cfg.decoder_layers, causal=True, cross=True)
        self.decode_index = DecodeIndex()
        self.dropout = nn.Dropout(cfg.dropout_rate)
        if not cfg.tie_embeddings:
            self.lm_head = LMHead(cfg)

    def __call__(
        self,
        encoder_tokens_BxS: jax.Array,
        decoder_tokens_BxT: jax.Array,
        *,
        encoder_mask: jax.Array | None = None,
        decoder_mask: jax.Array | None = None,
        deterministic: bool = True,
        decode: bool = False,
    ) -> jax.Array:
        encoded_BxSxD = self.encode(encoder_tokens_BxS, encoder_mask, deterministic=deterministic)
        return self.decode(
            encoded_BxSxD,
            decoder_tokens_BxT,
            encoder_mask=encoder_mask,
            decoder_mask=decoder_mask,
            deterministic=deterministic,
            decode=decode,
        )

    def encode(
        self,
        encoder_tokens_BxS: jax.Array,
        encoder_mask: jax.Array | None = None,
        *,
        deterministic: bool = True,
    ) -> jax.Array:
        """Encoder output BxSxD (encoder_mask: 1 = real token, 0 = padding)."""
        positions_1xS = jnp.arange(encoder_tokens_BxS.shape[1], dtype=jnp.int32)[None]
        x_BxSxD = self.dropout(self.token_embed(encoder_tokens_BxS), deterministic=deterministic)
        x_BxSxD = self.encoder(
            x_BxSxD,
            _key_mask(encoder_mask),
            positions_BxT=positions_1xS,
            deterministic=deterministic,
        )
        return self.dropout(x_BxSxD, deterministic=deterministic)

    def decode(
        self,
        encoded_BxSxD: jax.Array,
        decoder_tokens_BxT: jax.Array,
        *,
        encoder_mask: jax.Array | None = None,
        decoder_mask: jax.Array | None = None,
        deterministic: bool = True,
        decode: bool = False,
    ) -> jax.Array:
        """Decoder logits BxTxV (float32); decode=True uses and updates the KV cache."""
        cfg = self.cfg
        B, T = decoder_tokens_BxT.shape
        if decode:
            if decoder_mask is not None:
                raise ValueError("decoder_mask is not supported with decode=True")
            index_BxT, key_index_1xS = self.decode_index(B, T)
        else:
            index_BxT = key_index_1xS = jnp.arange(T, dtype=jnp.int32)[None]
        mask = combine_masks(causal_mask(index_BxT, key_index_1xS), _key_mask(decoder_mask))
        x_BxTxD = self.dropout(self.token_embed(decoder_tokens_BxT), deterministic=deterministic)
        x_BxTxD = self.decoder(
            x_BxTxD,
            mask,
            positions_BxT=index_BxT,
            key_positions_BxS=key_index_1xS,
            encoded_BxSxD=encoded_BxSxD,
            cross_mask=_key_mask(encoder_mask),
            deterministic=deterministic,
            decode=decode,
        )
        x_BxTxD = self.dropout(x_BxTxD, deterministic=deterministic)
        if cfg.tie_embeddings:
            # As HF/Mesh TF: rescale before reusing the input embedding as the output layer.
            return logits(x_BxTxD * cfg.d_model**-0.5, self.token_embed.embedding, cfg.dtype)
        return self.lm_head(x_BxTxD)
