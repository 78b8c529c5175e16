import numpy as np
import pytest

from components import metrics, ordinal_decision


def _separable(cuts, n=400, seed=0):
    """Expected grades uniform on [0, 4] and labels set by `cuts` exactly."""
    expected = np.random.default_rng(seed).uniform(0.0, 4.0, n)
    return expected, np.searchsorted(cuts, expected)


def test_expected_grade_is_the_probability_weighted_grade():
    p = np.array([[1, 0, 0, 0, 0], [0, 0.5, 0, 0.5, 0], [0.2, 0.2, 0.2, 0.2, 0.2]])
    np.testing.assert_allclose(ordinal_decision.expected_grade(p), [0.0, 2.0, 2.0])


def test_a_split_between_one_and_three_becomes_two_not_an_argmax_tie_break():
    expected = ordinal_decision.expected_grade(np.array([[0, 0.49, 0.02, 0.49, 0]]))
    assert ordinal_decision.grades_from_cut_points(expected, [0.5, 1.5, 2.5, 3.5])[0] == 2


def test_fit_finds_shifted_cut_points_that_rounding_misses():
    true_cuts = np.array([0.8, 1.6, 2.4, 3.2])
    expected, labels = _separable(true_cuts)
    rounded = ordinal_decision.grades_from_cut_points(expected, np.arange(4) + 0.5)
    assert np.mean(rounded == labels) < 0.8
    cuts = ordinal_decision.fit(expected, labels, 5)
    assert np.all(np.diff(cuts) > 0)
    np.testing.assert_allclose(cuts, true_cuts, atol=0.05)
    fitted = ordinal_decision.grades_from_cut_points(expected, cuts)
    matrix = metrics.confusion_matrix(labels, fitted)
    assert metrics.quadratic_weighted_kappa(matrix) > 0.99


def test_cross_fitted_predicts_each_half_from_the_other():
    expected, labels = _separable(np.array([0.8, 1.6, 2.4, 3.2]), n=600, seed=1)
    predicted = ordinal_decision.cross_fitted(expected, labels, 5, seed=3)
    assert predicted.shape == labels.shape
    assert np.mean(predicted == labels) > 0.95
    # Noise the halves cannot share: labels independent of the expected grade.
    noise = np.random.default_rng(2).integers(0, 5, expected.size)
    in_sample = ordinal_decision.grades_from_cut_points(
        expected, ordinal_decision.fit(expected, noise, 5))
    crossed = ordinal_decision.cross_fitted(expected, noise, 5, seed=3)
    qwk = lambda p: metrics.quadratic_weighted_kappa(metrics.confusion_matrix(noise, p))  # noqa: E731
    assert qwk(crossed) < qwk(in_sample)


def test_scores_come_from_the_confusion_matrix():
    labels = np.array([0, 0, 1, 2, 4])
    predicted = np.array([0, 1, 1, 2, 2])
    s = ordinal_decision.scores(labels, predicted, 5)
    assert s["accuracy"] == pytest.approx(3 / 5)
    assert s["mae"] == pytest.approx((0 + 1 + 0 + 0 + 2) / 5)
    assert s["recall"][:3] == [0.5, 1.0, 1.0] and s["recall"][4] == 0.0


@pytest.mark.parametrize("expected, labels, message", [
    (np.zeros(3), np.zeros(2, int), "N expected grades"),
    (np.zeros(0), np.zeros(0, int), "N expected grades"),
    (np.zeros(2), np.array([0, 5]), "labels must be in 0..4"),
])
def test_fit_refuses_unusable_inputs(expected, labels, message):
    with pytest.raises(ordinal_decision.CutPointError, match=message):
        ordinal_decision.fit(expected, labels, 5)
