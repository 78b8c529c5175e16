"""Out-of-distribution score: how far an image's backbone features are from training knees.

A classifier always answers with one of its five grades, even for a holiday photo, a chest
film or a blank frame. This module measures, on the pooled backbone features, the
Mahalanobis distance to the nearest grade's training mean under one shared covariance
(class-conditional Gaussians with tied covariance). The covariance is shrunk (Ledoit-Wolf)
because 1280 feature dimensions meet only a few thousand training images. The threshold is
a high percentile of the validation knees' distances, so about (100 - percentile)% of real
validation knees are flagged by construction; everything else is measured.

Input checks that need no model come first, because a feature distance on a small
backbone can place a featureless or mangled image close to the knees (measured: the tiny
synthetic model scored blank frames 0.69 of its threshold). Each is measured by the one
preprocessing definition on the films the classifier sees (`preprocessing.
preprocess_with_checks`, part of the Transform graph) and has a reason code
(features.OOD_REASONS):

- `blank`: the decoded image's pixel standard deviation below BLANK_STD;
- `colour`: mean chroma (max - min over R, G, B) above COLOUR_CHROMA; radiographs are gray
  even when stored as RGB;
- `too_small`: the film's smaller side below MIN_IMAGE_SIDE pixels (a thumbnail);
- `inverted`: polarity (middle minus sides across the bones) below POLARITY_FLOOR: bone
  darker than soft tissue, e.g. a MONOCHROME1 film sent without inversion;
- `rotated`: profile anisotropy below ANISOTROPY_FLOOR: the bones run horizontally, the
  film is turned by 90 or 270 degrees; or, where the Transform graph learned the training
  films' upright sign (features.UPRIGHT_KEY), the vertical asymmetry with that sign below
  UPRIGHT_FLOOR: the film is upside down (turned by 180 degrees). Models built without
  Transform (the small test models) have no UPRIGHT_KEY and do not check it.

Each check is a ratio that is > 1 when it fails. The exported score is the largest of them
and of the feature distance / threshold (`unlike_training_films`), so <= 1 is typical of
validation knees and > 1 means "flagged, do not trust the grade"; the reason output names
every check above 1.
"""

import logging
from typing import Dict

import numpy as np
import tensorflow as tf
from sklearn.covariance import LedoitWolf

from components import features

logger = logging.getLogger(__name__)

_CHUNK = 512  # examples per numpy distance block (keeps [chunk, K, D] small)
BLANK_STD = 0.02  # pixel std (0..1 scale) under which a frame is blank; knees: > 0.1
COLOUR_CHROMA = 0.05  # mean max-min over RGB above which a picture is in colour
# Smaller side (pixels) under which a film is a thumbnail: at 64 px a knee crop's joint
# space is 2-4 px wide; the thumbnails were 8-32 px.
MIN_IMAGE_SIDE = 64
# Polarity and anisotropy (preprocessing._polarity_and_anisotropy) are odd under inversion
# and a quarter turn: the floors sit just below 0, so a featureless film (both 0) passes.
# Measured rates on the real films: docs/model.md, "Input checks".
POLARITY_FLOOR = -0.01
ANISOTROPY_FLOOR = -0.02
# The upright measure is odd under a half turn; on 600 real training films it had median
# 0.061 and 1st percentile 0.018, 0.3 % below this floor.
UPRIGHT_FLOOR = -0.01
# Medians on real knee films; a measure at its median scores 0, at its floor 1.
_POLARITY_TYPICAL = 0.2
_ANISOTROPY_TYPICAL = 0.7
_UPRIGHT_TYPICAL = 0.06


class OodError(ValueError):
    """The features cannot be used to fit the out-of-distribution score."""


def _distances(x: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Minimum over classes of the Mahalanobis distance, numpy, [N]."""
    out = []
    for start in range(0, len(x), _CHUNK):
        diff = x[start:start + _CHUNK, None, :] - means[None]  # [n, K, D]
        # Project with one 2-D matrix product (BLAS) rather than einsum's three-operand
        # loop or a batched matmul: x 30 at D = 1,280 (same distances).
        projected = (diff.reshape(-1, diff.shape[-1]) @ precision).reshape(diff.shape)
        squared = np.einsum("nkd,nkd->nk", projected, diff)
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


def _below_floor(value: tf.Tensor, typical: float, floor: float) -> tf.Tensor:
    """0 at the typical value, 1 at the floor, > 1 below it."""
    return (typical - value) / (typical - floor)


def input_check_ratios(measures: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """The model-free input checks, in the graph, each > 1 when it fails.

    Args:
      measures: float32 [N] tensors keyed by features.INPUT_CHECK_KEYS, as
        `preprocessing.preprocess_with_checks` returns them, and optionally
        features.UPRIGHT_KEY (the Transform graph's; then `rotated` also flags a film
        turned by 180 degrees). Other keys are ignored.

    Returns:
      {reason code (features.REASON_*): float32 [N]}.

    Raises:
      KeyError: a measure is missing.
    """
    rotated = _below_floor(measures[features.ANISOTROPY_KEY], _ANISOTROPY_TYPICAL,
                           ANISOTROPY_FLOOR)
    if features.UPRIGHT_KEY in measures:
        # Only for a film whose bones run vertically: turned by a quarter, the upright
        # measure reads across the bones and means nothing (anisotropy flags it anyway).
        upside_down = tf.where(measures[features.ANISOTROPY_KEY] >= 0,
                               _below_floor(measures[features.UPRIGHT_KEY], _UPRIGHT_TYPICAL,
                                            UPRIGHT_FLOOR), 0.0)
        rotated = tf.maximum(rotated, upside_down)
    return {
        features.REASON_BLANK: BLANK_STD / tf.maximum(measures[features.PIXEL_STD_KEY], 1e-6),
        features.REASON_COLOUR: measures[features.CHROMA_KEY] / COLOUR_CHROMA,
        features.REASON_TOO_SMALL: MIN_IMAGE_SIDE / tf.maximum(
            measures[features.MIN_SIDE_KEY], 1.0),
        features.REASON_INVERTED: _below_floor(measures[features.POLARITY_KEY],
                                               _POLARITY_TYPICAL, POLARITY_FLOOR),
        features.REASON_ROTATED: rotated,
    }


def input_check_score(measures: Dict[str, tf.Tensor]) -> tf.Tensor:
    """The largest input-check ratio, float32 [N]: > 1 when any check fails.

    Args and errors as `input_check_ratios`.
    """
    return tf.reduce_max(tf.stack(list(input_check_ratios(measures).values()), axis=1),
                         axis=1)


def judge(ratios: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """The out-of-distribution outputs of the serving signatures from check ratios.

    Args:
      ratios: {reason code from features.OOD_REASONS: float32 [N], > 1 when failed}, e.g.
        `input_check_ratios(...)` plus the feature distance under
        features.REASON_UNLIKE_TRAINING.

    Returns:
      {OOD_SCORE_OUTPUT: float32 [N], the largest ratio;
       OOD_FLAG_OUTPUT: bool [N], score > 1;
       OOD_REASON_OUTPUT: string [N], the codes of the ratios > 1 joined by "," in the order
         of features.OOD_REASONS, b"" when none}.

    Raises:
      ValueError: a code that is not in features.OOD_REASONS, or no ratios.
    """
    unknown = set(ratios) - set(features.OOD_REASONS)
    if unknown or not ratios:
        raise ValueError(f"check codes must be some of {features.OOD_REASONS}, got "
                         f"{sorted(ratios)}")
    codes = [code for code in features.OOD_REASONS if code in ratios]
    stacked = tf.stack([ratios[code] for code in codes], axis=1)  # [N, K]
    failed = stacked > 1.0
    names = tf.broadcast_to(tf.constant(codes), tf.shape(stacked))
    reasons = tf.strings.reduce_join(tf.ragged.boolean_mask(names, failed), axis=1,
                                     separator=",")
    score = tf.reduce_max(stacked, axis=1)
    return {
        features.OOD_SCORE_OUTPUT: score,
        features.OOD_FLAG_OUTPUT: score > 1.0,
        features.OOD_REASON_OUTPUT: reasons,
    }


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
