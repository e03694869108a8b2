import numpy as np
import pytest
from sklearn import metrics as skm

from pipeline.contract.exceptions import DataError
from trainer import detection_metrics


def _cases():
    rng = np.random.default_rng(0)
    for i in range(60):
        n = int(rng.integers(2, 400))
        labels = rng.random(n) < rng.uniform(0.05, 0.95)
        if labels.all() or not labels.any():
            labels[0] = not labels[0]
        scores = rng.standard_normal(n) + labels * rng.uniform(0, 3)
        # every third case rounds hard, so many scores tie across the two classes
        yield labels, np.round(scores, i % 3)


@pytest.mark.parametrize(("labels", "scores"), list(_cases()))
def test_roc_auc_and_average_precision_match_scikit_learn(labels, scores):
    assert detection_metrics.roc_auc(scores, labels) == pytest.approx(
        skm.roc_auc_score(labels, scores), abs=1e-12
    )
    assert detection_metrics.average_precision(scores, labels) == pytest.approx(
        skm.average_precision_score(labels, scores), abs=1e-12
    )


def test_curves_match_scikit_learn_point_for_point():
    labels, scores = next(_cases())
    fpr, tpr, _ = skm.roc_curve(labels, scores, drop_intermediate=False)
    roc = detection_metrics.roc_curve(scores, labels)
    np.testing.assert_allclose(roc.x, fpr)
    np.testing.assert_allclose(roc.y, tpr)
    precision, recall, _ = skm.precision_recall_curve(labels, scores)
    pr = detection_metrics.precision_recall_curve(scores, labels)
    # scikit-learn lists the PR points from the lowest threshold up; ours from the highest
    np.testing.assert_allclose(pr.x, recall[::-1])
    np.testing.assert_allclose(pr.y, precision[::-1])


@pytest.mark.parametrize(
    ("scores", "labels", "roc", "ap"),
    [
        ([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], 1.0, 1.0),  # perfect
        ([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1], 0.0, 5 / 12),  # inverted: (1/3 + 2/4) / 2
        ([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1], 0.5, 0.5),  # all tied: chance
    ],
)
def test_edge_cases(scores, labels, roc, ap):
    assert detection_metrics.roc_auc(scores, labels) == pytest.approx(roc)
    assert detection_metrics.average_precision(scores, labels) == pytest.approx(ap)


def test_threshold_metrics_flag_strictly_above_like_the_worker():
    labels, scores = next(_cases())
    threshold = float(np.median(scores))
    got = detection_metrics.at_threshold(scores, labels, threshold)
    predicted = scores > threshold
    assert got.precision == pytest.approx(skm.precision_score(labels, predicted))
    assert got.recall == pytest.approx(skm.recall_score(labels, predicted))
    assert got.f1 == pytest.approx(skm.f1_score(labels, predicted))
    tn, fp, fn, tp = skm.confusion_matrix(labels, predicted).ravel()
    assert (got.tp, got.fp, got.tn, got.fn) == (tp, fp, tn, fn)
    # a score equal to the threshold is not flagged
    at = detection_metrics.at_threshold([1.0, 2.0], [True, True], 1.0)
    assert (at.tp, at.fn) == (1, 1)


def test_scores_that_are_not_finite_rank_first_and_are_flagged_like_the_worker():
    """The worker alerts on a NaN or infinite score, so evaluation ranks such rows above
    every finite one (tied with each other) and flags them at any threshold."""
    scores = [0.1, np.nan, 0.3, np.inf, 0.2]
    labels = [0, 1, 0, 0, 1]
    as_ranked = [0.1, 10.0, 0.3, 10.0, 0.2]
    assert detection_metrics.roc_auc(scores, labels) == pytest.approx(
        skm.roc_auc_score(labels, as_ranked)
    )
    assert detection_metrics.average_precision(scores, labels) == pytest.approx(
        skm.average_precision_score(labels, as_ranked)
    )
    at = detection_metrics.at_threshold(scores, labels, 1e300)
    assert (at.tp, at.fp, at.tn, at.fn) == (1, 1, 2, 1)


def test_nothing_flagged_gives_zero_precision_not_a_crash():
    got = detection_metrics.at_threshold([0.1, 0.2], [True, False], 5.0)
    assert (got.precision, got.recall, got.f1) == (0.0, 0.0, 0.0)


def test_one_class_or_bad_scores_are_refused_with_the_reason():
    with pytest.raises(DataError, match="both classes: 0 anomalous and 3 normal"):
        detection_metrics.roc_auc([0.1, 0.2, 0.3], [0, 0, 0])
    with pytest.raises(ValueError, match="differ in length"):
        detection_metrics.roc_auc([0.1, 0.2], [0, 1, 1])
