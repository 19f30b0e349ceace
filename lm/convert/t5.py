"""T5 (T5ForConditionalGeneration: original T5 and v1.1) -> lm T5.

T5 has no biases, RMS layer norms (`T5LayerNorm`), unscaled attention logits, and one
relative-position bias table per stack, stored in the first block's self-attention.
"""

from lm.convert.common import (
    Path,
    Rule,
    attention_rules,
    dense_rules,
    field,
    identity,
    linear,
    norm_rules,
    prefixed,
    require,
)
from lm.models import ModelConfig

PREFIX = ""
IGNORED = r"$^"  # nothing
# Tied copies: the stacks' embed_tokens and (tied) lm_head are the shared embedding.
TIED = {
    "encoder.embed_tokens.weight": "shared.weight",
    "decoder.embed_tokens.weight": "shared.weight",
    "lm_head.weight": "shared.weight",
}
REQUIRED = {"is_decoder": (False, (False,)), "is_encoder_decoder": (True, (True,))}
# feed_forward_proj -> (activation, gated). HF's 'gated-gelu' is the tanh approximation.
FEED_FORWARD = {
    "relu": ("relu", False),
    "gelu": ("gelu", False),
    "gated-gelu": ("gelu_tanh", True),
    "gated-relu": ("relu", True),
    "gated-silu": ("silu", True),
}


def scales_decoder_output(hf: dict) -> bool:
    """Whether HF multiplies the decoder output by d_model**-0.5 before the LM head.

    transformers < 5 did so exactly when embeddings are tied; transformers 5 always ties
    and writes `scale_decoder_outputs` (False for v1.1 checkpoints) instead.
    """
    return hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True))


def config(hf: dict) -> dict:
    """ModelConfig fields for an HF T5Config dict.

    lm's tied T5 scales the decoder output as HF does; an unscaled model is lm's untied T5
    (its lm_head is a copy of the shared embedding when the checkpoint has none).
    """
    require(hf, REQUIRED)
    activation, gated = field(hf, "feed_forward_proj", FEED_FORWARD, "relu")
    return dict(
        family="t5", vocab_size=hf["vocab_size"], num_layers=hf["num_layers"],
        num_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
        d_model=hf["d_model"], num_heads=hf["num_heads"], head_dim=hf["d_kv"], d_ff=hf["d_ff"],
        max_len=hf.get("n_positions", 512), position="relative", norm="rmsnorm",
        norm_eps=hf.get("layer_norm_epsilon", 1e-6), prenorm=True, activation=activation,
        gated=gated, use_bias=False, tie_embeddings=scales_decoder_output(hf),
        # HF T5 drops attention weights with the same rate as activations.
        dropout_rate=hf.get("dropout_rate", 0.1),
        attention_dropout_rate=hf.get("dropout_rate", 0.1),
        scale_attention=False, rel_buckets=hf.get("relative_attention_num_buckets", 32),
        rel_max_distance=hf.get("relative_attention_max_distance", 128),
    )


def mlp_rules(hf: str, gated: bool) -> dict[Path, Rule]:
    """lm mlp from T5's DenseReluDense (wi) or DenseGatedActDense (wi_0 activated, wi_1 linear)."""
    names = {"wi": "wi_0", "wi_linear": "wi_1"} if gated else {"wi": "wi"}
    names["wo"] = "wo"
    out: dict[Path, Rule] = {}
    for ours, theirs in names.items():
        out |= prefixed((ours,), dense_rules(hf + theirs, bias=False))
    return out


def attn_rules(hf: str, cfg: ModelConfig) -> dict[Path, Rule]:
    names = {"query": "q", "key": "k", "value": "v", "out": "o"}
    return attention_rules({k: hf + v for k, v in names.items()}, cfg.num_heads, cfg.kv_heads,
                           bias=False)


def block_rules(stack: str, i: int, cfg: ModelConfig) -> dict[Path, Rule]:
    """One T5 block: layer.0 self-attention, [layer.1 cross-attention,] then the MLP."""
    hf = f"{stack}.block.{i}.layer."
    out = prefixed(("attn",), attn_rules(hf + "0.SelfAttention.", cfg))
    out |= prefixed(("attn_norm",), norm_rules(hf + "0.layer_norm", bias=False))
    mlp_index = 1
    if stack == "decoder":
        out |= prefixed(("cross_attn",), attn_rules(hf + "1.EncDecAttention.", cfg))
        out |= prefixed(("cross_attn_norm",), norm_rules(hf + "1.layer_norm", bias=False))
        mlp_index = 2
    out |= prefixed(("mlp",), mlp_rules(f"{hf}{mlp_index}.DenseReluDense.", cfg.gated))
    out |= prefixed(("mlp_norm",), norm_rules(f"{hf}{mlp_index}.layer_norm", bias=False))
    return prefixed((stack, f"layers_{i}"), out)


def stack_rules(stack: str, num_layers: int, cfg: ModelConfig) -> dict[Path, Rule]:
    rel_bias = f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    out = {
        (stack, "rel_bias", "embedding"): (rel_bias, identity),
        **prefixed((stack, "final_norm"), norm_rules(f"{stack}.final_layer_norm", bias=False)),
    }
    for i in range(num_layers):
        out |= block_rules(stack, i, cfg)
    return out


def rules(cfg: ModelConfig) -> dict[Path, Rule]:
    """Every lm T5 parameter path -> (HF tensor name, layout change)."""
    out = {("token_embed", "embedding"): ("shared.weight", identity)}
    out |= stack_rules("encoder", cfg.num_layers, cfg)
    out |= stack_rules("decoder", cfg.decoder_layers, cfg)
    if not cfg.tie_embeddings:
        out[("lm_head", "kernel")] = ("lm_head.weight", linear)
    return out
