"""Per-grade decision offsets: move the argmax toward grades the network under-calls.

A network trained on imbalanced grades calls the rare, ambiguous grade 1 too seldom even
with class weights. Adding one offset per grade to the logits before the argmax (threshold
moving, equivalent to changing the class priors) trades a little accuracy on the common
grades for recall on the neglected one. The offsets are fitted on the validation split:
the largest accuracy among offsets that give every grade at least `recall_floor` recall,
or, when no offsets reach the floor, the best smallest recall. Temperature scaling is fitted
after them, so the served probabilities stay calibrated and their argmax is the adjusted
grade.

Fitting and measuring on the same split is optimistic; `cross_fitted` estimates by how much
(fit on one half of the validation split, score on the other, and vice versa, averaged
over several random halvings).
"""

from typing import Dict, Tuple

import numpy as np
import tensorflow as tf

# Offsets are searched on this grid, in logit units, one grade at a time, smallest
# magnitude first: where several values score the same on the validation films (a plateau
# between two films' margins), the smallest change to the network's decision is kept
# rather than whichever value the search met first. In ascending order an adopted model
# got -3.0, the grid's edge, for grade 4 where -1.0 scored the same (docs/model.md,
# round 17).
_GRID = np.linspace(-3.0, 3.0, 61)
_SEARCH_ORDER = _GRID[np.argsort(np.abs(_GRID), kind="stable")]
_MAX_SWEEPS = 10


class OffsetError(ValueError):
    """The inputs cannot be used to fit offsets."""


def recalls(predicted: np.ndarray, labels: np.ndarray, num_grades: int) -> np.ndarray:
    """Recall of each grade (0 for a grade absent from `labels`)."""
    hits = np.bincount(labels[predicted == labels], minlength=num_grades)
    totals = np.bincount(labels, minlength=num_grades)
    return np.divide(hits, totals, out=np.zeros(num_grades), where=totals > 0)


def _score(logits, labels, present, offsets, recall_floor) -> Tuple[float, float]:
    predicted = np.argmax(logits + offsets, axis=1)
    worst = recalls(predicted, labels, logits.shape[1])[present].min()
    # Reaching the floor first, then accuracy: a lexicographic objective.
    return min(worst, recall_floor), float(np.mean(predicted == labels))


def fit(logits: np.ndarray, labels: np.ndarray, recall_floor: float) -> np.ndarray:
    """Offsets [K] (grade 0's is 0) by coordinate search on a grid of ±3 logits.

    Each sweep tries every grid value for each grade in turn and keeps a value only when
    it scores strictly better, trying values in order of magnitude, so of equally good
    offsets the smallest is returned.

    Args:
      logits: [N, K] validation logits.
      labels: [N] validation grades.
      recall_floor: the least recall wanted for every grade present in `labels`.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if logits.ndim != 2 or logits.shape[0] != labels.size or labels.size == 0:
        raise OffsetError(f"need [N, K] logits and N labels, got {logits.shape} and "
                          f"{labels.shape}")
    if not 0.0 <= recall_floor <= 1.0:
        raise OffsetError(f"recall_floor must be in [0, 1], got {recall_floor}")
    # Grades absent from `labels` have no recall to hold to the floor.
    present = np.bincount(labels, minlength=logits.shape[1]) > 0
    offsets = np.zeros(logits.shape[1])
    best = _score(logits, labels, present, offsets, recall_floor)
    for _ in range(_MAX_SWEEPS):
        improved = False
        for grade in range(1, logits.shape[1]):
            for value in _SEARCH_ORDER:
                trial = offsets.copy()
                trial[grade] = value
                score = _score(logits, labels, present, trial, recall_floor)
                if score > best:
                    best, offsets, improved = score, trial, True
        if not improved:
            break
    return offsets


def stratified_half(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """A random half of every grade, for cross-fitting on the validation split.

    Args:
      labels: int [N] grades.
      seed: seed of numpy's default generator (same seed, same half).

    Returns:
      bool [N], True for the floor(n / 2) chosen examples of each grade with n examples.
    """
    rng = np.random.default_rng(seed)
    half = np.zeros(labels.size, dtype=bool)
    for grade in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == grade))
        half[members[: members.size // 2]] = True
    return half


def cross_fitted(logits: np.ndarray, labels: np.ndarray, recall_floor: float,
                 seed: int = 0, halvings: int = 10) -> Dict[str, float]:
    """Accuracy and smallest grade recall of offsets scored on data they were not fitted on.

    The validation split is halved at random (stratified by grade); offsets fitted on each
    half predict the other, and the two halves' predictions are scored together. One
    halving moves the estimate by up to a point on 826 films (which films land in which
    half depends on their order), so the figures are means over `halvings` halvings,
    seeded `seed`, `seed + 1`, ...

    Args:
      logits: [N, K] validation logits.
      labels: [N] validation grades.
      recall_floor: as for `fit`.
      seed: seed of the first halving.
      halvings: how many random halvings to average over (>= 1).

    Returns:
      {"accuracy": mean accuracy, "accuracy_sd": its standard deviation over the halvings,
       "min_recall": mean smallest recall of a grade present, "halvings": halvings}.

    Raises:
      OffsetError: bad logits, labels or floor (from `fit`), or `halvings` < 1.
    """
    if halvings < 1:
        raise OffsetError(f"halvings must be at least 1, got {halvings}")
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    accuracies, min_recalls = [], []
    for index in range(halvings):
        half = stratified_half(labels, seed + index)
        predicted = np.empty(labels.size, dtype=np.int64)
        for fit_on in (half, ~half):
            offsets = fit(logits[fit_on], labels[fit_on], recall_floor)
            predicted[~fit_on] = np.argmax(logits[~fit_on] + offsets, axis=1)
        grade_recalls = recalls(predicted, labels, logits.shape[1])
        accuracies.append(np.mean(predicted == labels))
        min_recalls.append(grade_recalls[np.bincount(labels) > 0].min())
    return {"accuracy": float(np.mean(accuracies)), "accuracy_sd": float(np.std(accuracies)),
            "min_recall": float(np.mean(min_recalls)), "halvings": halvings}


class GradeOffsets(tf.Module):
    """Adds the fitted per-grade offsets to the logits inside the exported graph."""

    def __init__(self, offsets, name: str = "grade_offsets"):
        super().__init__(name=name)
        self.offsets = tf.Variable(np.asarray(offsets, dtype=np.float32), trainable=False,
                                   name="offsets")

    def __call__(self, logits: tf.Tensor) -> tf.Tensor:
        return logits + self.offsets
