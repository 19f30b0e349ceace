"""GPT-2 (GPT2LMHeadModel, GPT2ForSequenceClassification) -> lm GPT.

GPT-2 uses transformers' Conv1D, whose weight is already [in, out] (no transpose), and one
fused `c_attn` projecting to [query | key | value].
"""

from collections.abc import Callable

import numpy as np

from lm.convert.common import (
    HF_ACTIVATIONS,
    Path,
    Rule,
    field,
    identity,
    linear,
    norm_rules,
    prefixed,
    require,
)
from lm.models import ModelConfig

PREFIX = "transformer."
# Causal-mask buffers that old checkpoints saved.
IGNORED = r"h\.\d+\.attn\.(bias|masked_bias)"
# Tied copies some checkpoints hold: copy -> source (used only when they are equal).
TIED = {"lm_head.weight": "wte.weight"}

# field: (HF default, values lm reproduces exactly).
REQUIRED = {
    "add_cross_attention": (False, (False,)),
    "scale_attn_weights": (True, (True,)),
    "scale_attn_by_inverse_layer_idx": (False, (False,)),
}


def config(hf: dict) -> dict:
    """ModelConfig fields for an HF GPT2Config dict."""
    require(hf, REQUIRED)
    d_model = hf["n_embd"]
    return dict(
        family="gpt", vocab_size=hf["vocab_size"], num_layers=hf["n_layer"], d_model=d_model,
        num_heads=hf["n_head"], d_ff=hf.get("n_inner") or 4 * d_model,
        max_len=hf["n_positions"],
        position="learned", norm="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        prenorm=True, activation=field(hf, "activation_function", HF_ACTIVATIONS, "gelu_new"),
        gated=False, use_bias=True, tie_embeddings=hf.get("tie_word_embeddings", True),
        dropout_rate=hf.get("resid_pdrop", 0.1), attention_dropout_rate=hf.get("attn_pdrop", 0.1),
        scale_attention=True,
    )


def qkv(index: int, num_heads: int) -> Callable[[np.ndarray], np.ndarray]:
    """Part `index` (0 query, 1 key, 2 value) of c_attn: weight [D, 3D] -> D×N×H, bias -> N×H."""

    def take(w: np.ndarray) -> np.ndarray:
        part = np.split(w, 3, axis=-1)[index]
        return part.reshape(*part.shape[:-1], num_heads, -1)

    return take


def split_rows(num_heads: int) -> Callable[[np.ndarray], np.ndarray]:
    """c_proj weight [N*H, D] (Conv1D: in, out) -> N×H×D."""
    return lambda w: w.reshape(num_heads, -1, w.shape[-1])


def block_rules(i: int, num_heads: int) -> dict[Path, Rule]:
    hf = f"h.{i}."
    rules = prefixed(("attn_norm",), norm_rules(hf + "ln_1"))
    rules |= prefixed(("mlp_norm",), norm_rules(hf + "ln_2"))
    for index, name in enumerate(["query", "key", "value"]):
        rules[("attn", name, "kernel")] = (hf + "attn.c_attn.weight", qkv(index, num_heads))
        rules[("attn", name, "bias")] = (hf + "attn.c_attn.bias", qkv(index, num_heads))
    rules[("attn", "out", "kernel")] = (hf + "attn.c_proj.weight", split_rows(num_heads))
    rules[("attn", "out", "bias")] = (hf + "attn.c_proj.bias", identity)
    for ours, theirs in [("wi", "c_fc"), ("wo", "c_proj")]:
        rules[("mlp", ours, "kernel")] = (hf + f"mlp.{theirs}.weight", identity)  # Conv1D
        rules[("mlp", ours, "bias")] = (hf + f"mlp.{theirs}.bias", identity)
    return prefixed(("decoder", f"layers_{i}"), rules)


def rules(cfg: ModelConfig) -> dict[Path, Rule]:
    """Every lm GPT parameter path -> (GPT-2 tensor name, layout change)."""
    out: dict[Path, Rule] = {
        ("token_embed", "embedding"): ("wte.weight", identity),
        ("pos_embed", "embedding"): ("wpe.weight", identity),
        **prefixed(("decoder", "final_norm"), norm_rules("ln_f")),
    }
    for i in range(cfg.num_layers):
        out |= block_rules(i, cfg.num_heads)
    # The heads sit outside the `transformer.` prefix, so their names are unchanged.
    if cfg.num_labels:  # GPT2ForSequenceClassification: a bias-free `score`, no LM head
        out[("classifier", "kernel")] = ("score.weight", linear)
    elif not cfg.tie_embeddings:
        out[("lm_head", "kernel")] = ("lm_head.weight", linear)
    return out
