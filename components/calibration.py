"""Temperature scaling and the expected calibration error (numpy reference).

A network trained with cross-entropy is usually over-confident on data it has not seen.
Temperature scaling divides the logits by one positive scalar T, fitted after training by
minimising the negative log-likelihood of the validation split. Dividing by T never
changes the argmax, so grades, accuracy, QWK and recall are untouched; only the served
probabilities (and the expected grade) become closer to observed frequencies.
"""

import logging
from typing import Tuple

import numpy as np
import tensorflow as tf
from scipy import optimize

logger = logging.getLogger(__name__)

ECE_BINS = 10
# Wide enough for any sane network; the search is on log T, bounded so that a degenerate
# validation split (one class, perfectly separated) cannot drive T to 0 or infinity.
_LOG_T_BOUNDS = (np.log(0.05), np.log(20.0))


class CalibrationError(ValueError):
    """The inputs cannot be used to fit or measure calibration."""


def _check(logits_or_probabilities: np.ndarray, labels: np.ndarray) -> Tuple[np.ndarray,
                                                                             np.ndarray]:
    values = np.asarray(logits_or_probabilities, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if values.ndim != 2 or values.shape[0] != labels.shape[0]:
        raise CalibrationError(f"need [N, K] scores and N labels, got {values.shape} and "
                               f"{labels.shape}")
    if labels.size == 0:
        raise CalibrationError("no examples to calibrate on")
    if labels.min() < 0 or labels.max() >= values.shape[1]:
        raise CalibrationError(f"labels outside 0..{values.shape[1] - 1}")
    return values, labels


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray,
                            temperature: float = 1.0) -> float:
    """Mean -log softmax(logits / T)[label]."""
    logits, labels = _check(logits, labels)
    scaled = logits / temperature
    scaled = scaled - scaled.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(scaled).sum(axis=1))
    return float(np.mean(log_norm - scaled[np.arange(labels.size), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T > 0 minimising the validation NLL of softmax(logits / T).

    Args:
      logits: [N, K] pre-softmax scores of the validation examples.
      labels: [N] integer classes.

    Returns:
      T (1.0 means the model was already calibrated in the NLL sense).
    """
    logits, labels = _check(logits, labels)
    result = optimize.minimize_scalar(
        lambda log_t: negative_log_likelihood(logits, labels, float(np.exp(log_t))),
        bounds=_LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-4})
    temperature = float(np.exp(result.x))
    logger.info("temperature %.4f: validation NLL %.4f -> %.4f", temperature,
                negative_log_likelihood(logits, labels),
                negative_log_likelihood(logits, labels, temperature))
    return temperature


def confidence_bins(confidence: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """Bin index of each top-class confidence: [i/B, (i+1)/B), the last bin closed at 1."""
    return np.minimum(np.floor(np.asarray(confidence) * bins), bins - 1).astype(np.int64)


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray,
                               bins: int = ECE_BINS) -> float:
    """ECE: sum over equal-width confidence bins of |accuracy - confidence| * share.

    Confidence is the top-class probability, accuracy whether that class is the label.
    """
    probabilities, labels = _check(probabilities, labels)
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == labels).astype(np.float64)
    index = confidence_bins(confidence, bins)
    gap = (np.bincount(index, weights=correct, minlength=bins)
           - np.bincount(index, weights=confidence, minlength=bins))
    return float(np.abs(gap).sum() / labels.size)


class TemperatureScaling(tf.Module):
    """Divides logits by the fitted temperature inside the exported graph."""

    def __init__(self, temperature: float, name: str = "temperature_scaling"):
        super().__init__(name=name)
        if not temperature > 0:
            raise CalibrationError(f"temperature must be positive, got {temperature}")
        self.temperature = tf.Variable(float(temperature), trainable=False,
                                       dtype=tf.float32, name="temperature")

    def __call__(self, logits: tf.Tensor) -> tf.Tensor:
        return logits / self.temperature
