"""Grade metrics: the Keras metrics TFMA runs agree with a hand-computed confusion matrix."""

import numpy as np
import pytest
import tensorflow as tf
from sklearn.metrics import cohen_kappa_score

from components import metrics


@pytest.fixture
def sample():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 200)
    scores = rng.random((200, 5)) + np.eye(5)[labels] * rng.random((200, 1)) * 2
    return labels, scores / scores.sum(axis=1, keepdims=True)


def _keras(metric, labels, scores, batches=4):
    for part_labels, part_scores in zip(np.array_split(labels, batches),
                                        np.array_split(scores, batches)):
        metric.update_state(part_labels[:, None], tf.constant(part_scores, tf.float32))
    return float(metric.result())


def test_confusion_matrix_counts_by_hand():
    matrix = metrics.confusion_matrix([0, 0, 1, 4, 4], [0, 1, 1, 4, 2])
    assert matrix[0, 0] == 1 and matrix[0, 1] == 1 and matrix[1, 1] == 1
    assert matrix[4, 4] == 1 and matrix[4, 2] == 1 and matrix.sum() == 5
    assert metrics.recall_per_grade(matrix)[:2] == [0.5, 1.0]
    assert np.isnan(metrics.recall_per_grade(matrix)[2])  # no true grade 2
    assert metrics.mean_absolute_error(matrix) == pytest.approx((1 + 2) / 5)


def test_grade_recall_is_argmax_recall_not_binarized(sample):
    labels, scores = sample
    predicted = scores.argmax(axis=1)
    matrix = metrics.confusion_matrix(labels, predicted)
    for grade in range(5):
        expected = ((predicted == grade) & (labels == grade)).sum() / (labels == grade).sum()
        assert _keras(metrics.GradeRecall(grade), labels, scores) == pytest.approx(expected)
        assert metrics.recall_per_grade(matrix)[grade] == pytest.approx(expected)


def test_quadratic_kappa_matches_scikit_learn(sample):
    labels, scores = sample
    predicted = scores.argmax(axis=1)
    expected = cohen_kappa_score(labels, predicted, weights="quadratic")
    assert _keras(metrics.QuadraticWeightedKappa(), labels, scores) == pytest.approx(expected)
    assert metrics.quadratic_weighted_kappa(
        metrics.confusion_matrix(labels, predicted)) == pytest.approx(expected)


def test_mean_absolute_grade_error(sample):
    labels, scores = sample
    expected = np.abs(labels - scores.argmax(axis=1)).mean()
    assert _keras(metrics.MeanAbsoluteGradeError(), labels, scores) == pytest.approx(expected)


def test_perfect_predictions_and_reset():
    labels = np.arange(5).repeat(3)
    scores = np.eye(5)[labels]
    kappa = metrics.QuadraticWeightedKappa()
    assert _keras(kappa, labels, scores) == pytest.approx(1.0)
    kappa.reset_state()
    assert float(tf.reduce_sum(kappa.matrix)) == 0.0


def test_metrics_round_trip_through_their_config():
    recall = metrics.GradeRecall(3, name="recall_grade_3")
    clone = metrics.GradeRecall.from_config(recall.get_config())
    assert clone.grade == 3 and clone.name == "recall_grade_3"
