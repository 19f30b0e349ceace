"""python -m lm train --config experiments/bert_mlm_nsp.py:tiny --workdir /tmp/bert_tiny

BERT pretraining on WikiText-2 (documents = articles): masked LM + next-sentence prediction.

The NSP ablation (MLM only: RoBERTa's finding that NSP does not help) is the `nsp` part of the
arg, which switches both the data objective and the model's heads:

    python -m lm train --config experiments/bert_mlm_nsp.py:tiny,nsp=False --workdir /tmp/bert_nonsp

Sizes: `tiny` (CPU, minutes), `base` (BERT-base shapes, for an accelerator). The sentencepiece
vocabulary is trained into the workdir unless `--config.data.tokenizer.path` names one
(see experiments/gpt_wikitext.py for the command).
"""

import dataclasses

from lm.data import default_config as data_config
from lm.data.config import WIKITEXT2
from lm.models import model_config
from lm.train.config import base_config, parse_arg, pick

ARGS = ("tiny", "base", "tiny,nsp=False", "base,nsp=False")

SIZES = {
    # 16 × 128 = 2,048 tokens/step (≈ 300 MLM predictions); × 500 steps ≈ 0.4 epoch.
    "tiny": dict(model="tiny", seq_len=128, batch=16, steps=500, lr=1e-3, warmup=50),
    # BERT's phase-1 recipe at its sequence length 128: 256 × 128 = 32,768 tokens/step;
    # × 10,000 steps = 328M tokens ≈ 125 epochs of WikiText-2 (a stand-in for Books+Wiki).
    "base": dict(model="base", seq_len=128, batch=256, steps=10_000, lr=1e-4, warmup=1000),
}


def get_config(arg: str | None = None):
    arg = parse_arg(arg, size="tiny", nsp=True)
    if arg.size not in SIZES:
        raise ValueError(f"unknown size {arg.size!r}; choose one of tiny, base")
    size = pick(SIZES, arg.size)
    config = base_config()

    config.model = dataclasses.asdict(model_config(
        "bert", size["model"], vocab_size=8192, max_len=512,
        heads=("mlm", "nsp") if arg.nsp else ("mlm",),
        dropout_rate=0.1, attention_dropout_rate=0.1,
    ))

    config.data = data_config()
    config.data.update(
        **WIKITEXT2,
        objective="mlm_nsp" if arg.nsp else "mlm", seq_len=size["seq_len"],
    )
    config.data.tokenizer.update(kind="sentencepiece", path="")
    config.data.mlm.update(rate=0.15, max_predictions=20)  # BERT: 20 per 128 tokens

    config.train.update(
        steps=size["steps"], batch_size=size["batch"],
        # BERT: Adam lr 1e-4, β2 0.999, ε 1e-6, weight decay 0.01, warmup then linear decay.
        lr=size["lr"], min_lr=0.0, schedule="linear", warmup_steps=size["warmup"],
        b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01, clip_norm=1.0,
        log_every=10, eval_every=max(size["steps"] // 5, 1),
        eval_steps=20 if arg.size == "tiny" else 100,
        checkpoint_every=max(size["steps"] // 5, 1),
        best_metric="eval/loss",
    )
    return config
