"""Ordinal decision: the KL grade from the expected grade and fitted cut-points.

The argmax of the probabilities ignores that KL grades are ordered: a film whose
probability mass is split between grades 1 and 3 gets whichever is a little larger,
never the 2 in between. The expected grade E = sum_k k * p_k keeps that order; the grade is
the number of cut-points c_1 < ... < c_4 that E exceeds. With c_k = k - 0.5 that is E
rounded; cut-points fitted on the validation split to maximise the quadratic weighted kappa
(QWK) move the boundaries to where the model's expected grade really separates the grades
(the thresholded-regression decision used for ordinal grading in the Kaggle diabetic
retinopathy and APTOS competitions).

Fitting and measuring on the same split is optimistic; `cross_fitted` fits on one half of
the validation split and scores on the other, and vice versa.
"""

from typing import Dict

import numpy as np

from components import grade_offsets, metrics

# Cut-points move on this grid (grade units); the search is one cut-point at a time.
_STEP = 0.02
_MAX_SWEEPS = 10


class CutPointError(ValueError):
    """The inputs cannot be used to fit cut-points."""


def expected_grade(probabilities: np.ndarray) -> np.ndarray:
    """Expected grade [N] (float64) of probabilities [N, K] over grades 0..K-1."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    return probabilities @ np.arange(probabilities.shape[1])


def grades_from_cut_points(expected: np.ndarray, cut_points: np.ndarray) -> np.ndarray:
    """Grade [N] (int64): how many of the increasing cut-points [K-1] each value exceeds."""
    return np.searchsorted(np.asarray(cut_points), np.asarray(expected), side="left")


def _qwk(labels, predicted, num_grades) -> float:
    return metrics.quadratic_weighted_kappa(
        metrics.confusion_matrix(labels, predicted, num_grades))


def fit(expected: np.ndarray, labels: np.ndarray, num_grades: int) -> np.ndarray:
    """Cut-points [num_grades - 1] (float64, increasing) that maximise QWK.

    Coordinate search from the rounding cut-points (k - 0.5), each cut-point moved on a
    0.02 grid between its neighbours until no move improves QWK.

    Args:
      expected: [N] expected grades.
      labels: [N] true grades in 0..num_grades-1.
      num_grades: K.

    Raises:
      CutPointError: shapes differ, no examples, or labels out of range.
    """
    expected = np.asarray(expected, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if expected.size != labels.size or labels.size == 0:
        raise CutPointError(f"need N expected grades and N labels, got {expected.size} "
                            f"and {labels.size}")
    if labels.min() < 0 or labels.max() >= num_grades:
        raise CutPointError(f"labels must be in 0..{num_grades - 1}")
    cuts = np.arange(num_grades - 1) + 0.5
    best = _qwk(labels, grades_from_cut_points(expected, cuts), num_grades)
    for _ in range(_MAX_SWEEPS):
        improved = False
        for k in range(cuts.size):
            low = cuts[k - 1] + _STEP if k > 0 else 0.0
            high = cuts[k + 1] - _STEP if k + 1 < cuts.size else num_grades - 1.0
            for value in np.arange(low, high + 1e-9, _STEP):
                trial = cuts.copy()
                trial[k] = value
                score = _qwk(labels, grades_from_cut_points(expected, trial), num_grades)
                if score > best + 1e-12:
                    best, cuts, improved = score, trial, True
        if not improved:
            break
    return cuts


def cross_fitted(expected: np.ndarray, labels: np.ndarray, num_grades: int,
                 seed: int = 0) -> np.ndarray:
    """Grades [N] predicted by cut-points fitted on the other half (stratified by grade)."""
    expected = np.asarray(expected, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    half = grade_offsets.stratified_half(labels, seed)
    predicted = np.empty(labels.size, dtype=np.int64)
    for fit_on in (half, ~half):
        cuts = fit(expected[fit_on], labels[fit_on], num_grades)
        predicted[~fit_on] = grades_from_cut_points(expected[~fit_on], cuts)
    return predicted


def scores(labels: np.ndarray, predicted: np.ndarray, num_grades: int) -> Dict:
    """Accuracy, QWK, MAE and per-grade recall from the confusion matrix."""
    matrix = metrics.confusion_matrix(labels, predicted, num_grades)
    return {
        "accuracy": float(np.trace(matrix) / matrix.sum()),
        "qwk": float(metrics.quadratic_weighted_kappa(matrix)),
        "mae": float(metrics.mean_absolute_error(matrix)),
        "recall": [float(r) for r in metrics.recall_per_grade(matrix)],
    }
