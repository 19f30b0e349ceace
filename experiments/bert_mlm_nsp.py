"""python -m lm train --config experiments/bert_mlm_nsp.py:tiny --workdir /tmp/bert_tiny

BERT pretraining on WikiText-2 (documents = articles): masked LM + next-sentence prediction.

The NSP ablation (MLM only: RoBERTa's finding that NSP does not help) is the `nsp` part of the
arg, which switches both the data objective and the model's heads:

    python -m lm train --config experiments/bert_mlm_nsp.py:tiny,nsp=False --workdir /tmp/bert_nonsp

or, as a sweep ranked by the masked-LM loss (the one loss both points have):

    python -m lm sweep --config experiments/bert_mlm_nsp.py:tiny --workdir /tmp/bert_nsp_sweep

Sizes: `tiny` (CPU, minutes), `base` (BERT-base shapes, for an accelerator). The sentencepiece
vocabulary is trained into the workdir unless `--config.data.tokenizer.path` names one
(see experiments/gpt_wikitext.py for the command).
"""

from lm.config import Sweep, base_config, model_fields, parse_arg, pick
from lm.data.config import WIKITEXT2

ARGS = ("tiny", "base", "tiny,nsp=False", "base,nsp=False")

# NSP on / off: the data objective and the model's pretraining heads change together.
NSP = {
    True: dict(data=dict(objective="mlm_nsp"), model=dict(heads=("mlm", "nsp"))),
    False: dict(data=dict(objective="mlm"), model=dict(heads=("mlm",))),
}

SIZES = {
    # 16 × 128 = 2,048 tokens/step (≈ 300 MLM predictions); × 500 steps ≈ 0.4 epoch.
    # parallel: the gradient as that many computations side by side (one per core of a CPU).
    "tiny": dict(model="tiny", seq_len=128, batch=16, steps=500, lr=1e-3, parallel=2),
    # BERT's phase-1 recipe at its sequence length 128: 256 × 128 = 32,768 tokens/step;
    # × 10,000 steps = 328M tokens ≈ 125 epochs of WikiText-2 (a stand-in for Books+Wiki).
    "base": dict(model="base", seq_len=128, batch=256, steps=10_000, lr=1e-4, parallel=1),
}


def get_config(arg: str | None = None):
    arg = parse_arg(arg, size="tiny", nsp=True)
    size = pick(SIZES, arg.size)
    config = base_config()

    config.model = model_fields(
        "bert", size["model"], vocab_size=8192, max_len=512, **NSP[arg.nsp]["model"],
        dropout_rate=0.1, attention_dropout_rate=0.1,
    )

    config.data.update(**WIKITEXT2, **NSP[arg.nsp]["data"], seq_len=size["seq_len"])
    config.data.tokenizer.update(kind="sentencepiece", path="")
    config.data.mlm.update(rate=0.15, max_predictions=20)  # BERT: 20 per 128 tokens

    t = config.train
    t.update(
        steps=size["steps"], batch_size=size["batch"],
        # BERT: Adam lr 1e-4, β2 0.999, ε 1e-6, weight decay 0.01, warmup then linear decay.
        lr=size["lr"], min_lr=0.0, schedule="linear",
        b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01, clip_norm=1.0, log_every=10,
        eval_steps=20 if arg.size == "tiny" else 100,
        best_metric="eval/loss", parallel_micro_batches=size["parallel"],
    )
    steps = t.get_ref("steps")  # what follows moves with --config.train.steps
    t.warmup_steps = steps // 10  # BERT warms up over 1% of 1M steps; runs here are short
    t.eval_every = steps // 5
    t.checkpoint_every = steps // 5
    return config


def get_sweep(arg: str | None = None) -> Sweep:
    """NSP on and off, ranked by the masked-LM loss (MLM+NSP's total loss adds NSP's)."""
    parse_arg(arg, size="tiny", nsp=True)  # the same args as get_config
    points = [{"data.objective": NSP[nsp]["data"]["objective"],
               "model.heads": NSP[nsp]["model"]["heads"]} for nsp in (True, False)]
    return Sweep(points, metric="eval/mlm_loss", mode="min")
