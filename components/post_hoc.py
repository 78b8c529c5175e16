"""Post-hoc fits on the trained model: grade offsets, temperature scaling, OOD score.

They run on the validation split after training (`fit`) and are attached to the model,
so that components/export.py puts them into the SavedModel's signatures.
"""

import logging
import time
from typing import Dict

import numpy as np
import tensorflow as tf
from scipy.special import softmax

from components import calibration, features, grade_offsets, ood
from components.model import features_and_logits, with_tta
from components.model_config import ModelConfig

keras = tf.keras
logger = logging.getLogger(__name__)


def collect(model: keras.Model, dataset: tf.data.Dataset, tta: bool = False):
    """Pooled features, logits as served (TTA-averaged when `tta`), labels and the plain
    logits of a whole dataset, as numpy arrays."""
    def forward_fn(images):
        _, pooled, logits = features_and_logits(model, images)
        return pooled, logits, with_tta(model, images, logits, tta)

    forward = tf.function(forward_fn)
    pooled, plain, served, labels = [], [], [], []
    for batch, batch_labels in dataset:
        p, l, s = forward(batch[features.TRANSFORMED_IMAGE_KEY])
        pooled.append(p.numpy())
        plain.append(l.numpy())
        served.append(s.numpy())
        labels.append(tf.reshape(batch_labels, [-1]).numpy())
    return (np.concatenate(pooled), np.concatenate(served), np.concatenate(labels),
            np.concatenate(plain))


def fit(model: keras.Model, config: ModelConfig, train_ds: tf.data.Dataset,
                 eval_ds: tf.data.Dataset) -> Dict:
    """Fits the grade offsets, temperature scaling and the out-of-distribution score.

    All three are attached to `model` (`grade_offsets`, `temperature_scaling`,
    `feature_distance`) so that `export` puts them into the SavedModel's signatures. The
    logits they are fitted on are the served ones (TTA-averaged when `config.tta`).

    Returns:
      Figures for the training record: validation accuracy with and without TTA and
      offsets, the offsets and their cross-fitted estimate (mean and standard deviation
      over ten random halvings of the validation split), temperature, validation NLL/ECE
      before and after calibration, OOD threshold and the share of images flagged.
    """
    start = time.perf_counter()
    train_pooled, _, train_labels, _ = collect(model, train_ds)
    eval_pooled, eval_logits, eval_labels, eval_plain = collect(model, eval_ds, config.tta)
    stats = {
        "val_accuracy_plain": float(np.mean(eval_plain.argmax(1) == eval_labels)),
        "val_accuracy_tta": (float(np.mean(eval_logits.argmax(1) == eval_labels))
                             if config.tta else None),
    }
    offsets = np.zeros(features.NUM_GRADES)
    if config.recall_floor > 0:
        offsets = grade_offsets.fit(eval_logits, eval_labels, config.recall_floor)
        estimate = grade_offsets.cross_fitted(eval_logits, eval_labels, config.recall_floor,
                                              seed=config.seed)
        adjusted = (eval_logits + offsets).argmax(1)
        stats.update({
            "val_accuracy_offsets": float(np.mean(adjusted == eval_labels)),
            "val_recall_offsets": grade_offsets.recalls(
                adjusted, eval_labels, features.NUM_GRADES).tolist(),
            "val_accuracy_offsets_cross_fitted": estimate["accuracy"],
            "val_accuracy_offsets_cross_fitted_sd": estimate["accuracy_sd"],
            "val_min_recall_offsets_cross_fitted": estimate["min_recall"],
        })
    model.grade_offsets = grade_offsets.GradeOffsets(offsets)
    eval_logits = eval_logits + offsets
    temperature = (calibration.fit_temperature(eval_logits, eval_labels)
                   if config.calibrate else 1.0)
    model.temperature_scaling = calibration.TemperatureScaling(temperature)
    distance = ood.fit(train_pooled, train_labels, eval_pooled, config.ood_percentile)
    model.feature_distance = distance
    stats.update({
        "grade_offsets": offsets.tolist(),
        "temperature": temperature,
        "val_nll_uncalibrated": calibration.negative_log_likelihood(eval_logits, eval_labels),
        "val_nll": calibration.negative_log_likelihood(eval_logits, eval_labels, temperature),
        "val_ece_uncalibrated": calibration.expected_calibration_error(
            softmax(eval_logits, axis=1), eval_labels),
        "val_ece": calibration.expected_calibration_error(
            softmax(eval_logits / temperature, axis=1), eval_labels),
        "ood_threshold": float(distance.threshold.numpy()),
        "ood_feature_flagged_val": float(np.mean(distance(eval_pooled).numpy() > 1.0)),
        "ood_feature_flagged_train": float(np.mean(distance(train_pooled).numpy() > 1.0)),
        "post_hoc_seconds": time.perf_counter() - start,
    })
    logger.info("post-hoc fit: %s", stats)
    return stats
