"""python -m lm train --config experiments/finetune_t5.py:sst2,init=RUN --workdir /tmp/sst2_t5

Finetune a T5 encoder-decoder on source → target text: GLUE tasks as text-to-text, as in the
T5 paper ("sst2 sentence: a gripping film" → "positive"), or any file of pairs (translation,
summarisation). Teacher-forced training; evaluation also decodes the dev set greedily and
scores the text: the task's own metrics for GLUE (a prediction that is no label word counts
as wrong), BLEU and ROUGE for free text.

    # from this project's T5 pretraining run (its sentencepiece vocabulary comes along)
    python -m lm train --config experiments/t5_span_corruption.py:tiny --workdir /tmp/t5_tiny
    python -m lm train --config experiments/finetune_t5.py:sst2,init=/tmp/t5_tiny \\
        --workdir /tmp/sst2_t5
    # a Hugging Face T5 directory, or a random tiny T5 (a vocabulary is trained on the task)
    python -m lm train --config experiments/finetune_t5.py:rte,init=/path/to/t5-small \\
        --workdir /tmp/rte_t5
    # pairs: JSON lines {"source": ..., "target": ...} or a two-column TSV
    python -m lm train --config experiments/finetune_t5.py:pairs,init=/tmp/t5_tiny \\
        --workdir /tmp/mt \\
        --config.data.files.train=train.jsonl --config.data.files.validation=dev.jsonl

The arg is `<task>[,key=value...]`: task (a GLUE task or `pairs`), init (`random` | PATH: a
run of this project or a Hugging Face T5 directory), size (for random), lr, batch, epochs,
train (the training split), seq_len and target_len (encoder and decoder lengths).
"""

import os

from lm.config import Sweep, base_config, model_fields, parse_arg, product
from lm.data import glue

ARGS = ("sst2,init=random", "rte,init=random", "stsb,init=random")  # pairs need files


def _arg(arg: str | None):
    return parse_arg(arg, task="sst2", init="random", size="tiny", lr=1e-3, batch=32, epochs=3,
                     train="train", seq_len=128, target_len=8)


def get_config(arg: str | None = None):
    a = _arg(arg)
    config = base_config()
    # A fresh T5 for init=random; otherwise the source's architecture (and vocabulary).
    config.model = model_fields("t5", a.size, vocab_size=4096, dropout_rate=0.1,
                                attention_dropout_rate=0.0)
    if a.init != "random":  # a directory: a run of this project, or a Hugging Face one
        is_run = os.path.isdir(os.path.join(a.init, "checkpoints"))
        config.init["checkpoint" if is_run else "hf_dir"] = a.init

    d = config.data
    d.objective, d.seq_len, d.target_len = "seq2seq", a.seq_len, a.target_len
    if a.task == "pairs":
        d.source = "pairs"  # data.files.<split>: JSON lines or TSV
    else:
        d.source, d.task = "glue", glue.get(a.task).name  # TFDS if prepared, else the TSVs
    d.train_split, d.eval_split = a.train, "validation"
    # '' = the init source's vocabulary; for init=random one is trained on the train split.
    d.tokenizer.update(kind="sentencepiece", path="")

    t = config.train
    t.update(lr=a.lr, batch_size=a.batch, epochs=a.epochs, seed=0,
             # T5 finetunes with a constant lr (Adafactor); AdamW with a short warmup here.
             schedule="constant", b1=0.9, b2=0.999, weight_decay=0.0, clip_norm=1.0,
             eval_steps=-1, eval_batch_size=64, keep_checkpoints=1, log_every=50,
             best_metric="eval/bleu" if a.task == "pairs" else
             f"eval/{glue.get(a.task).main}", best_mode="max")
    t.warmup_steps = t.get_ref("steps") // 20
    t.eval_every = t.get_ref("steps_per_epoch")  # decode the dev set after every epoch
    t.checkpoint_every = t.get_ref("steps_per_epoch")
    return config


def get_sweep(arg: str | None = None) -> Sweep:
    a = _arg(arg)
    metric = "eval/bleu" if a.task == "pairs" else f"eval/{glue.get(a.task).main}"
    return Sweep(product(**{"train.lr": [3e-3, 1e-3, 3e-4]}), metric=metric, mode="max")
