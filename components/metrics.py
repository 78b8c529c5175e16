"""Grade metrics computed from an argmax confusion matrix, as Keras metrics for TFMA.

TFMA's built-in per-class recall binarizes scores at 0.5, which is not "of the knees
truly of grade g, the share predicted g". These metrics accumulate the 5x5 confusion
matrix of (true grade, argmax grade) and derive recall, QWK and MAE from it; the expected
calibration error accumulates per-confidence-bin sums. Their only state is additive
counts and sums, so TFMA can merge partial results by adding them.
"""

import numpy as np
import tensorflow as tf

from components import features


def confusion_matrix(labels, predicted, num_grades: int = features.NUM_GRADES) -> np.ndarray:
    """[true, predicted] count matrix from integer grades (numpy, for reports and tests)."""
    matrix = np.zeros((num_grades, num_grades), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, int), np.asarray(predicted, int)), 1)
    return matrix


def recall_per_grade(matrix: np.ndarray) -> list:
    """Share of each true grade predicted as that grade (NaN where a grade is absent)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    totals = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return list(np.where(totals > 0, np.diag(matrix) / totals, np.nan))


def quadratic_weighted_kappa(matrix: np.ndarray) -> float:
    """Cohen's kappa with quadratic disagreement weights (i - j)^2."""
    matrix = np.asarray(matrix, dtype=np.float64)
    n = matrix.shape[0]
    total = matrix.sum()
    if total == 0:
        return float("nan")
    grid = np.arange(n)
    weights = (grid[:, None] - grid[None, :]) ** 2 / (n - 1) ** 2
    expected = np.outer(matrix.sum(axis=1), matrix.sum(axis=0)) / total
    denominator = (weights * expected).sum()
    if denominator == 0:
        return float("nan")
    return float(1.0 - (weights * matrix).sum() / denominator)


def mean_absolute_error(matrix: np.ndarray) -> float:
    """Mean |true - predicted| grade."""
    matrix = np.asarray(matrix, dtype=np.float64)
    grid = np.arange(matrix.shape[0])
    total = matrix.sum()
    return float((np.abs(grid[:, None] - grid[None, :]) * matrix).sum() / total) if total else float("nan")


class _GradeConfusionMetric(tf.keras.metrics.Metric):
    """Accumulates the argmax confusion matrix; subclasses turn it into one number."""

    def __init__(self, name, num_grades: int = features.NUM_GRADES, dtype=None, **kwargs):
        super().__init__(name=name, dtype=dtype, **kwargs)
        self.num_grades = num_grades
        self.matrix = self.add_weight(
            name="confusion", shape=(num_grades, num_grades), initializer="zeros",
            dtype=tf.float64)

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels = tf.cast(tf.reshape(y_true, [-1]), tf.int32)
        predicted = tf.argmax(tf.reshape(y_pred, [-1, self.num_grades]), axis=-1,
                              output_type=tf.int32)
        weights = None if sample_weight is None else tf.reshape(sample_weight, [-1])
        self.matrix.assign_add(tf.math.confusion_matrix(
            labels, predicted, num_classes=self.num_grades, weights=weights,
            dtype=tf.float64))

    def reset_state(self):
        self.matrix.assign(tf.zeros_like(self.matrix))

    def get_config(self):
        return {**super().get_config(), "num_grades": self.num_grades}


class GradeRecall(_GradeConfusionMetric):
    """Of the examples truly of `grade`, the share whose argmax is `grade`."""

    def __init__(self, grade: int, name=None, **kwargs):
        super().__init__(name=name or f"recall_grade_{grade}", **kwargs)
        self.grade = grade

    def result(self):
        row = self.matrix[self.grade]
        return tf.math.divide_no_nan(row[self.grade], tf.reduce_sum(row))

    def get_config(self):
        return {**super().get_config(), "grade": self.grade}


class QuadraticWeightedKappa(_GradeConfusionMetric):
    """Cohen's quadratic weighted kappa between true and argmax grades."""

    def __init__(self, name="qwk", **kwargs):
        super().__init__(name=name, **kwargs)

    def result(self):
        n = self.num_grades
        grid = tf.range(n, dtype=tf.float64)
        weights = tf.square(grid[:, None] - grid[None, :]) / float((n - 1) ** 2)
        total = tf.reduce_sum(self.matrix)
        expected = tf.math.divide_no_nan(
            tf.reduce_sum(self.matrix, 1)[:, None] * tf.reduce_sum(self.matrix, 0)[None, :],
            total)
        return 1.0 - tf.math.divide_no_nan(tf.reduce_sum(weights * self.matrix),
                                           tf.reduce_sum(weights * expected))


class MeanAbsoluteGradeError(_GradeConfusionMetric):
    """Mean absolute difference between true and argmax grade."""

    def __init__(self, name="mae", **kwargs):
        super().__init__(name=name, **kwargs)

    def result(self):
        grid = tf.range(self.num_grades, dtype=tf.float64)
        distance = tf.abs(grid[:, None] - grid[None, :])
        return tf.math.divide_no_nan(tf.reduce_sum(distance * self.matrix),
                                     tf.reduce_sum(self.matrix))


class ExpectedCalibrationError(tf.keras.metrics.Metric):
    """ECE over equal-width bins of the top-class probability (see components.calibration).

    State per bin: example count, summed confidence and number correct — all additive, so
    TFMA can merge partial results by adding them. ECE = sum_b |correct_b - confidence_b| / N.
    """

    def __init__(self, name="ece", bins: int = 10, num_grades: int = features.NUM_GRADES,
                 dtype=None, **kwargs):
        super().__init__(name=name, dtype=dtype, **kwargs)
        self.bins = bins
        self.num_grades = num_grades
        self.counts = self.add_weight(name="counts", shape=(bins,), initializer="zeros",
                                      dtype=tf.float64)
        self.confidence = self.add_weight(name="confidence", shape=(bins,),
                                          initializer="zeros", dtype=tf.float64)
        self.correct = self.add_weight(name="correct", shape=(bins,), initializer="zeros",
                                       dtype=tf.float64)

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels = tf.cast(tf.reshape(y_true, [-1]), tf.int64)
        scores = tf.cast(tf.reshape(y_pred, [-1, self.num_grades]), tf.float64)
        confidence = tf.reduce_max(scores, axis=-1)
        correct = tf.cast(tf.equal(tf.argmax(scores, axis=-1), labels), tf.float64)
        index = tf.minimum(tf.cast(tf.floor(confidence * self.bins), tf.int32), self.bins - 1)
        weights = (tf.ones_like(confidence) if sample_weight is None
                   else tf.cast(tf.reshape(sample_weight, [-1]), tf.float64))
        for state, values in ((self.counts, weights), (self.confidence, weights * confidence),
                              (self.correct, weights * correct)):
            state.assign_add(tf.math.unsorted_segment_sum(values, index, self.bins))

    def result(self):
        return tf.math.divide_no_nan(tf.reduce_sum(tf.abs(self.correct - self.confidence)),
                                     tf.reduce_sum(self.counts))

    def reset_state(self):
        for state in (self.counts, self.confidence, self.correct):
            state.assign(tf.zeros_like(state))

    def get_config(self):
        return {**super().get_config(), "bins": self.bins, "num_grades": self.num_grades}
