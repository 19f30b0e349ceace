"""python -m lm train --config experiments/gpt_wikitext.py:tiny --workdir /tmp/gpt_wikitext_tiny

Causal LM (GPT) on WikiText-2 with a sentencepiece vocabulary of 8192 pieces.

The tokenizer is trained on the train split into `<workdir>/tokenizer.model` on the first
run when `data.tokenizer.path` is empty. To share one between runs, train it once and pass it:

    python -m lm tokenizer train --output /tmp/wt2_8k --vocab_size 8192 \\
        --config experiments/gpt_wikitext.py:tiny
    python -m lm train --config experiments/gpt_wikitext.py:small --workdir /tmp/gpt_wt2 \\
        --config.data.tokenizer.path=/tmp/wt2_8k.model

Sizes: `tiny` (CPU, minutes), `small` (6 layers × 512; one GPU), `base` (GPT-2 124M shapes).
"""

from lm.config import base_config, model_fields, parse_arg, pick
from lm.data.config import WIKITEXT2

ARGS = ("tiny", "small", "base")

# WikiText-2 train: 2.09M words ≈ 2.6M sentencepiece tokens at 8k pieces (approximate).
SIZES = {
    # 16 × 128 = 2,048 tokens/step; × 600 steps = 1.2M tokens ≈ 0.5 epoch.
    "tiny": dict(model="tiny", seq_len=128, batch=16, steps=600, lr=3e-3, dropout=0.0),
    # 32 × 512 = 16,384 tokens/step; × 2000 steps = 33M tokens ≈ 13 epochs (dropout matters).
    "small": dict(model="small", seq_len=512, batch=32, steps=2000, lr=1e-3, dropout=0.2),
    # 32 × 1024 = 32,768 tokens/step; × 3000 steps = 98M tokens ≈ 38 epochs.
    "base": dict(model="base", seq_len=1024, batch=32, steps=3000, lr=6e-4, dropout=0.2),
}


def get_config(arg: str | None = None):
    arg = parse_arg(arg, size="tiny")
    size = pick(SIZES, arg.size)
    config = base_config()

    config.model = model_fields(
        "gpt", size["model"], vocab_size=8192, max_len=size["seq_len"],
        dropout_rate=size["dropout"], attention_dropout_rate=size["dropout"],
    )

    config.data.update(
        **WIKITEXT2,
        objective="causal", seq_len=size["seq_len"],
    )
    # '' = train one into the workdir with model.vocab_size pieces (see the docstring).
    config.data.tokenizer.update(kind="sentencepiece", path="")
    config.data.causal.update(add_eos=True, segment_ids=True)  # no attention across articles

    t = config.train
    t.update(
        steps=size["steps"], batch_size=size["batch"],
        lr=size["lr"], min_lr=size["lr"] / 10, schedule="cosine",
        b1=0.9, b2=0.95, weight_decay=0.1, clip_norm=1.0, log_every=10,
        eval_steps=-1 if arg.size != "tiny" else 20,  # tiny: 20 × 16 rows ≈ 40k tokens
        best_metric="eval/loss",
    )
    steps = t.get_ref("steps")  # what follows moves with --config.train.steps
    t.warmup_steps = steps // 20
    t.eval_every = steps // 6
    t.checkpoint_every = steps // 2
    return config
