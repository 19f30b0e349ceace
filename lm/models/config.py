"""The size table and each family's published defaults, on top of `lm.nn.config.ModelConfig`."""

from __future__ import annotations

from typing import Any

from lm.nn.config import FAMILIES, ModelConfig, check_choice, field_names

__all__ = ["FAMILY_DEFAULTS", "SIZES", "ModelConfig", "model_config"]

# Shapes per size; the same table for every family (base = GPT-2 124M / BERT-base / T5-base,
# large = GPT-2 medium / BERT-large / T5-large shapes).
SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(num_layers=2, d_model=64, num_heads=4, d_ff=256),
    "mini": dict(num_layers=4, d_model=256, num_heads=4, d_ff=1024),
    "small": dict(num_layers=6, d_model=512, num_heads=8, d_ff=2048),
    "base": dict(num_layers=12, d_model=768, num_heads=12, d_ff=3072),
    "large": dict(num_layers=24, d_model=1024, num_heads=16, d_ff=4096),
    "xl": dict(num_layers=48, d_model=1600, num_heads=25, d_ff=6400),  # GPT-2 1.5B
}

# The published architecture of each family (what importing its HF checkpoint needs).
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "gpt": dict(
        vocab_size=50257,
        max_len=1024,
        position="learned",
        norm="layernorm",
        norm_eps=1e-5,
        prenorm=True,
        activation="gelu_tanh",
        use_bias=True,
        tie_embeddings=True,
        init="gpt2",
    ),
    "bert": dict(
        vocab_size=30522,
        max_len=512,
        position="learned",
        norm="layernorm",
        norm_eps=1e-12,
        prenorm=False,
        activation="gelu",
        use_bias=True,
        tie_embeddings=True,
        type_vocab_size=2,
        heads=("mlm", "nsp"),
    ),
    "t5": dict(
        vocab_size=32128,
        max_len=512,
        position="relative",
        norm="rmsnorm",
        norm_eps=1e-6,
        prenorm=True,
        activation="relu",
        use_bias=False,
        tie_embeddings=True,
        scale_attention=False,
        init="t5",
    ),
}


def model_config(family: str, size: str = "base", **overrides: Any) -> ModelConfig:
    """The config of `family` at `size` from the size table, with field overrides."""
    check_choice("family", family, FAMILIES)
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; known sizes: {tuple(SIZES)}")
    fields = field_names()
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(f"unknown ModelConfig fields {sorted(unknown)}; valid: {sorted(fields)}")
    return ModelConfig(family=family, **{**FAMILY_DEFAULTS[family], **SIZES[size], **overrides})
