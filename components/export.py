"""SavedModel export: the serving signatures (bytes, tf.Example, Grad-CAM) and the
training record stored beside them in assets.extra/."""

import json
import os
from typing import Dict, List

import tensorflow as tf

from components import features, ood
from components.model import features_and_logits, with_tta

keras = tf.keras

_HISTORY_FILE = "training_history.json"


def _serving_signatures(model: keras.Model, tf_transform_output, tta: bool) -> Dict:
    """The exported signatures; all run the Transform graph, then the trained model.

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

    @tf.function(input_signature=[image_input])
    def gradcam(image_bytes):
        """Grad-CAM of the returned grade's logit on the last convolutional feature map
        (of the image as given, also under TTA)."""
        transformed = preprocess(image_bytes)
        images = transformed[features.TRANSFORMED_IMAGE_KEY]
        feature_map, _, _ = features_and_logits(model, images)
        with tf.GradientTape() as tape:
            tape.watch(feature_map)
            _, pooled, logits = features_and_logits(model, images, feature_map)
            result = outputs(pooled, with_tta(model, images, logits, tta), transformed)
            grade = result[features.GRADE_OUTPUT]
            score = tf.gather(logits, grade, axis=1, batch_dims=1)
        grads = tape.gradient(score, feature_map)
        channel_weights = tf.reduce_mean(grads, axis=[1, 2], keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(channel_weights * feature_map, axis=-1, keepdims=True))
        cam = tf.image.resize(cam, tf.shape(images)[1:3], method="bilinear")[..., 0]
        cam = tf.math.divide_no_nan(cam, tf.reduce_max(cam, axis=[1, 2], keepdims=True))
        result[features.HEATMAP_OUTPUT] = cam
        return result

    return {
        features.SERVING_SIGNATURE: serve_images,
        features.EXAMPLES_SIGNATURE: serve_examples,
        features.GRADCAM_SIGNATURE: gradcam,
    }


def export(model: keras.Model, tf_transform_output, export_dir: str,
           history: Dict[str, List[float]], stats: Dict, tta: bool = False) -> None:
    """Writes the SavedModel with its three signatures and the training record."""
    signatures = _serving_signatures(model, tf_transform_output, tta)
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
