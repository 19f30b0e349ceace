"""python -m lm train --config experiments/scale.py:gpt2_xl --workdir /shared/runs/gpt2_xl

GPT-2 1.5B and BERT-large pretraining shapes for many devices: what `lm plan` sizes up
before a run pays for the chips (README "Scaling up"):

    python -m lm plan --config experiments/scale.py:gpt2_xl --devices 64 --device_memory 80GB
    python -m lm plan --config experiments/scale.py:bert_large --devices 64 --device_memory 80GB

- `gpt2_xl`: GPT-2 1.5B (48 layers × 1600, 25 heads, vocabulary 50257, 1024 tokens) with
  GPT-2's batch of 512 rows.
- `bert_large`: BERT-large (24 layers × 1024, 16 heads, vocabulary 30522) at 512 tokens
  with BERT's batch of 256 rows, MLM + NSP.

Both compute in bfloat16 with FSDP over every device (mesh.preset=fsdp) and no remat: the
planner names the remat policy or micro-batching that fits when this does not. The data is
WikiText-2, a stand-in: a real run brings its corpus and a tokenizer of the model's
vocabulary size (--config.data.*); the planner reads no data.
"""

from lm.config import base_config, model_fields, parse_arg, pick
from lm.data.config import WIKITEXT2

ARGS = ("gpt2_xl", "bert_large")

SIZES = {
    # 512 × 1024 = 524,288 tokens/step.
    "gpt2_xl": dict(family="gpt", size="xl", objective="causal", seq_len=1024, batch=512,
                    lr=1.5e-4, schedule="cosine", warmup_div=50, b2=0.95, weight_decay=0.1),
    # 256 × 512 = 131,072 tokens/step (BERT's 128k tokens per batch).
    "bert_large": dict(family="bert", size="large", objective="mlm_nsp", seq_len=512,
                       batch=256, lr=1e-4, schedule="linear", warmup_div=10, b2=0.999,
                       weight_decay=0.01),
}


def get_config(arg: str | None = None):
    arg = parse_arg(arg, shape="gpt2_xl")
    size = pick(SIZES, arg.shape, what="shape")
    config = base_config()

    config.model = model_fields(
        size["family"], size["size"], max_len=size["seq_len"], dtype="bfloat16",
        dropout_rate=0.1, attention_dropout_rate=0.1,
    )

    config.data.update(**WIKITEXT2, objective=size["objective"], seq_len=size["seq_len"])
    config.data.tokenizer.update(kind="sentencepiece", path="")

    config.mesh.preset = "fsdp"  # params, gradients and Adam moments split over every device
    t = config.train
    t.update(
        steps=100_000, batch_size=size["batch"],
        lr=size["lr"], min_lr=size["lr"] / 10, schedule=size["schedule"],
        b1=0.9, b2=size["b2"], eps=1e-6, weight_decay=size["weight_decay"], clip_norm=1.0,
        log_every=100, eval_steps=100, best_metric="eval/loss",
    )
    steps = t.get_ref("steps")  # what follows moves with --config.train.steps
    t.warmup_steps = steps // size["warmup_div"]
    t.eval_every = steps // 20
    t.checkpoint_every = steps // 100
    return config
