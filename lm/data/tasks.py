"""GLUE-style finetuning tasks: records from TFDS or TSV files, encoded for BERT.

Every record becomes {'texts': (a,) or (a, b), 'label': int | float, 'idx': int}.
Labels follow TFDS's glue encoding (rte/qnli: 0 = entailment, 1 = not_entailment).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from lm import paths
from lm.data import sources
from lm.data.bert import bert_example
from lm.data.tokenizers import Tokenizer


@dataclasses.dataclass(frozen=True)
class Task:
    tfds_name: str
    text_keys: tuple[str, ...]  # TFDS features
    tsv_dir: str  # under ../shared/data/glue
    tsv_texts: tuple[str, ...]  # TSV columns (names, or numbers without a header)
    tsv_label: str
    num_labels: int  # 1 = regression
    header: bool = True
    label_names: tuple[str, ...] = ()  # TSV label strings in id order; () = numbers


TASKS = {
    "sst2": Task("glue/sst2", ("sentence",), "SST-2", ("sentence",), "label", 2),
    # CoLA's TSV has no header: source, label, original label, sentence.
    "cola": Task("glue/cola", ("sentence",), "CoLA", ("3",), "1", 2, header=False),
    "mrpc": Task("glue/mrpc", ("sentence1", "sentence2"), "MRPC", ("#1 String", "#2 String"),
                 "Quality", 2),
    "rte": Task("glue/rte", ("sentence1", "sentence2"), "RTE", ("sentence1", "sentence2"),
                "label", 2, label_names=("entailment", "not_entailment")),
    "qnli": Task("glue/qnli", ("question", "sentence"), "QNLI", ("question", "sentence"),
                 "label", 2, label_names=("entailment", "not_entailment")),
    "stsb": Task("glue/stsb", ("sentence1", "sentence2"), "STS-B", ("sentence1", "sentence2"),
                 "score", 1),
    "wnli": Task("glue/wnli", ("sentence1", "sentence2"), "WNLI", ("sentence1", "sentence2"),
                 "label", 2),
}
TSV_FILES = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}: data.task must be one of {sorted(TASKS)}")
    return TASKS[name]


@dataclasses.dataclass
class TfdsTask(Sequence):
    records: Sequence[dict]
    task: Task

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(i)
        r = self.records[i]
        return {"texts": tuple(sources.as_str(r[k]) for k in self.task.text_keys),
                "label": r["label"], "idx": int(r["idx"])}


def _tsv_label(task: Task, value: str) -> int | float:
    if task.num_labels == 1:
        return float(value)
    if task.label_names:
        return task.label_names.index(value) if value in task.label_names else -1
    return int(value) if value.lstrip("-").isdigit() else -1  # test files: no label


def tsv_task(path: str, task: Task) -> list[dict]:
    rows = sources.read_tsv(path, header=task.header)
    for i, r in enumerate(rows):
        missing = [c for c in (*task.tsv_texts,) if c not in r]
        if missing:
            raise ValueError(f"{path} row {i} lacks columns {missing}; it has {sorted(r)}")
    return [{"texts": tuple(r[c] for c in task.tsv_texts),
             "label": _tsv_label(task, r.get(task.tsv_label, "")), "idx": i}
            for i, r in enumerate(rows)]


def task_records(cfg, split: str) -> Sequence[dict]:
    """The records of `split` of task cfg.task from TFDS (source 'tfds') or TSV ('tsv')."""
    task = get_task(cfg.task)
    if cfg.source == "tfds":
        return TfdsTask(sources.tfds_records(task.tfds_name, split, cfg.data_dir), task)
    if cfg.source == "tsv":
        base = cfg.data_dir or str(paths.SHARED_DATA / "glue" / task.tsv_dir)

        def load(name: str) -> list[dict]:
            path = dict(cfg.files).get(name) or os.path.join(base, TSV_FILES.get(name, name))
            if not os.path.exists(path):
                raise FileNotFoundError(f"no TSV for split {name!r} at {path} (set "
                                        f"data.files.{name} or data.data_dir)")
            return tsv_task(path, task)

        names = {p[0] for p in sources.parse_split(split)}
        return sources.apply_split(split, {n: load(n) for n in names})
    raise ValueError(f"data.source={cfg.source!r} for a classification task: use 'tfds' or 'tsv'")


def classification_example(record: dict, tok: Tokenizer, seq_len: int,
                           num_labels: int) -> dict[str, np.ndarray]:
    """`[CLS] a [SEP] (b [SEP])`, truncating the longer text first to fit seq_len."""
    texts = [tok.encode(t) for t in record["texts"]]
    budget = seq_len - 1 - len(texts)
    while sum(map(len, texts)) > budget:
        longest = max(texts, key=len)
        longest.pop()
    example = bert_example(texts[0], texts[1] if len(texts) > 1 else None, tok, seq_len)
    dtype = np.float32 if num_labels == 1 else np.int32
    example.update(labels=np.asarray(record["label"], dtype),
                   example_weights=np.float32(1.0), idx=np.int32(record["idx"]))
    return example
