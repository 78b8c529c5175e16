"""Out-of-distribution score: how far an image's backbone features are from training knees.

A classifier always answers with one of its five grades, even for a holiday photo, a chest
film or a blank frame. This module measures, on the pooled backbone features, the
Mahalanobis distance to the nearest grade's training mean under one shared covariance
(class-conditional Gaussians with tied covariance). The covariance is shrunk (Ledoit-Wolf)
because 1280 feature dimensions meet only a few thousand training images. The threshold is
a high percentile of the validation knees' distances, so about (100 - percentile)% of real
validation knees are flagged by construction; everything else is measured.

Two input checks that need no model come first, because a feature distance on a small
backbone can place a featureless image close to the knees (measured: the tiny synthetic
model scored blank frames 0.69 of its threshold): a blank frame (the decoded image's pixel
standard deviation below BLANK_STD) and a colour picture (mean chroma, max - min over
R, G, B, above COLOUR_CHROMA; radiographs are gray even when stored as RGB). Both are
measured by the one preprocessing definition on the films the classifier sees
(`preprocessing.preprocess_with_checks`, part of the Transform graph).

Exported score: the largest of distance / threshold, BLANK_STD / std and
chroma / COLOUR_CHROMA, so ≤ 1 is typical of validation knees and > 1 means "flagged, do
not trust the grade".
"""

import logging

import numpy as np
import tensorflow as tf
from sklearn.covariance import LedoitWolf

logger = logging.getLogger(__name__)

_CHUNK = 512  # examples per numpy distance block (keeps [chunk, K, D] small)
BLANK_STD = 0.02  # pixel std (0..1 scale) under which a frame is blank; knees: > 0.1
COLOUR_CHROMA = 0.05  # mean max-min over RGB above which a picture is in colour


class OodError(ValueError):
    """The features cannot be used to fit the out-of-distribution score."""


def _distances(x: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Minimum over classes of the Mahalanobis distance, numpy, [N]."""
    out = []
    for start in range(0, len(x), _CHUNK):
        diff = x[start:start + _CHUNK, None, :] - means[None]  # [n, K, D]
        squared = np.einsum("nkd,de,nke->nk", diff, precision, diff)
        out.append(np.sqrt(np.maximum(squared.min(axis=1), 0.0)))
    return np.concatenate(out) if out else np.zeros([0])


class FeatureDistance(tf.Module):
    """The fitted score as part of the exported graph: features [N, D] -> score [N]."""

    def __init__(self, means: np.ndarray, precision: np.ndarray, threshold: float,
                 name: str = "feature_distance"):
        super().__init__(name=name)
        if not threshold > 0:
            raise OodError(f"threshold must be positive, got {threshold}")
        self.means = tf.Variable(means.astype(np.float32), trainable=False, name="means")
        self.precision = tf.Variable(precision.astype(np.float32), trainable=False,
                                     name="precision")
        self.threshold = tf.Variable(float(threshold), trainable=False, name="threshold")

    def distance(self, features: tf.Tensor) -> tf.Tensor:
        """Mahalanobis distance to the nearest class mean, [N]."""
        diff = features[:, None, :] - self.means[None]  # [N, K, D]
        projected = tf.einsum("nkd,de->nke", diff, self.precision)
        squared = tf.reduce_sum(projected * diff, axis=-1)
        return tf.sqrt(tf.nn.relu(tf.reduce_min(squared, axis=1)))

    def __call__(self, features: tf.Tensor) -> tf.Tensor:
        """Distance / threshold: > 1 means out of distribution."""
        return self.distance(features) / self.threshold


def input_check_score(pixel_std: tf.Tensor, chroma: tf.Tensor) -> tf.Tensor:
    """Blank-frame and colour-picture checks, in the graph.

    Args:
      pixel_std: float32 [N], gray pixel standard deviation of the decoded film (0..1
        scale), as `preprocessing.preprocess_with_checks` measures it.
      chroma: float32 [N], its mean max - min over R, G, B.

    Returns:
      float32 [N]: > 1 when the image is blank or in colour.
    """
    return tf.maximum(BLANK_STD / tf.maximum(pixel_std, 1e-6), chroma / COLOUR_CHROMA)


def fit(train_features: np.ndarray, train_labels: np.ndarray, eval_features: np.ndarray,
        percentile: float) -> FeatureDistance:
    """Class means and shrunk shared covariance from training; threshold from validation.

    Args:
      train_features: [N, D] pooled backbone features of the training images (no
        augmentation).
      train_labels: [N] grades.
      eval_features: [M, D] the same for the validation images.
      percentile: validation distance percentile used as the threshold (e.g. 99).

    Returns:
      The fitted FeatureDistance.
    """
    x = np.asarray(train_features, dtype=np.float64)
    labels = np.asarray(train_labels).reshape(-1)
    if x.ndim != 2 or len(x) != len(labels) or len(x) < 2:
        raise OodError(f"need [N, D] training features with N labels, got {x.shape} and "
                       f"{labels.shape}")
    if len(eval_features) == 0:
        raise OodError("no validation features to set the threshold on")
    if not 0 < percentile <= 100:
        raise OodError(f"percentile must be in (0, 100], got {percentile}")
    classes = np.unique(labels)
    means = np.stack([x[labels == c].mean(axis=0) for c in classes])
    centred = x - means[np.searchsorted(classes, labels)]
    estimator = LedoitWolf(assume_centered=True).fit(centred)
    precision = estimator.precision_
    eval_distance = _distances(np.asarray(eval_features, np.float64), means, precision)
    train_distance = _distances(x, means, precision)
    threshold = float(np.percentile(eval_distance, percentile))
    if not threshold > 0:
        raise OodError("validation distances are all zero: features carry no information")
    logger.info("OOD distance: shrinkage %.3f, train median %.2f, validation median %.2f, "
                "threshold (p%g of validation) %.2f", estimator.shrinkage_,
                float(np.median(train_distance)), float(np.median(eval_distance)),
                percentile, threshold)
    return FeatureDistance(means, precision, threshold)
