"""Builds a small real SavedModel with the project's serving signatures, for web tests.

Run as a script (``python tiny_model.py <model_base_path> [version ...]``) so the
test process itself never imports TensorFlow: the web-app tests also check that
the web process stays free of it.

The model decodes and shrinks the image bytes to 32x32 with the product's own
preprocessing (`preprocess_with_checks`, inside the graph), runs one convolution and a dense softmax
layer with fixed seeded weights. ``gradcam`` computes a real Grad-CAM of the
predicted grade over the convolution's output.

Like the trained model, every signature also returns ``ood_score``,
``out_of_distribution`` (``ood_score > 1``) and ``ood_reason``. Here the score is the
preprocessing's colour measure (mean max minus min channel) over
``OOD_SATURATION_LIMIT``: gray images score 0, strongly coloured ones
(``webapp_images.colour_png``) are flagged with reason ``colour``; the product's other
input checks are left out, so that uniform test images of a chosen grade stay graded.
"""

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from components import features  # noqa: E402

features.select_keras_2()  # a process entry point: before TensorFlow is imported

SIZE = 32
GRADE_CENTRES = [0.1, 0.3, 0.5, 0.7, 0.9]
CHANNELS = 1 + len(GRADE_CENTRES)
OOD_SATURATION_LIMIT = 0.25


def _build_module(seed: int):
    import tensorflow as tf

    from components import ood, preprocessing

    class TinyKneeModel(tf.Module):
        """Image bytes -> KL grade probabilities, expected grade and Grad-CAM."""

        def __init__(self):
            super().__init__()
            # Channel 0 is the pixel value, channel 1+g its hinge above centre c_g, so
            # logit_g = -20 * |mean brightness - c_g|: brighter images get higher grades
            # (uniform images of brightness v get grade floor(5 v)), which lets tests
            # make images of a chosen grade. The seed jitters the weights per version.
            centres = tf.constant(GRADE_CENTRES)
            identity = tf.reshape(tf.one_hot(4, 9), [3, 3, 1, 1])
            self.kernel = tf.Variable(tf.tile(identity, [1, 1, 1, CHANNELS]))
            self.bias = tf.Variable(tf.concat([[0.0], -centres], axis=0))
            jitter = tf.random.stateless_uniform([5], seed=[seed, 1], minval=-0.02, maxval=0.02)
            dense = tf.concat([tf.fill([1, 5], 20.0), -40.0 * tf.eye(5)], axis=0)
            self.dense = tf.Variable(dense)
            self.dense_bias = tf.Variable(-20.0 * centres + jitter)

        def _images(self, image_bytes):
            """The product's preprocessing without equalisation (it would erase the
            brightness the grades are read from), and the OOD score from its colour
            measure."""
            images, measures = preprocessing.preprocess_with_checks(image_bytes, SIZE, "none")
            return images, measures[features.CHROMA_KEY] / OOD_SATURATION_LIMIT

        def _head(self, conv):
            pooled = tf.reduce_mean(conv, axis=[1, 2])
            return tf.nn.softmax(tf.matmul(pooled, self.dense) + self.dense_bias)

        def _conv(self, images):
            return tf.nn.relu(
                tf.nn.conv2d(images, self.kernel, strides=1, padding="SAME") + self.bias
            )

        def _outputs(self, probabilities, scores):
            grades = tf.argmax(probabilities, axis=1, output_type=tf.int64)
            expected = tf.reduce_sum(probabilities * tf.range(5, dtype=tf.float32), axis=1)
            return {
                features.PROBABILITIES_OUTPUT: probabilities,
                features.GRADE_OUTPUT: grades,
                features.EXPECTED_GRADE_OUTPUT: expected,
                **ood.judge({features.REASON_COLOUR: scores}),
            }

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=features.SERVING_INPUT)])
        def serve(self, image_bytes):
            images, scores = self._images(image_bytes)
            return self._outputs(self._head(self._conv(images)), scores)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=features.SERVING_INPUT)])
        def gradcam(self, image_bytes):
            images, scores = self._images(image_bytes)
            with tf.GradientTape() as tape:
                conv = self._conv(images)
                tape.watch(conv)
                probabilities = self._head(conv)
                grades = tf.argmax(probabilities, axis=1, output_type=tf.int32)
                score = tf.gather(probabilities, grades, axis=1, batch_dims=1)
            grads = tape.gradient(score, conv)
            weights = tf.reduce_mean(grads, axis=[1, 2], keepdims=True)
            cam = tf.nn.relu(tf.reduce_sum(weights * conv, axis=-1))
            peak = tf.reduce_max(cam, axis=[1, 2], keepdims=True)
            heat = tf.math.divide_no_nan(cam, peak)
            outputs = self._outputs(probabilities, scores)
            outputs[features.HEATMAP_OUTPUT] = heat
            return outputs

    return TinyKneeModel()


def build(model_base_path: str, version: int = 1, seed: int = 7) -> str:
    """Saves one version under ``model_base_path/version`` and returns its path."""
    import tensorflow as tf

    module = _build_module(seed)
    export = os.path.join(model_base_path, str(version))
    tmp = export + ".tmp"
    tf.saved_model.save(
        module,
        tmp,
        signatures={
            features.SERVING_SIGNATURE: module.serve,
            features.GRADCAM_SIGNATURE: module.gradcam,
        },
    )
    # Rename last: the server must never see a half-written version directory.
    os.replace(tmp, export)
    return export


if __name__ == "__main__":
    base = sys.argv[1]
    versions = [int(v) for v in sys.argv[2:]] or [1]
    for v in versions:
        print(build(base, v))
