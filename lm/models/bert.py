"""BERT: a post-LN encoder with token-type embeddings, pooler, MLM, NSP, classifier heads."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.models.gpt import check_length
from lm.nn.attention import padding_mask
from lm.nn.config import ModelConfig
from lm.nn.layers import activation, dense, embed, logits, norm
from lm.nn.partitioning import param_init
from lm.nn.transformer import Stack


class BERT(nn.Module):
    """Returns {'hidden', 'pooled'} plus 'mlm_logits', 'nsp_logits', 'logits' as configured."""

    cfg: ModelConfig

    @nn.compact
    def __call__(
        self,
        tokens_BxT: jax.Array,
        *,
        token_type_ids: jax.Array | None = None,
        input_mask: jax.Array | None = None,
        mlm_positions: jax.Array | None = None,
        deterministic: bool = True,
    ) -> dict[str, jax.Array]:
        """`mlm_positions` (B, P): score the MLM head at these positions only (its logits
        come out (B, P, V)); None scores every position (B, T, V)."""
        cfg = self.cfg
        check_length(cfg, tokens_BxT.shape[1])
        positions_1xT = jnp.arange(tokens_BxT.shape[1], dtype=jnp.int32)[None]
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(tokens_BxT)
        drop = nn.Dropout(cfg.dropout_rate, deterministic=deterministic)
        token_embed = embed(cfg, cfg.vocab_size, ("vocab", "embed"), "token_embed")
        x_BxTxD = token_embed(tokens_BxT)
        if cfg.position == "learned":
            x_BxTxD += embed(cfg, cfg.max_len, ("position", "embed"), "pos_embed")(positions_1xT)
        x_BxTxD += embed(cfg, cfg.type_vocab_size, ("type_vocab", "embed"), "type_embed")(
            token_type_ids
        )
        x_BxTxD = drop(norm(cfg, "embed_norm")(x_BxTxD))
        mask = None if input_mask is None else padding_mask(input_mask)
        hidden_BxTxD = Stack(cfg, cfg.num_layers, name="encoder")(
            x_BxTxD, mask, positions_BxT=positions_1xT, deterministic=deterministic
        )
        pooler = dense(cfg, cfg.d_model, ("embed", "mlp"), "pooler", use_bias=True)
        pooled_BxD = jnp.tanh(pooler(hidden_BxTxD[:, 0]))
        out = {"hidden": hidden_BxTxD, "pooled": pooled_BxD}
        if "mlm" in cfg.heads:
            at_BxPxD = hidden_BxTxD if mlm_positions is None else jnp.take_along_axis(
                hidden_BxTxD, mlm_positions[..., None], axis=1)
            out["mlm_logits"] = self._mlm(at_BxPxD, token_embed.embedding)
        if "nsp" in cfg.heads:
            nsp = dense(cfg, 2, ("embed", "classes"), "nsp", use_bias=True)
            out["nsp_logits"] = nsp(pooled_BxD).astype(jnp.float32)
        if cfg.num_labels:
            classifier = dense(
                cfg, cfg.num_labels, ("embed", "classes"), "classifier", use_bias=True
            )
            out["logits"] = classifier(drop(pooled_BxD)).astype(jnp.float32)
        return out

    def _mlm(self, hidden_BxTxD: jax.Array, table_VxD: jax.Array) -> jax.Array:
        """Transform (dense + act + LayerNorm), then the tied decoder plus a bias."""
        cfg = self.cfg
        transform = dense(cfg, cfg.d_model, ("embed", "mlp"), "mlm_transform", use_bias=True)
        h_BxTxD = norm(cfg, "mlm_norm")(activation(cfg)(transform(hidden_BxTxD)))
        bias_V = self.param(
            "mlm_bias", param_init(nn.initializers.zeros, ("vocab",)), (cfg.vocab_size,)
        )
        return logits(h_BxTxD, table_VxD, cfg.dtype) + bias_V
