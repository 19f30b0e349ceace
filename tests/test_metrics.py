"""GLUE metrics against scipy / sklearn on random data, batch accumulation against one shot."""

import numpy as np
import pytest
import scipy.stats
from sklearn import metrics as skm

from lm.data import glue
from lm.eval import metrics


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def _labels_and_noisy_predictions(rng, n, num_classes):
    labels = rng.integers(0, num_classes, n)
    # Mostly right, so the metrics are far from 0 and a sign error would show.
    predictions = np.where(rng.random(n) < 0.7, labels, rng.integers(0, num_classes, n))
    return predictions, labels


@pytest.mark.parametrize("num_classes", [2, 3])
def test_classification_metrics_match_sklearn(rng, num_classes):
    pred, label = _labels_and_noisy_predictions(rng, 501, num_classes)
    confusion = metrics.confusion_matrix(pred, label, num_classes)
    np.testing.assert_array_equal(confusion, skm.confusion_matrix(label, pred))
    assert metrics.accuracy_from_confusion(confusion) == pytest.approx(
        skm.accuracy_score(label, pred), abs=1e-12)
    assert metrics.matthews_from_confusion(confusion) == pytest.approx(
        skm.matthews_corrcoef(label, pred), abs=1e-12)
    if num_classes == 2:
        assert metrics.f1_from_confusion(confusion) == pytest.approx(
            skm.f1_score(label, pred), abs=1e-12)


def test_degenerate_metrics_are_zero_like_sklearn():
    label = np.array([0, 1, 0, 1])
    pred = np.zeros(4, int)  # constant prediction: MCC and F1 undefined -> 0
    confusion = metrics.confusion_matrix(pred, label, 2)
    assert metrics.matthews_from_confusion(confusion) == skm.matthews_corrcoef(label, pred) == 0
    assert metrics.f1_from_confusion(confusion) == skm.f1_score(label, pred, zero_division=0)
    # and so are the correlations of a constant prediction, or of fewer than two points
    assert metrics.pearson(pred, label) == metrics.spearman(pred, label) == 0.0
    assert metrics.pearson([1.0], [2.0]) == metrics.spearman([], []) == 0.0


def test_correlations_match_scipy(rng):
    x = rng.normal(size=300)
    y = 0.6 * x + rng.normal(size=300)
    assert metrics.pearson(x, y) == pytest.approx(scipy.stats.pearsonr(x, y)[0], abs=1e-12)
    assert metrics.spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y)[0], abs=1e-12)
    # STS-B gold scores have many ties (steps of 0.2).
    tied = np.round(rng.uniform(0, 5, 300) * 5) / 5
    assert metrics.spearman(x, tied) == pytest.approx(
        scipy.stats.spearmanr(x, tied)[0], abs=1e-12)


@pytest.mark.parametrize("task", ["mrpc", "cola", "stsb"])
def test_accumulated_batches_equal_whole_split_and_skip_padding(rng, task):
    n = 203
    if task == "stsb":
        pred, label = rng.uniform(0, 5, n), rng.uniform(0, 5, n)
    else:
        pred, label = _labels_and_noisy_predictions(rng, n, 2)
    acc = metrics.Accumulator(task)
    batch = 32
    for start in range(0, n, batch):  # the last batch is padded with weight-0 junk rows
        p, y = pred[start:start + batch], label[start:start + batch]
        pad = batch - len(p)
        weights = np.concatenate([np.ones(len(p)), np.zeros(pad)])
        acc.add(np.concatenate([p, np.ones(pad, p.dtype)]),
                np.concatenate([y, np.zeros(pad, y.dtype)]), weights)
    assert acc.count == n
    whole = metrics.glue_metrics(task, pred, label)
    assert set(whole) == set(glue.get(task).metrics)
    for name, value in acc.compute().items():
        assert value == pytest.approx(whole[name], abs=1e-12)
    if task == "stsb":
        assert whole["spearman"] == pytest.approx(scipy.stats.spearmanr(pred, label)[0])
    elif task == "mrpc":
        assert whole["f1"] == pytest.approx(skm.f1_score(label, pred))


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="must be one of"):
        metrics.Accumulator("sst-2")
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        metrics.confusion_matrix(np.array([0, 1]), np.array([0, 2]), 2)


def test_predictions_from_logits():
    np.testing.assert_array_equal(
        metrics.predictions_from_logits(np.array([[0.1, 0.9], [2.0, -1.0]])), [1, 0])
    np.testing.assert_allclose(metrics.predictions_from_logits(np.array([[3.5], [1.0]])),
                               [3.5, 1.0])
