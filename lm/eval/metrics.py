"""Task metrics: GLUE's, accumulated exactly over a whole evaluation split.

Which metrics a task reports, and its main one, are in `lm.data.glue`.

Classification tasks accumulate an integer confusion matrix (exact sums: accuracy, F1 and
Matthews correlation are functions of it); regression (STS-B) keeps every prediction,
because Spearman's rank correlation needs the whole split at once (1,500 floats).

    acc = Accumulator('mrpc')
    for batch, logits_BxC in ...:
        acc.add(predictions(logits_BxC), batch['labels'], batch['example_weights'])
    acc.compute()   # {'f1': ..., 'accuracy': ...}
"""

import functools

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


def _undefined(x_N: np.ndarray, y_N: np.ndarray) -> bool:
    """Fewer than two points or a constant side: no correlation (scored 0, as MCC and F1 are;
    scipy would warn and return NaN)."""
    return len(x_N) < 2 or np.ptp(x_N) == 0 or np.ptp(y_N) == 0


def pearson(x_N, y_N) -> float:
    import scipy.stats  # here, not at the top: it imports much of scipy, and only STS-B needs it

    x_N, y_N = np.asarray(x_N, np.float64), np.asarray(y_N, np.float64)
    return 0.0 if _undefined(x_N, y_N) else float(scipy.stats.pearsonr(x_N, y_N).statistic)


def spearman(x_N, y_N) -> float:
    """Ties share their average rank (STS-B's gold scores come in steps of 0.2)."""
    import scipy.stats

    x_N, y_N = np.asarray(x_N, np.float64), np.asarray(y_N, np.float64)
    return 0.0 if _undefined(x_N, y_N) else float(scipy.stats.spearmanr(x_N, y_N).statistic)


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


# ---------------------------------------------------------------- generated text


class GlueTextMetrics:
    """A GLUE task scored from decoded text (T5's text-to-text): each prediction names a label
    word (or a score); anything else counts as wrong. Adds `exact_match`."""

    def __init__(self, task: str):
        from lm.data import seq2seq

        self._label_of = functools.partial(seq2seq.label_of, glue.get(task))
        self._acc = Accumulator(task)
        self._exact: list[bool] = []

    def add(self, predictions: list[str], targets: list[str]) -> None:
        labels = np.array([self._label_of(t) for t in targets])
        preds = np.array([self._label_of(p) for p in predictions])
        if self._acc.spec.num_labels > 1:  # a wrong word is the other class in the matrix
            preds = np.where(preds < 0, (labels + 1) % self._acc.spec.num_labels, preds)
        self._acc.add(preds, labels)
        self._exact += [p.strip() == t.strip() for p, t in zip(predictions, targets)]

    def compute(self) -> dict[str, float]:
        return {**self._acc.compute(), "exact_match": float(np.mean(self._exact))}


class GenerationMetrics:
    """Free text: corpus BLEU (sacrebleu, its default 13a tokenisation), ROUGE-1/2/L F1
    (Google's rouge-score, stemmed) and exact match, over every example added."""

    def __init__(self):
        self._predictions: list[str] = []
        self._targets: list[str] = []

    def add(self, predictions: list[str], targets: list[str]) -> None:
        self._predictions += predictions
        self._targets += targets

    def compute(self) -> dict[str, float]:
        import sacrebleu
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
        scores = [scorer.score(t, p) for p, t in zip(self._predictions, self._targets)]
        rouge = {k: float(np.mean([s[k].fmeasure for s in scores])) for k in scores[0]} \
            if scores else {}
        return {"bleu": sacrebleu.corpus_bleu(self._predictions, [self._targets]).score,
                **rouge, "exact_match": float(np.mean(
                    [p.strip() == t.strip() for p, t in zip(self._predictions, self._targets)]))}


def text_metrics(task: str) -> GlueTextMetrics | GenerationMetrics:
    """The metrics of decoded text: the GLUE task's own, or BLEU/ROUGE without a task."""
    return GlueTextMetrics(task) if task else GenerationMetrics()
