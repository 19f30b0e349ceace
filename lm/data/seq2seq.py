"""Source → target text pairs for encoder-decoders (T5's text-to-text format).

Records are {'source': str, 'target': str, 'idx': int} (GLUE ones keep their 'label' too):

- GLUE as text-to-text, as in the T5 paper, when `data.task` is set (any source
  `lm.data.classification` reads): "sst2 sentence: it is great" → "positive",
  "rte sentence1: ... sentence2: ..." → "not_entailment", STS-B's score as text ("3.8",
  rounded to 0.2 as T5 does);
- any file of pairs with `data.source='pairs'` and `data.files.<split>`: JSON lines
  ({"source": ..., "target": ...}, keys from `data.pairs`) or TSV (those columns under a
  header, else the first two columns).
"""

from __future__ import annotations

import csv
import functools
import json
import math
from collections.abc import Sequence

import numpy as np

from lm.data import classification, glue, home, sources
from lm.data.span import encoder_decoder_example
from lm.data.tokenizers import Tokenizer
from lm.errors import MissingFileError, UserError


def glue_source(task: glue.GlueTask, texts: Sequence[str]) -> str:
    """T5's input for a GLUE example: the task name, then each text after its feature name."""
    return " ".join([task.name, *(f"{key}: {text}" for key, text in zip(task.texts, texts))])


def glue_target(task: glue.GlueTask, label: float) -> str:
    """The label as T5 writes it: its word, or STS-B's score rounded to 0.2."""
    if task.words is None:
        return f"{round(float(label) * 5) / 5:.1f}"
    return task.words[int(label)] if label >= 0 else ""  # -1: a hidden test label


def label_of(task: glue.GlueTask, text: str) -> float:
    """The label a decoded text names: its word's id (-1 for any other text, which counts as
    wrong), or the score it parses to (-1 when it is no number, as T5 scores it)."""
    text = text.strip()
    if task.words is None:
        try:
            value = float(text)
        except ValueError:
            return -1.0
        return value if math.isfinite(value) else -1.0
    return float(task.words.index(text)) if text in task.words else -1.0


def _glue_text(task: glue.GlueTask, r: dict) -> dict:
    return {"source": glue_source(task, r["texts"]), "target": glue_target(task, r["label"]),
            "label": r["label"], "idx": r["idx"]}


def _read_pairs(path: str, source_key: str, target_key: str) -> list[dict]:
    path = home.resolve(path)
    try:
        with open(path, encoding="utf-8") as f:
            if path.endswith((".jsonl", ".json")):
                rows = [json.loads(line) for line in f if line.strip()]
            else:
                rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
                if rows and source_key in rows[0] and target_key in rows[0]:
                    header, rows = rows[0], rows[1:]
                    rows = [dict(zip(header, r)) for r in rows]
                else:
                    rows = [{source_key: r[0], target_key: r[1]} for r in rows if len(r) >= 2]
    except FileNotFoundError:
        raise MissingFileError(f"no pairs file at {path} (data.files.<split>)") from None
    missing = [i for i, r in enumerate(rows) if source_key not in r or target_key not in r]
    if missing:
        raise UserError(f"{path}: rows {missing[:5]} lack {source_key!r} or {target_key!r} "
                        "(set data.pairs.source_key / target_key)")
    return [{"source": str(r[source_key]), "target": str(r[target_key]), "idx": i}
            for i, r in enumerate(rows)]


def records(cfg, split: str) -> Sequence[dict]:
    """The source/target records of `split` (see the module docstring)."""
    if cfg.source == "pairs":
        files = {k: v for k, v in dict(cfg.files).items() if v}

        def load(name: str) -> list[dict]:
            if name not in files:
                raise UserError(f"no pairs file for split {name!r}: set data.files.{name}")
            return _read_pairs(files[name], cfg.pairs.source_key, cfg.pairs.target_key)

        names = {p[0] for p in sources.parse_split(split)}
        return sources.apply_split(split, {n: load(n) for n in names})
    if not cfg.task:
        raise UserError("objective 'seq2seq' reads GLUE tasks as text (set data.task) or "
                        "files of pairs (data.source='pairs' and data.files.<split>)")
    return sources.Mapped(classification.records(cfg, split),
                          functools.partial(_glue_text, glue.get(cfg.task)))


def seq2seq_example(record: dict, tok: Tokenizer, seq_len: int, target_len: int
                    ) -> dict[str, np.ndarray]:
    """Encoder inputs (source + <eos>) and decoder targets (target + <eos>), each cut to fit."""
    source = tok.encode(record["source"])[:seq_len - 1] + [tok.eos_id]
    target = tok.encode(record["target"])[:target_len - 1] + [tok.eos_id]
    example = encoder_decoder_example(source, target, pad_id=tok.pad_id, inputs_len=seq_len,
                                      targets_len=target_len)
    example["idx"] = np.int32(record["idx"])
    return example
