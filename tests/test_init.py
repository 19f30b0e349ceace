"""Initialisation as the published models do it (what training from scratch depends on):
T5's fan-in scaled normals (Mesh TF, Hugging Face), GPT-2's residual projections scaled by
1/sqrt(2L) (GPT-2, nanoGPT), BERT's N(0, 0.02)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util

from lm.models import build, model_config


def _stds(cfg) -> dict[str, float]:
    tokens = jnp.zeros((1, 8), jnp.int32)
    inputs = (tokens, tokens) if cfg.family == "t5" else (tokens,)
    params = nn.unbox(build(cfg).init(jax.random.key(0), *inputs)["params"])
    return {"/".join(k): float(np.std(v)) for k, v in traverse_util.flatten_dict(params).items()
            if k[-1] in ("kernel", "embedding")}


def test_t5_initialises_as_hugging_face_does():
    """HF T5PreTrainedModel._init_weights (factor 1): embedding N(0, 1); q N(0, (D·H)^-½),
    k/v N(0, D^-½), o N(0, (N·H)^-½); wi N(0, D^-½), wo N(0, F^-½); relative bias
    N(0, D^-½). Compared with HF's own freshly initialised model."""
    transformers = pytest.importorskip("transformers")
    cfg = model_config("t5", "small", vocab_size=512)  # D 512, N 8, H 64, F 2048
    ours = _stds(cfg)
    hf = transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=512, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8))
    theirs = {name: float(p.detach().std()) for name, p in hf.named_parameters()}
    pairs = {
        "token_embed/embedding": "shared.weight",
        "encoder/layers/attn/query/kernel": "encoder.block.0.layer.0.SelfAttention.q.weight",
        "encoder/layers/attn/key/kernel": "encoder.block.0.layer.0.SelfAttention.k.weight",
        "encoder/layers/attn/out/kernel": "encoder.block.0.layer.0.SelfAttention.o.weight",
        "encoder/layers/mlp/wi/kernel": "encoder.block.0.layer.1.DenseReluDense.wi.weight",
        "encoder/layers/mlp/wo/kernel": "encoder.block.0.layer.1.DenseReluDense.wo.weight",
        "decoder/layers/cross_attn/value/kernel":
            "decoder.block.0.layer.1.EncDecAttention.v.weight",
        "encoder/rel_bias/embedding":
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
    }
    for lm_name, hf_name in pairs.items():
        assert ours[lm_name] == pytest.approx(theirs[hf_name], rel=0.1), lm_name


def test_gpt2_scales_the_residual_projections_as_nanogpt():
    cfg = model_config("gpt", "small", vocab_size=512)  # 6 layers
    stds = _stds(cfg)
    residual = 0.02 / math.sqrt(2 * 6)
    assert stds["decoder/layers/attn/out/kernel"] == pytest.approx(residual, rel=0.05)
    assert stds["decoder/layers/mlp/wo/kernel"] == pytest.approx(residual, rel=0.05)
    for name in ("decoder/layers/mlp/wi/kernel", "token_embed/embedding"):
        assert stds[name] == pytest.approx(0.02, rel=0.05), name


def test_bert_keeps_a_plain_normal():
    stds = _stds(model_config("bert", "small", vocab_size=512))
    assert all(s == pytest.approx(0.02, rel=0.05) for s in stds.values()), stds
