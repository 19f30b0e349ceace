"""Task metrics (numpy only): GLUE's, accumulated exactly over a whole evaluation split.

Which metrics a task reports, and its main one, are in `lm.data.glue`.

Classification tasks accumulate an integer confusion matrix (exact sums: accuracy, F1 and
Matthews correlation are functions of it); regression (STS-B) keeps every prediction,
because Spearman's rank correlation needs the whole split at once (1,500 floats).

    acc = Accumulator('mrpc')
    for batch, logits_BxC in ...:
        acc.add(predictions(logits_BxC), batch['labels'], batch['example_weights'])
    acc.compute()   # {'f1': ..., 'accuracy': ...}
"""

import numpy as np

from lm.data import glue

# ---------------------------------------------------------------- metric functions


def confusion_matrix(predictions_B, labels_B, num_classes: int, weights_B=None) -> np.ndarray:
    """Integer counts C×C, rows = true label, columns = prediction; weight-0 rows are dropped.

    Counts are exact and add up across batches, so the whole-split metrics are exact.
    """
    predictions_B, labels_B = np.asarray(predictions_B), np.asarray(labels_B)
    if weights_B is not None:
        keep_B = np.asarray(weights_B) > 0
        predictions_B, labels_B = predictions_B[keep_B], labels_B[keep_B]
    labels_B, predictions_B = labels_B.astype(np.int64), predictions_B.astype(np.int64)
    for name, x in (("labels", labels_B), ("predictions", predictions_B)):
        if x.size and (x.min() < 0 or x.max() >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes}); got {x.min()}..{x.max()}")
    flat = labels_B * num_classes + predictions_B
    return np.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def _ratio(num: float, den: float) -> float:
    # sklearn's convention: an undefined ratio (0/0) scores 0.
    return float(num / den) if den else 0.0


def accuracy_from_confusion(confusion_CxC: np.ndarray) -> float:
    return _ratio(np.trace(confusion_CxC), confusion_CxC.sum())


def f1_from_confusion(confusion_CxC: np.ndarray, positive: int = 1) -> float:
    """Binary F1 of class `positive` (GLUE: 1 = paraphrase / duplicate)."""
    tp = confusion_CxC[positive, positive]
    fp = confusion_CxC[:, positive].sum() - tp
    fn = confusion_CxC[positive, :].sum() - tp
    return _ratio(2 * tp, 2 * tp + fp + fn)


def matthews_from_confusion(confusion_CxC: np.ndarray) -> float:
    """Matthews correlation (the multiclass R_K statistic; the usual MCC for 2 classes)."""
    c = confusion_CxC.astype(np.float64)
    n, correct = c.sum(), np.trace(c)
    true_k, pred_k = c.sum(axis=1), c.sum(axis=0)
    cov_ytyp = correct * n - pred_k @ true_k
    cov_ypyp = n * n - pred_k @ pred_k
    cov_ytyt = n * n - true_k @ true_k
    return _ratio(cov_ytyp, np.sqrt(cov_ytyt * cov_ypyp))


def rankdata(x_N: np.ndarray) -> np.ndarray:
    """Ranks 1..N, ties get their average rank (scipy.stats.rankdata's 'average')."""
    x_N = np.asarray(x_N)
    order_N = np.argsort(x_N, kind="stable")
    sorted_N = x_N[order_N]
    # Start index of each run of equal values; a tie group's ranks average to (first+last)/2.
    new_group_N = np.concatenate([[True], sorted_N[1:] != sorted_N[:-1]])
    group_N = np.cumsum(new_group_N) - 1
    starts_G = np.flatnonzero(new_group_N)
    ends_G = np.append(starts_G[1:], len(x_N))
    avg_rank_G = (starts_G + 1 + ends_G) / 2.0  # mean of ranks start+1 .. end
    ranks_N = np.empty(len(x_N), np.float64)
    ranks_N[order_N] = avg_rank_G[group_N]
    return ranks_N


def pearson(x_N, y_N) -> float:
    x_N = np.asarray(x_N, np.float64) - np.mean(x_N, dtype=np.float64)
    y_N = np.asarray(y_N, np.float64) - np.mean(y_N, dtype=np.float64)
    return _ratio(x_N @ y_N, np.sqrt((x_N @ x_N) * (y_N @ y_N)))


def spearman(x_N, y_N) -> float:
    return pearson(rankdata(x_N), rankdata(y_N))


_FROM_CONFUSION = {
    "accuracy": accuracy_from_confusion,
    "f1": f1_from_confusion,
    "matthews_corr": matthews_from_confusion,
}
_FROM_PAIRS = {"pearson": pearson, "spearman": spearman}


# ---------------------------------------------------------------- accumulation


def predictions_from_logits(logits_BxC: np.ndarray) -> np.ndarray:
    """Class ids (argmax) for classification, the score itself for regression (C = 1)."""
    logits_BxC = np.asarray(logits_BxC)
    if logits_BxC.shape[-1] == 1:
        return logits_BxC[..., 0].astype(np.float64)
    return logits_BxC.argmax(axis=-1)


class Accumulator:
    """Adds up one task's evaluation batches; `compute()` gives the whole-split metrics."""

    def __init__(self, task: str):
        self.task = task
        self.spec = glue.get(task)
        self.confusion = np.zeros((self.spec.num_labels,) * 2, np.int64)
        self.pairs: list[tuple[np.ndarray, np.ndarray]] = []  # regression only

    def add(self, predictions_B, labels_B, weights_B=None) -> None:
        """Counts rows with weight > 0 (eval padding rows carry weight 0)."""
        if self.spec.num_labels > 1:
            self.confusion += confusion_matrix(
                predictions_B, labels_B, self.spec.num_labels, weights_B)
            return
        keep_B = np.ones(len(labels_B), bool) if weights_B is None else np.asarray(weights_B) > 0
        self.pairs.append((np.asarray(predictions_B, np.float64)[keep_B],
                           np.asarray(labels_B, np.float64)[keep_B]))

    @property
    def count(self) -> int:
        """Examples seen so far (the exact dev-set count after a full pass)."""
        if self.spec.num_labels > 1:
            return int(self.confusion.sum())
        return sum(len(p) for p, _ in self.pairs)

    def compute(self) -> dict[str, float]:
        if self.spec.num_labels > 1:
            return {name: _FROM_CONFUSION[name](self.confusion) for name in self.spec.metrics}
        preds_N = np.concatenate([p for p, _ in self.pairs]) if self.pairs else np.zeros(0)
        labels_N = np.concatenate([y for _, y in self.pairs]) if self.pairs else np.zeros(0)
        return {name: _FROM_PAIRS[name](preds_N, labels_N) for name in self.spec.metrics}


def glue_metrics(task: str, predictions_N, labels_N, weights_N=None) -> dict[str, float]:
    """The task's metrics over whole arrays (one-shot form of `Accumulator`)."""
    acc = Accumulator(task)
    acc.add(predictions_N, labels_N, weights_N)
    return acc.compute()
