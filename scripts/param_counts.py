"""Parameter counts of lm's base-size models next to the same models in Hugging Face.

    python scripts/param_counts.py

lm counts come from `jax.eval_shape` of init (nothing allocated); HF counts are
`sum(p.numel())` over `model.parameters()` of the HF class built from the equivalent config
on torch's meta device (shapes only). `parameters()` yields a tied tensor once, so tied
embeddings and BERT's tied MLM decoder (weight and bias) are counted once, as HF counts them.
"""

import math
import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax
import torch
import transformers

from lm.convert.hf import param_shapes
from lm.models import ModelConfig, model_config


def hf_gpt2(c: ModelConfig) -> torch.nn.Module:
    config = transformers.GPT2Config(
        vocab_size=c.vocab_size, n_positions=c.max_len, n_embd=c.d_model, n_layer=c.num_layers,
        n_head=c.num_heads, n_inner=c.d_ff, tie_word_embeddings=c.tie_embeddings)
    return transformers.GPT2LMHeadModel(config)


def hf_bert(c: ModelConfig) -> torch.nn.Module:
    config = transformers.BertConfig(
        vocab_size=c.vocab_size, hidden_size=c.d_model, num_hidden_layers=c.num_layers,
        num_attention_heads=c.num_heads, intermediate_size=c.d_ff,
        max_position_embeddings=c.max_len, type_vocab_size=c.type_vocab_size)
    return transformers.BertForPreTraining(config)


def hf_t5(c: ModelConfig) -> torch.nn.Module:
    config = transformers.T5Config(
        vocab_size=c.vocab_size, d_model=c.d_model, d_kv=c.dim_per_head, d_ff=c.d_ff,
        num_layers=c.num_layers, num_decoder_layers=c.decoder_layers, num_heads=c.num_heads,
        relative_attention_num_buckets=c.rel_buckets,
        feed_forward_proj="gated-gelu" if c.gated else "relu")  # only the shapes matter here
    return transformers.T5ForConditionalGeneration(config)


# name -> (lm config, the equivalent HF model)
MODELS = {
    "GPT-2 124M (tied, vocab 50257)": (model_config("gpt", "base", vocab_size=50257,
                                                    tie_embeddings=True), hf_gpt2),
    "BERT-base MLM+NSP": (model_config("bert", "base", heads=("mlm", "nsp")), hf_bert),
    "T5-base (original, tied)": (model_config("t5", "base"), hf_t5),
}


def lm_count(cfg: ModelConfig) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(param_shapes(cfg)))


def hf_count(make, cfg: ModelConfig) -> int:
    with torch.device("meta"):  # shapes only: no memory, no init time
        return sum(p.numel() for p in make(cfg).parameters())


def main() -> int:
    print(f"{'model':34} {'lm':>14} {'Hugging Face':>14}")
    mismatches = 0
    for name, (cfg, make) in MODELS.items():
        ours, theirs = lm_count(cfg), hf_count(make, cfg)
        mismatches += ours != theirs
        print(f"{name:34} {ours:>14,} {theirs:>14,}{'' if ours == theirs else '  MISMATCH'}")
    return int(mismatches > 0)


if __name__ == "__main__":
    sys.exit(main())
