"""Writes small but real SavedModels with the project's serving signatures.

The trained model comes from the TFX pipeline. These models exist so that the
server, the web app and their tests and benchmarks can run against a real
SavedModel with exactly the exported interface (see ``components/features.py``)
before, or without, a training run:

* ``serving_default``: ``image_bytes`` (PNG/JPEG, any size, 8/16-bit, gray or
  RGB) -> ``probabilities`` [N, 5], ``grade`` [N], ``expected_grade`` [N];
* ``from_examples``: serialized ``tf.Example`` with the ``image`` feature -> same;
* ``gradcam``: ``image_bytes`` -> same plus ``heatmap`` [N, S, S] in [0, 1],
  the normalised gradient of the predicted grade's probability with respect to
  the input pixels (a saliency map, computed for real by the model).

The grading head is a fixed random linear layer (``backbone="linear"``) or a
randomly initialised MobileNetV2 (``backbone="mobilenet_v2"``, for realistic
inference cost in benchmarks). Different seeds give different outputs, which
tests use to tell versions apart. The grades are not medically meaningful.
"""

import logging
import os
import shutil
import tempfile

import numpy as np

from components import features

_LOG = logging.getLogger(__name__)


def _build_module(tf, seed: int, image_size: int, backbone: str):
    rng = np.random.default_rng(seed)

    class GradingModel(tf.Module):
        """Decode -> resize -> grading head -> KL grade outputs."""

        def __init__(self):
            super().__init__()
            if backbone == "linear":
                self.weights = tf.Variable(
                    rng.normal(0.0, 4.0 / image_size, size=(image_size * image_size, features.NUM_GRADES)),
                    dtype=tf.float32)
                self.bias = tf.Variable(rng.normal(0.0, 0.5, size=(features.NUM_GRADES,)), dtype=tf.float32)
                self.network = None
            elif backbone == "mobilenet_v2":
                import tf_keras  # pylint: disable=import-outside-toplevel
                tf_keras.utils.set_random_seed(seed)
                base = tf_keras.applications.MobileNetV2(
                    input_shape=(image_size, image_size, 3), alpha=0.35, include_top=False,
                    weights=None, pooling="avg")
                head = tf_keras.layers.Dense(features.NUM_GRADES)
                self.network = tf_keras.Sequential([base, head])
            else:
                raise ValueError(f"unknown backbone {backbone!r}")

        def decode(self, image_bytes):
            def one(data):
                image = tf.io.decode_image(data, channels=1, dtype=tf.float32, expand_animations=False)
                return tf.image.resize(image, [image_size, image_size])
            return tf.map_fn(one, image_bytes,
                             fn_output_signature=tf.TensorSpec([image_size, image_size, 1], tf.float32))

        def logits(self, images):
            if self.network is None:
                flat = tf.reshape(images, [-1, image_size * image_size])
                return tf.matmul(flat, self.weights) + self.bias
            return self.network(tf.image.grayscale_to_rgb(images) * 2.0 - 1.0, training=False)

        def outputs(self, images):
            probabilities = tf.nn.softmax(self.logits(images))
            grades = tf.argmax(probabilities, axis=1, output_type=tf.int64)
            expected = tf.reduce_sum(probabilities * tf.range(features.NUM_GRADES, dtype=tf.float32), axis=1)
            return {features.PROBABILITIES_OUTPUT: probabilities, features.GRADE_OUTPUT: grades,
                    features.EXPECTED_GRADE_OUTPUT: expected}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=features.SERVING_INPUT)])
        def serve(self, image_bytes):
            return self.outputs(self.decode(image_bytes))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=features.EXAMPLES_INPUT)])
        def from_examples(self, examples):
            parsed = tf.io.parse_example(
                examples, {features.IMAGE_KEY: tf.io.FixedLenFeature([], tf.string)})
            return self.outputs(self.decode(parsed[features.IMAGE_KEY]))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=features.SERVING_INPUT)])
        def gradcam(self, image_bytes):
            images = self.decode(image_bytes)
            with tf.GradientTape() as tape:
                tape.watch(images)
                result = self.outputs(images)
                chosen = tf.reduce_sum(
                    result[features.PROBABILITIES_OUTPUT]
                    * tf.one_hot(result[features.GRADE_OUTPUT], features.NUM_GRADES), axis=1)
            saliency = tf.abs(tape.gradient(chosen, images))[..., 0]
            peak = tf.reduce_max(saliency, axis=[1, 2], keepdims=True)
            result[features.HEATMAP_OUTPUT] = tf.math.divide_no_nan(saliency, peak)
            return result

    return GradingModel()


def write_example_model(export_dir: str, *, seed: int = 0, image_size: int = 32,
                        backbone: str = "linear") -> str:
    """Writes a SavedModel with the project's three signatures.

    The model is written to a temporary sibling directory and renamed into
    place, so a watching server never sees it half-written.

    Args:
        export_dir: the version directory to create, e.g. ``.../koa/1``; must not exist.
        seed: weights' random seed (different seeds, different predictions).
        image_size: side of the square the images are resized to.
        backbone: ``"linear"`` (tiny, fast) or ``"mobilenet_v2"`` (α=0.35, random weights).

    Returns:
        ``export_dir``.

    Raises:
        FileExistsError: ``export_dir`` exists.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    if os.path.exists(export_dir):
        raise FileExistsError(f"{export_dir} already exists")
    parent = os.path.dirname(os.path.abspath(export_dir))
    os.makedirs(parent, exist_ok=True)
    module = _build_module(tf, seed, image_size, backbone)
    signatures = {
        features.SERVING_SIGNATURE: module.serve.get_concrete_function(),
        features.EXAMPLES_SIGNATURE: module.from_examples.get_concrete_function(),
        features.GRADCAM_SIGNATURE: module.gradcam.get_concrete_function(),
    }
    staging = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
    try:
        tf.saved_model.save(module, staging, signatures=signatures)
        os.rename(staging, export_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _LOG.info("Wrote example model (%s, seed %d) to %s", backbone, seed, export_dir)
    return export_dir
