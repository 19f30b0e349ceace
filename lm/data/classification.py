"""GLUE-style classification records from TFDS or TSV files, encoded for BERT or GPT.

Every record becomes {'texts': (a,) or (a, b), 'label': int | float, 'idx': int}; the task's
files, columns and labels come from `lm.data.glue`.

`data.source`: 'tfds' (TFDS `glue/<task>`), 'tsv' (GLUE TSV files: `data.files.<split>`, else
`data.data_dir`, else `$LM_DATA_DIR/glue/<TASK>`), or 'glue': TFDS when it is prepared, else
the TSV files. TFDS and the TSVs hold the same examples (same `idx`, text and label), in
another order.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import numpy as np

from lm.data import glue, home, sources
from lm.data.bert import bert_example
from lm.data.tokenizers import Tokenizer
from lm.errors import MissingFileError, UserError

TSV_FILES = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}


def _tfds_record(task: glue.GlueTask, r: dict) -> dict:
    return {"texts": tuple(sources.as_str(r[k]) for k in task.texts), "label": r["label"],
            "idx": int(r["idx"])}


def _tsv_label(task: glue.GlueTask, value: str) -> int | float | None:
    """The label of a TSV cell; None when the cell is not one of the task's labels."""
    if task.labels is None:
        try:
            return float(value)
        except ValueError:
            return None
    if task.tsv_label_names:
        return task.labels.index(value) if value in task.labels else None
    return int(value) if value.lstrip("-").isdigit() else None


def tsv_records(path: str, task: glue.GlueTask, labeled: bool = True) -> list[dict]:
    """The rows of a GLUE TSV. `labeled` (train and dev files): every row must carry one of
    the task's labels; test files have none (label -1)."""
    rows = sources.read_tsv(path, header=task.header)
    records = []
    for i, r in enumerate(rows):
        missing = [c for c in (*task.tsv_texts, *([task.tsv_label] if labeled else []))
                   if c not in r]
        if missing:
            raise UserError(f"{path} row {i} lacks columns {missing}; it has {sorted(r)}")
        label = _tsv_label(task, r.get(task.tsv_label, ""))
        if label is None and labeled:
            valid = "a number" if task.labels is None else \
                list(task.labels) if task.tsv_label_names else f"0..{len(task.labels) - 1}"
            raise UserError(f"{path} row {i}: label {r[task.tsv_label]!r} is not a {task.name} "
                            f"label (expected {valid}): fix the file, or check data.task")
        records.append({"texts": tuple(r[c] for c in task.tsv_texts),
                        "label": -1 if label is None else label, "idx": i})
    return records


def _tsv_split(files: dict, data_dir: str, task: glue.GlueTask, split: str) -> Sequence[dict]:
    base = data_dir or home.resolve(os.path.join("glue", task.tsv_dir))

    def load(name: str) -> list[dict]:
        path = files.get(name) or os.path.join(base, TSV_FILES.get(name, name))
        if not os.path.exists(path):
            raise MissingFileError(
                f"no TSV for split {name!r} of {task.name} at {path}: run `python -m lm data "
                f"prepare glue/{task.name}` (or set data.files.{name} / data.data_dir)")
        return tsv_records(path, task, labeled=name != "test")

    names = {p[0] for p in sources.parse_split(split)}
    return sources.apply_split(split, {n: load(n) for n in names})


def records(cfg, split: str) -> Sequence[dict]:
    """The records of `split` of task `cfg.task` (see the module docstring for the source)."""
    task = glue.get(cfg.task)
    source, tfds_dir, tsv_dir = cfg.source, cfg.data_dir, cfg.data_dir
    if source == "glue":  # data_dir is TFDS's; the TSV fallback reads the data home
        source = "tfds" if home.tfds_prepared(task.tfds_name, tfds_dir) else "tsv"
        tsv_dir = ""
    if source == "tfds":
        return sources.Mapped(sources.tfds_records(task.tfds_name, split, tfds_dir),
                              functools.partial(_tfds_record, task))
    if source == "tsv":
        files = {k: v for k, v in dict(cfg.files).items() if v}
        return _tsv_split(files, tsv_dir, task, split)
    raise UserError(f"data.source={cfg.source!r} for a classification task: use 'glue', "
                    "'tfds' or 'tsv'")


def classification_example(record: dict, tok: Tokenizer, seq_len: int,
                           num_labels: int) -> dict[str, np.ndarray]:
    """`[CLS] a [SEP] (b [SEP])`, truncating the longer text first to fit seq_len.

    A vocabulary without [CLS] and [SEP] (char, GPT-2's BPE) gives `a <eos> (b <eos>)`: <eos>
    both separates the texts and ends the example, and a GPT classifier reads that last real
    token, as GPT-1 reads its "extract" token (a GPT on a sentencepiece model trained here,
    which has [CLS] and [SEP], gets BERT's layout: [CLS] is GPT-1's start token).
    """
    bert_symbols = tok.cls_id is not None and tok.sep_id is not None
    texts = [tok.encode(t) for t in record["texts"]]
    budget = seq_len - bert_symbols - len(texts)
    while sum(map(len, texts)) > budget:
        longest = max(texts, key=len)
        longest.pop()
    example = (bert_example(texts[0], texts[1] if len(texts) > 1 else None, tok, seq_len)
               if bert_symbols else eos_example(texts, tok, seq_len))
    dtype = np.float32 if num_labels == 1 else np.int32
    example.update(labels=np.asarray(record["label"], dtype),
                   example_weights=np.float32(1.0), idx=np.int32(record["idx"]))
    return example


def eos_example(texts: list[list[int]], tok: Tokenizer, seq_len: int) -> dict[str, np.ndarray]:
    """`a <eos> (b <eos>)` padded to seq_len (with <pad>, else <eos>: padding is masked),
    in bert_example's keys (token types 0, 1 per text)."""
    tok.require("eos_id")
    tokens = [i for text in texts for i in (*text, tok.eos_id)]
    types = [k for k, text in enumerate(texts) for _ in range(len(text) + 1)]
    pad = seq_len - len(tokens)
    pad_id = tok.eos_id if tok.pad_id is None else tok.pad_id
    return {
        "inputs": np.asarray(tokens + [pad_id] * pad, np.int32),
        "token_type_ids": np.asarray(types + [0] * pad, np.int32),
        "input_mask": np.asarray([1] * len(tokens) + [0] * pad, np.int32),
    }
