"""BERT (BertModel, BertForPreTraining, BertForMaskedLM, BertForSequenceClassification) -> lm BERT
(post-LN)."""

from lm.convert.common import (
    HF_ACTIVATIONS,
    Path,
    Rule,
    attention_rules,
    dense_rules,
    field,
    identity,
    norm_rules,
    prefixed,
    require,
)
from lm.models import ModelConfig

PREFIX = "bert."  # head classes keep the encoder under `bert.`; BertModel has no prefix
IGNORED = r"embeddings\.position_ids"  # a buffer older checkpoints saved
# Tied copies some checkpoints hold: copy -> source (the MLM decoder is the token embedding).
TIED = {
    "cls.predictions.decoder.weight": "embeddings.word_embeddings.weight",
    "cls.predictions.decoder.bias": "cls.predictions.bias",
}
REQUIRED = {  # field: (HF default, values lm reproduces exactly)
    "position_embedding_type": ("absolute", ("absolute",)),
    "is_decoder": (False, (False,)),
    "add_cross_attention": (False, (False,)),
}


def num_labels(hf: dict) -> int:
    """Classifier width as HF derives it: the size of id2label (default 2)."""
    return len(hf["id2label"]) if "id2label" in hf else hf.get("num_labels", 2)


def config(hf: dict) -> dict:
    """ModelConfig fields for an HF BertConfig dict (heads are set per architecture)."""
    require(hf, REQUIRED)
    return dict(
        family="bert", vocab_size=hf["vocab_size"], num_layers=hf["num_hidden_layers"],
        d_model=hf["hidden_size"], num_heads=hf["num_attention_heads"],
        d_ff=hf["intermediate_size"], max_len=hf["max_position_embeddings"],
        type_vocab_size=hf.get("type_vocab_size", 2), position="learned", norm="layernorm",
        norm_eps=hf.get("layer_norm_eps", 1e-12), prenorm=False,
        activation=field(hf, "hidden_act", HF_ACTIVATIONS, "gelu"), gated=False, use_bias=True,
        tie_embeddings=True, dropout_rate=hf.get("hidden_dropout_prob", 0.1),
        attention_dropout_rate=hf.get("attention_probs_dropout_prob", 0.1),
        scale_attention=True, init_std=hf.get("initializer_range", 0.02),
    )


def block_rules(i: int, cfg: ModelConfig) -> dict[Path, Rule]:
    hf = f"encoder.layer.{i}."
    names = {"query": "attention.self.query", "key": "attention.self.key",
             "value": "attention.self.value", "out": "attention.output.dense"}
    return (
        prefixed(("attn",), attention_rules({k: hf + v for k, v in names.items()},
                                            cfg.num_heads, cfg.kv_heads, bias=True))
        | prefixed(("attn_norm",), norm_rules(hf + "attention.output.LayerNorm"))
        | prefixed(("mlp", "wi"), dense_rules(hf + "intermediate.dense"))
        | prefixed(("mlp", "wo"), dense_rules(hf + "output.dense"))
        | prefixed(("mlp_norm",), norm_rules(hf + "output.LayerNorm"))
    )


def rules(cfg: ModelConfig) -> dict[Path, Rule]:
    """Every lm BERT parameter path -> (HF tensor name, layout change)."""
    out = {
        ("token_embed", "embedding"): ("embeddings.word_embeddings.weight", identity),
        ("pos_embed", "embedding"): ("embeddings.position_embeddings.weight", identity),
        ("type_embed", "embedding"): ("embeddings.token_type_embeddings.weight", identity),
        **prefixed(("embed_norm",), norm_rules("embeddings.LayerNorm")),
        **prefixed(("pooler",), dense_rules("pooler.dense")),
    }
    for i in range(cfg.num_layers):
        out |= prefixed(("encoder", f"layers_{i}"), block_rules(i, cfg))
    if "mlm" in cfg.heads:
        out |= prefixed(("mlm_transform",), dense_rules("cls.predictions.transform.dense"))
        out |= prefixed(("mlm_norm",), norm_rules("cls.predictions.transform.LayerNorm"))
        out[("mlm_bias",)] = ("cls.predictions.bias", identity)
    if "nsp" in cfg.heads:
        out |= prefixed(("nsp",), dense_rules("cls.seq_relationship"))
    if cfg.num_labels:
        out |= prefixed(("classifier",), dense_rules("classifier"))
    return out
