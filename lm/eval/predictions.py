"""GLUE prediction files from a finetuning run (`python -m lm predict`).

`index<TAB>prediction` rows with the label names the GLUE server expects (lm.data.glue),
predicted with the trainer's own eval step from the run's best checkpoint (the
checkpointer's, by train.best_metric). A labelled split is scored too.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import numpy as np

from lm.data import glue
from lm.errors import UserError
from lm.eval import metrics


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
    import jax

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
