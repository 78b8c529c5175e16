"""Temperature scaling and the expected calibration error (numpy and the TFMA metric)."""

import numpy as np
import pytest
import tensorflow as tf

from components import calibration, metrics


def _ece_by_hand(probabilities, labels, bins=10):
    """Straight from the definition, one bin at a time."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    total = 0.0
    for b in range(bins):
        low, high = b / bins, (b + 1) / bins
        inside = (confidence >= low) & ((confidence < high) | ((b == bins - 1)
                                                                & (confidence <= high)))
        if inside.any():
            total += inside.sum() / len(labels) * abs(correct[inside].mean()
                                                      - confidence[inside].mean())
    return total


def _sample(n=600, temperature=2.5, seed=0):
    """Labels drawn from softmax(true_logits); the model reports them sharpened by T."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(0, 1.5, (n, 5))
    p = np.exp(true_logits) / np.exp(true_logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(5, p=row) for row in p])
    return true_logits * temperature, labels


def test_ece_matches_a_bin_by_bin_computation():
    logits, labels = _sample()
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert calibration.expected_calibration_error(p, labels) == pytest.approx(
        _ece_by_hand(p, labels), abs=1e-12)


def test_ece_of_confident_right_and_wrong_answers():
    p = np.array([[1.0, 0, 0, 0, 0], [0, 1.0, 0, 0, 0], [0.5, 0.5, 0, 0, 0]])
    # Bin 9: conf 1, 1 of 2 right -> |0.5 - 1| * 2/3; bin 5: conf 0.5, right -> 0.5 * 1/3.
    assert calibration.expected_calibration_error(p, [0, 0, 0]) == pytest.approx(0.5)


def test_keras_ece_metric_equals_numpy_and_merges_by_addition():
    logits, labels = _sample(seed=1)
    p = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)
    expected = calibration.expected_calibration_error(p, labels)

    # Two metrics over two halves, merged the way TFMA merges: add the state.
    halves = [metrics.ExpectedCalibrationError() for _ in range(2)]
    for metric, part_p, part_y in zip(halves, np.array_split(p, 2), np.array_split(labels, 2)):
        for batch_p, batch_y in zip(np.array_split(part_p, 3), np.array_split(part_y, 3)):
            metric.update_state(batch_y[:, None], tf.constant(batch_p))
    merged = metrics.ExpectedCalibrationError()
    for state, a, b in zip(merged.variables, halves[0].variables, halves[1].variables):
        state.assign(a + b)
    assert float(merged.result()) == pytest.approx(expected, abs=1e-6)
    assert float(merged.result()) > 0.05  # over-confident by construction
    merged.reset_state()
    assert float(merged.result()) == 0.0


def test_ece_metric_round_trips_through_its_config():
    clone = metrics.ExpectedCalibrationError.from_config(
        metrics.ExpectedCalibrationError(name="ece", bins=15).get_config())
    assert clone.bins == 15 and clone.name == "ece"


def test_fitted_temperature_recovers_the_sharpening_and_lowers_ece():
    logits, labels = _sample(n=3000, temperature=2.5, seed=2)
    temperature = calibration.fit_temperature(logits, labels)
    assert temperature == pytest.approx(2.5, rel=0.15)
    softmax = lambda z: np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)  # noqa: E731
    before = calibration.expected_calibration_error(softmax(logits), labels)
    after = calibration.expected_calibration_error(softmax(logits / temperature), labels)
    assert after < before / 2
    assert calibration.negative_log_likelihood(logits, labels, temperature) < \
        calibration.negative_log_likelihood(logits, labels)


def test_temperature_scaling_keeps_the_argmax():
    logits, _ = _sample(n=50)
    scaled = calibration.TemperatureScaling(3.0)(tf.constant(logits, tf.float32)).numpy()
    np.testing.assert_array_equal(scaled.argmax(axis=1), logits.argmax(axis=1))
    np.testing.assert_allclose(scaled, logits / 3.0, rtol=1e-5)


@pytest.mark.parametrize("logits, labels, message", [
    (np.zeros((3, 5)), [0, 1], "N labels"),
    (np.zeros((2, 5)), [0, 5], "outside"),
    (np.zeros((0, 5)), [], "no examples"),
])
def test_bad_calibration_input_is_named(logits, labels, message):
    with pytest.raises(calibration.CalibrationError, match=message):
        calibration.fit_temperature(logits, labels)


def test_non_positive_temperature_is_refused():
    with pytest.raises(calibration.CalibrationError, match="positive"):
        calibration.TemperatureScaling(0.0)
