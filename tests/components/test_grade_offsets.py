import numpy as np
import pytest
import tensorflow as tf

from components import grade_offsets


def _under_called_grade(n=600, seed=0):
    """Three grades; the network scores grade 1 too low, so it is rarely the argmax."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=n)
    logits = rng.normal(0.0, 1.0, size=(n, 3))
    logits[np.arange(n), labels] += 2.0
    logits[:, 1] -= 2.5
    return logits, labels


def test_offsets_lift_an_under_called_grade_to_the_floor():
    logits, labels = _under_called_grade()
    before = grade_offsets.recalls(logits.argmax(1), labels, 3)
    assert before[1] < 0.3

    offsets = grade_offsets.fit(logits, labels, recall_floor=0.6)

    after = grade_offsets.recalls((logits + offsets).argmax(1), labels, 3)
    assert offsets[0] == 0.0 and offsets[1] > 1.0
    assert after.min() >= 0.6


def test_offsets_keep_accuracy_when_the_floor_is_already_met():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, size=300)
    logits = rng.normal(0.0, 0.5, size=(300, 3))
    logits[np.arange(300), labels] += 3.0
    offsets = grade_offsets.fit(logits, labels, recall_floor=0.5)
    assert np.mean((logits + offsets).argmax(1) == labels) >= np.mean(
        logits.argmax(1) == labels)


def test_of_equally_good_offsets_the_smallest_is_chosen():
    """Grade-0 films the network calls grade 2 by 0.95 logits and grade-2 films it calls
    by 5: every grade-2 offset from -1.0 down to -3.0 gets all of them right."""
    labels = np.array([0] * 20 + [2] * 20)
    logits = np.zeros((40, 3))
    logits[:20, 2] = 0.95
    logits[20:, 2] = 5.0
    offsets = grade_offsets.fit(logits, labels, recall_floor=0.0)
    assert offsets[2] == pytest.approx(-1.0)
    assert offsets[1] == 0.0
    assert np.all((logits + offsets).argmax(1) == labels)


def test_cross_fitted_estimate_scores_unseen_halves():
    logits, labels = _under_called_grade(seed=2)
    estimate = grade_offsets.cross_fitted(logits, labels, recall_floor=0.6)
    assert 0.0 < estimate["accuracy"] <= 1.0
    # Offsets fitted on one half still help the other half's grade 1.
    assert estimate["min_recall"] > grade_offsets.recalls(logits.argmax(1), labels, 3).min()


def test_cross_fitted_one_halving_fits_each_half_and_scores_the_other():
    logits, labels = _under_called_grade(seed=3)
    half = grade_offsets.stratified_half(labels, seed=5)
    predicted = np.empty(labels.size, dtype=np.int64)
    for fit_on in (half, ~half):
        offsets = grade_offsets.fit(logits[fit_on], labels[fit_on], 0.6)
        predicted[~fit_on] = (logits[~fit_on] + offsets).argmax(1)

    estimate = grade_offsets.cross_fitted(logits, labels, 0.6, seed=5, halvings=1)

    assert estimate["accuracy"] == pytest.approx(np.mean(predicted == labels))
    assert estimate["min_recall"] == pytest.approx(
        grade_offsets.recalls(predicted, labels, 3).min())
    assert estimate["accuracy_sd"] == 0.0


def test_cross_fitted_averages_consecutive_halvings():
    logits, labels = _under_called_grade(seed=4)
    single = [grade_offsets.cross_fitted(logits, labels, 0.6, seed=seed, halvings=1)
              for seed in (7, 8, 9)]

    estimate = grade_offsets.cross_fitted(logits, labels, 0.6, seed=7, halvings=3)

    accuracies = [s["accuracy"] for s in single]
    assert len(set(accuracies)) > 1  # the halvings differ, so the mean is a real average
    assert estimate["halvings"] == 3
    assert estimate["accuracy"] == pytest.approx(np.mean(accuracies))
    assert estimate["accuracy_sd"] == pytest.approx(np.std(accuracies))
    assert estimate["min_recall"] == pytest.approx(np.mean([s["min_recall"] for s in single]))


def test_cross_fitted_refuses_no_halvings():
    logits, labels = _under_called_grade()
    with pytest.raises(grade_offsets.OffsetError, match="halvings"):
        grade_offsets.cross_fitted(logits, labels, 0.6, halvings=0)


@pytest.mark.parametrize("logits, labels, floor, message", [
    (np.zeros((3, 5)), np.zeros(2), 0.5, "N labels"),
    (np.zeros((0, 5)), np.zeros(0), 0.5, "N labels"),
    (np.zeros((3, 5)), np.zeros(3), 1.5, "recall_floor"),
])
def test_bad_inputs_are_named(logits, labels, floor, message):
    with pytest.raises(grade_offsets.OffsetError, match=message):
        grade_offsets.fit(logits, labels, floor)


def test_graph_module_adds_the_offsets():
    module = grade_offsets.GradeOffsets([0.0, 1.5, -0.5])
    out = module(tf.constant([[1.0, 1.0, 1.0]])).numpy()
    np.testing.assert_allclose(out, [[1.0, 2.5, 0.5]])
