"""SavedModel export: the serving signatures (bytes, tf.Example, Grad-CAM) and the
training record stored beside them in assets.extra/."""

import json
import os
from typing import Callable, Dict, List

import tensorflow as tf

from components import features, ood
from components.model_config import HEATMAP_METHODS, ModelConfig
from components.model import (features_and_logits, tapped_backbone,
                              tapped_features_and_logits, with_tta)

keras = tf.keras

_HISTORY_FILE = "training_history.json"

GRADCAM, GRADCAM_PLUS_PLUS, LAYERCAM = HEATMAP_METHODS
# The served heatmap unless the configuration chooses another (`ModelConfig.heatmap_*`):
# chosen on round 3's real-data model by benchmarks/gradcam_location.py (docs/model.md,
# "Heatmap"). MobileNetV2 layer names do not depend on its width.
HEATMAP_LAYER = ModelConfig.heatmap_layer
HEATMAP_METHOD = ModelConfig.heatmap_method


def class_activation_map(activations: tf.Tensor, gradients: tf.Tensor,
                         method: str = GRADCAM) -> tf.Tensor:
    """Class activation map of one layer from its activations and the score's gradients.

    Grad-CAM (Selvaraju et al. 2017) weighs each channel by its spatially averaged
    gradient. Grad-CAM++ (Chattopadhay et al. 2018) weighs it by the positive gradients
    only, each scaled by the paper's closed-form alpha for an exponential of the score:
    alpha = g^2 / (2 g^2 + sum(A) g^3), which lets a few strong locations of a channel
    count as much as one spread-out region. LayerCAM (Jiang et al. 2021) weighs every
    location of every channel by its own positive gradient instead of one weight per
    channel, which keeps the detail of earlier, finer layers.

    Args:
      activations: float32 [N, h, w, C], a layer's output.
      gradients: float32 [N, h, w, C], d(score)/d(activations).
      method: one of HEATMAP_METHODS.

    Returns:
      float32 [N, h, w] >= 0: ReLU of the weighted sum of the activations' channels.

    Raises:
      ValueError: unknown `method`.
    """
    if method == GRADCAM:
        weights = tf.reduce_mean(gradients, axis=[1, 2], keepdims=True)
    elif method == GRADCAM_PLUS_PLUS:
        squared = tf.square(gradients)
        spatial_sum = tf.reduce_sum(activations, axis=[1, 2], keepdims=True)
        alpha = tf.math.divide_no_nan(squared, 2.0 * squared + spatial_sum * squared * gradients)
        weights = tf.reduce_sum(alpha * tf.nn.relu(gradients), axis=[1, 2], keepdims=True)
    elif method == LAYERCAM:
        weights = tf.nn.relu(gradients)
    else:
        raise ValueError(f"heatmap method must be one of {HEATMAP_METHODS}, got {method!r}")
    return tf.nn.relu(tf.reduce_sum(weights * activations, axis=-1))


def heatmap(cam: tf.Tensor, size) -> tf.Tensor:
    """A class activation map [N, h, w] -> float32 [N, size...] in [0, 1], peak 1.

    Bilinear upsampling to `size` (height, width: the model's input), then each map divided
    by its maximum; an all-zero map stays zero.
    """
    cam = tf.image.resize(cam[..., None], size, method="bilinear")[..., 0]
    return tf.math.divide_no_nan(cam, tf.reduce_max(cam, axis=[1, 2], keepdims=True))


def grade_heatmap(model: keras.Model, tapped: keras.Model, images: tf.Tensor,
                  decide: Callable[[tf.Tensor, tf.Tensor], Dict[str, tf.Tensor]],
                  method: str = HEATMAP_METHOD):
    """The outputs `decide` returns and the heatmap of the grade among them.

    Args:
      model: the trained Keras model (`components.model.build_model`).
      tapped: `tapped_backbone(model, [layer])`, the layer the heatmap is computed on.
      images: float32 [N, S, S, 1], the Transform graph's model input.
      decide: (pooled features [N, D], logits [N, K]) -> outputs holding
        features.GRADE_OUTPUT int64 [N]; not differentiated.
      method: one of HEATMAP_METHODS.

    Returns:
      (the outputs of `decide`, heatmap float32 [N, S, S] in [0, 1]): `method` on the
      tapped layer for the logit of the returned grade, of the images as given.
    """
    with tf.GradientTape() as tape:
        (activations,), pooled, logits = tapped_features_and_logits(model, tapped, images)
        with tape.stop_recording():
            result = decide(pooled, logits)
        score = tf.gather(logits, result[features.GRADE_OUTPUT], axis=1, batch_dims=1)
    cam = class_activation_map(activations, tape.gradient(score, activations), method)
    return result, heatmap(cam, tf.shape(images)[1:3])


def _serving_signatures(model: keras.Model, tf_transform_output, tta: bool,
                        heatmap_method: str = HEATMAP_METHOD,
                        heatmap_layer: str = HEATMAP_LAYER) -> Dict:
    """The exported signatures; all run the Transform graph, then the trained model.

    The `gradcam` signature serves `heatmap_method` (one of HEATMAP_METHODS) on the
    backbone layer `heatmap_layer`.

    Needs `post_hoc.fit` to have run: every signature returns calibrated probabilities
    (of the grade-offset logits, averaged with the mirror's under `tta`) and the
    out-of-distribution score, flag and reason (`ood.judge`).
    """
    # Tracked by the model, so the Transform graph is saved inside the SavedModel.
    model.tft_layer = tf_transform_output.transform_features_layer()
    raw_spec = tf_transform_output.raw_feature_spec()
    image_spec = {features.IMAGE_KEY: raw_spec[features.IMAGE_KEY]}

    def preprocess(image_bytes):
        return model.tft_layer({features.IMAGE_KEY: tf.reshape(image_bytes, [-1, 1])})

    def outputs(pooled, logits, transformed):
        probabilities = tf.nn.softmax(model.temperature_scaling(model.grade_offsets(logits)))
        grades = tf.range(features.NUM_GRADES, dtype=tf.float32)
        checks = ood.input_check_ratios(transformed)
        checks[features.REASON_UNLIKE_TRAINING] = model.feature_distance(pooled)
        return {
            features.PROBABILITIES_OUTPUT: probabilities,
            features.GRADE_OUTPUT: tf.argmax(probabilities, axis=-1),
            features.EXPECTED_GRADE_OUTPUT: tf.reduce_sum(probabilities * grades, axis=-1),
            **ood.judge(checks),
        }

    image_input = tf.TensorSpec([None], tf.string, name=features.SERVING_INPUT)

    def predict(transformed):
        images = transformed[features.TRANSFORMED_IMAGE_KEY]
        _, pooled, logits = features_and_logits(model, images)
        return outputs(pooled, with_tta(model, images, logits, tta), transformed)

    @tf.function(input_signature=[image_input])
    def serve_images(image_bytes):
        return predict(preprocess(image_bytes))

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.string, name=features.EXAMPLES_INPUT)])
    def serve_examples(examples):
        return predict(model.tft_layer(tf.io.parse_example(examples, image_spec)))

    # The heatmap's layer is inside the backbone: a view of it that also returns that
    # layer's activations (same variables), built once, outside the traced functions.
    tapped = tapped_backbone(model, [heatmap_layer])

    @tf.function(input_signature=[image_input])
    def gradcam(image_bytes):
        """The outputs of `serve_images` plus `heatmap` float32 [N, S, S] in [0, 1]:
        `heatmap_method` on `heatmap_layer` for the returned grade's logit (before offsets and
        temperature) of the film as given; under TTA the grade is the averaged one, the
        mirror is not explained."""
        transformed = preprocess(image_bytes)
        images = transformed[features.TRANSFORMED_IMAGE_KEY]
        result, heat = grade_heatmap(
            model, tapped, images,
            lambda pooled, logits: outputs(pooled, with_tta(model, images, logits, tta),
                                           transformed),
            heatmap_method)
        result[features.HEATMAP_OUTPUT] = heat
        return result

    return {
        features.SERVING_SIGNATURE: serve_images,
        features.EXAMPLES_SIGNATURE: serve_examples,
        features.GRADCAM_SIGNATURE: gradcam,
    }


def export(model: keras.Model, tf_transform_output, export_dir: str,
           history: Dict[str, List[float]], stats: Dict, tta: bool = False,
           heatmap_method: str = HEATMAP_METHOD, heatmap_layer: str = HEATMAP_LAYER) -> None:
    """Writes the SavedModel with its three signatures and the training record.

    Raises:
      ValueError: `heatmap_method` is not one of HEATMAP_METHODS, or `heatmap_layer` is
        not a layer of the model's backbone.
    """
    signatures = _serving_signatures(model, tf_transform_output, tta, heatmap_method,
                                     heatmap_layer)
    # save_traces=False: the signatures are all a server needs; tracing every layer's
    # call for Keras re-loading would double the export time.
    model.save(export_dir, save_format="tf", signatures=signatures, save_traces=False)
    # assets.extra/ travels with the SavedModel and is ignored by TF Serving.
    extra = os.path.join(export_dir, features.ASSETS_EXTRA_DIR)
    tf.io.gfile.makedirs(extra)
    with tf.io.gfile.GFile(os.path.join(extra, _HISTORY_FILE), "w") as f:
        json.dump({"history": history, "stats": stats}, f, indent=2)


def read_training_record(export_dir: str) -> Dict:
    """The training history and throughput stored beside a SavedModel by `export`."""
    path = os.path.join(export_dir, features.ASSETS_EXTRA_DIR, _HISTORY_FILE)
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)
