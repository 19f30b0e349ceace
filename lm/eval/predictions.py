"""GLUE prediction files from a finetuning run (`python -m lm predict`).

`index<TAB>prediction` rows with the label names the GLUE server expects (lm.data.glue),
predicted with the trainer's own eval step from the run's best checkpoint (the
checkpointer's, by train.best_metric). A labelled split is scored too.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from lm.data import glue
from lm.data.tokenizers import Tokenizer
from lm.errors import UserError
from lm.eval import metrics
from lm.train import objectives


def submission_lines(task: str, idx_N: Sequence[int], predictions_N: Sequence) -> list[str]:
    """`index\\tprediction` lines sorted by index, with GLUE's label names."""
    labels = glue.get(task).labels
    # STS-B scores lie in [0, 5]; the server expects them there.
    fmt = (lambda p: f"{float(np.clip(p, 0.0, 5.0)):.3f}") if labels is None else (
        lambda p: labels[int(p)])
    order = np.argsort(np.asarray(idx_N), kind="stable")
    return ["index\tprediction"] + [f"{int(idx_N[i])}\t{fmt(predictions_N[i])}" for i in order]


def predict_split(run, split: str, batch_size: int = 64
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(idx_N, predictions_N, labels_N) over every example of `split` of a saved run."""
    eval_step = run.setup.eval_step()
    batches = run.setup.make_iter(split=split, batch_size=batch_size, seed=0, shuffle=False,
                                  num_epochs=1)
    idx, preds, labels = [], [], []
    for batch in batches:
        _, (logits_BxC, labels_B, weights_B) = jax.device_get(eval_step(
            run.params, {k: v for k, v in batch.items() if k != "idx"}))
        real_B = np.asarray(weights_B) > 0  # eval padding rows weigh 0
        idx.append(np.asarray(batch["idx"])[real_B])
        preds.append(metrics.predictions_from_logits(logits_BxC)[real_B])
        labels.append(np.asarray(labels_B)[real_B])
    return np.concatenate(idx), np.concatenate(preds), np.concatenate(labels)


def predict(workdir: str, split: str = "validation", out: str | None = None,
            step: int | str = "best", overrides: dict[str, str] | None = None
            ) -> tuple[pathlib.Path, dict[str, float]]:
    """Writes the GLUE submission TSV of `split`; returns the file and, for a labelled split,
    its metrics over the whole split."""
    from lm.train import saved

    run = saved.load(workdir, step, overrides)
    if run.config.data.objective != "classification":
        raise UserError(
            f"{workdir} is a {run.config.data.objective!r} run: `lm predict` writes GLUE "
            "submission files from classification finetuning runs (experiments/"
            "finetune_glue.py)")
    task = glue.get(run.config.data.task)
    idx_N, preds_N, labels_N = predict_split(run, split)
    path = pathlib.Path(out) if out else run.workdir / f"{split}_{task.submission_file}"
    path.write_text("\n".join(submission_lines(task.name, idx_N, preds_N)) + "\n")
    # GLUE test labels are hidden (-1): score only a labelled split.
    scored = {} if np.any(labels_N < 0) else metrics.glue_metrics(task.name, preds_N, labels_N)
    return path, {"step": run.step, "examples": len(idx_N), **scored}


# ---------------------------------------------------------------- texts (lm classify)


def classify_texts(run, texts: list[str]) -> list[tuple[str, dict[str, float]]]:
    """(label, {label: probability}) of each text (a score for regression) from a saved
    classification run, encoded exactly as its training data was."""
    from lm.data import classification, glue

    if run.config.data.objective != "classification":
        raise UserError(f"{run.workdir} is a {run.config.data.objective!r} run: `lm classify` "
                        "needs a classification finetuning run (experiments/finetune_glue.py)")
    task = glue.get(run.config.data.task)
    examples = [classification.classification_example(
        {"texts": tuple(t.split("\t")), "label": 0, "idx": i}, run.tokenizer,
        run.config.data.seq_len, task.num_labels) for i, t in enumerate(texts)]
    return _classified(run.model, run.params, examples, list(task.words or task.labels or []))


def classify(model: nn.Module, params: Any, tokenizer: Tokenizer, texts: list[str], *,
             labels: list[str]) -> list[tuple[str, dict[str, float]]]:
    """(label, {label: probability}) of each text (a tab separates a pair; a score for
    regression) from a Hugging Face classifier (BertForSequenceClassification,
    GPT2ForSequenceClassification), encoded as its tokenizer does: BERT `[CLS] a [SEP] b
    [SEP]`, GPT-2 the tokens alone, read at the last one."""
    if not model.cfg.num_labels:
        raise UserError(f"classify needs a classifier (a ...ForSequenceClassification "
                        f"directory); this {model.cfg.family} has no classification head")
    seq_len = model.cfg.max_len
    if tokenizer.cls_id is not None and tokenizer.sep_id is not None:
        from lm.data import classification

        examples = [classification.classification_example(
            {"texts": tuple(t.split("\t")), "label": 0, "idx": i}, tokenizer, seq_len,
            model.cfg.num_labels) for i, t in enumerate(texts)]
    else:
        examples = [_plain_example([i for part in t.split("\t") for i in tokenizer.encode(part)],
                                   tokenizer, seq_len) for t in texts]
    return _classified(model, params, examples, labels)


def _plain_example(ids: list[int], tokenizer: Tokenizer, seq_len: int) -> dict[str, np.ndarray]:
    """The tokens alone, right-padded (GPT-2's tokenizer adds no symbol around a text)."""
    ids = ids[:seq_len]
    pad = seq_len - len(ids)
    pad_id = next((i for i in (tokenizer.pad_id, tokenizer.eos_id) if i is not None), 0)
    return {"inputs": np.asarray(ids + [pad_id] * pad, np.int32),
            "token_type_ids": np.zeros(seq_len, np.int32),
            "input_mask": np.asarray([1] * len(ids) + [0] * pad, np.int32)}


def _classified(model: nn.Module, params: Any, examples: list[dict], labels: list[str]
                ) -> list[tuple[str, dict[str, float]]]:
    """Runs the classifier on encoded examples: (label, {label: probability}) of each."""
    batch = {k: np.stack([e[k] for e in examples]) for k in ("inputs", "token_type_ids",
                                                             "input_mask")}
    # each family takes its own inputs
    args, kwargs = objectives.get("classification", model.cfg).inputs(batch)
    logits = np.asarray(jax.jit(model.apply)({"params": params}, *args, **kwargs)["logits"],
                        np.float64)
    if logits.shape[-1] == 1:
        return [(f"{row[0]:.3f}", {"score": float(row[0])}) for row in logits]
    if len(labels) != logits.shape[-1]:
        labels = [f"LABEL_{i}" for i in range(logits.shape[-1])]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return [(labels[int(p.argmax())], dict(zip(labels, map(float, p)))) for p in probs]
