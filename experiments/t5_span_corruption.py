"""python -m lm train --config experiments/t5_span_corruption.py:tiny --workdir /tmp/t5_tiny

T5-style encoder-decoder pretraining with span corruption (15% noise, mean span 3) on
WikiText-2. Sizes: `tiny` (CPU, minutes), `small`, `base` (T5-base shapes).

The sentencepiece vocabulary (with the 100 sentinels) is trained into the workdir unless
`--config.data.tokenizer.path` names one (see experiments/gpt_wikitext.py for the command).
"""

from lm.config import base_config, model_fields, parse_arg, pick
from lm.data.config import WIKITEXT2

ARGS = ("tiny", "small", "base")

SIZES = {
    # 16 × 128 encoder tokens (≈ 150 raw tokens each) = 2,048 tokens/step; × 500 steps.
    "tiny": dict(model="tiny", seq_len=128, batch=16, steps=500, lr=3e-3),
    "small": dict(model="small", seq_len=512, batch=64, steps=10_000, lr=1e-3),
    # T5's pretraining length 512 × batch 128 = 65,536 tokens/step.
    "base": dict(model="base", seq_len=512, batch=128, steps=20_000, lr=1e-3),
}


def get_config(arg: str | None = None):
    arg = parse_arg(arg, size="tiny")
    size = pick(SIZES, arg.size)
    config = base_config()

    config.model = model_fields(
        "t5", size["model"], vocab_size=8192, dropout_rate=0.0, attention_dropout_rate=0.0,
    )

    config.data.update(
        **WIKITEXT2,
        objective="span_corruption", seq_len=size["seq_len"],
    )
    config.data.tokenizer.update(kind="sentencepiece", path="")
    config.data.span.update(noise_density=0.15, mean_span_length=3.0)

    t = config.train
    t.update(
        steps=size["steps"], batch_size=size["batch"],
        # AdamW in place of T5's Adafactor; linear warmup, cosine decay.
        lr=size["lr"], min_lr=size["lr"] / 10, schedule="cosine",
        b1=0.9, b2=0.98, weight_decay=0.01, clip_norm=1.0, log_every=10,
        eval_steps=20 if arg.size == "tiny" else 100,
        best_metric="eval/loss",
    )
    steps = t.get_ref("steps")  # what follows moves with --config.train.steps
    t.warmup_steps = steps // 20
    t.eval_every = steps // 5
    t.checkpoint_every = steps // 5
    return config
