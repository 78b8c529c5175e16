"""Writes small but real SavedModels with the project's serving signatures (a test and
benchmark fixture: decoding and resizing are the product's own `preprocess_with_checks`).

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

With ``ood=True`` every signature also returns ``ood_score`` [N],
``out_of_distribution`` [N] (``ood_score > 1``) and ``ood_reason`` [N], as the
trained model does. The example model's score is the mean colour saturation of
the image divided by ``OOD_SATURATION_LIMIT`` (reason ``colour``): a gray
radiograph scores 0, a strongly coloured picture is flagged. With
``input_checks=True`` the score is instead the product's model-free input checks
(``components.ood.input_check_ratios``: blank, colour, too small, inverted,
rotated), which the metamorphic tests and benchmark exercise. Without ``ood`` the
model looks like one exported before that check existed.

The grading head is a fixed random linear layer (``backbone="linear"``) or a
randomly initialised MobileNetV2 (``backbone="mobilenet_v2"``, for realistic
inference cost in benchmarks). Different seeds give different outputs, which
tests use to tell versions apart. The grades are not medically meaningful.
"""

import argparse
import logging
import os
import shutil
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from components import features  # noqa: E402  (its package selects Keras 2)

_LOG = logging.getLogger(__name__)

# Mean (max channel - min channel) of an image, in [0, 1], that scores exactly 1.
OOD_SATURATION_LIMIT = 0.25


def _build_module(tf, seed: int, image_size: int, backbone: str, ood: bool,
                  input_checks: bool):
    from components import ood as ood_checks  # imports TensorFlow
    from components import preprocessing

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
            """The product's own preprocessing (without equalisation): images and the
            input-check measures the OOD outputs use."""
            return preprocessing.preprocess_with_checks(image_bytes, image_size, "none")

        def logits(self, images):
            if self.network is None:
                flat = tf.reshape(images, [-1, image_size * image_size])
                return tf.matmul(flat, self.weights) + self.bias
            return self.network(tf.image.grayscale_to_rgb(images) * 2.0 - 1.0, training=False)

        def outputs(self, images, measures):
            probabilities = tf.nn.softmax(self.logits(images))
            grades = tf.argmax(probabilities, axis=1, output_type=tf.int64)
            expected = tf.reduce_sum(probabilities * tf.range(features.NUM_GRADES, dtype=tf.float32), axis=1)
            result = {features.PROBABILITIES_OUTPUT: probabilities, features.GRADE_OUTPUT: grades,
                      features.EXPECTED_GRADE_OUTPUT: expected}
            if ood and input_checks:
                result.update(ood_checks.judge(ood_checks.input_check_ratios(measures)))
            elif ood:
                result.update(ood_checks.judge(
                    {features.REASON_COLOUR: measures[features.CHROMA_KEY] / OOD_SATURATION_LIMIT}))
            return result

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=features.SERVING_INPUT)])
        def serve(self, image_bytes):
            return self.outputs(*self.decode(image_bytes))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=features.EXAMPLES_INPUT)])
        def from_examples(self, examples):
            parsed = tf.io.parse_example(
                examples, {features.IMAGE_KEY: tf.io.FixedLenFeature([], tf.string)})
            return self.outputs(*self.decode(parsed[features.IMAGE_KEY]))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=features.SERVING_INPUT)])
        def gradcam(self, image_bytes):
            images, measures = self.decode(image_bytes)
            with tf.GradientTape() as tape:
                tape.watch(images)
                result = self.outputs(images, measures)
                chosen = tf.reduce_sum(
                    result[features.PROBABILITIES_OUTPUT]
                    * tf.one_hot(result[features.GRADE_OUTPUT], features.NUM_GRADES), axis=1)
            saliency = tf.abs(tape.gradient(chosen, images))[..., 0]
            peak = tf.reduce_max(saliency, axis=[1, 2], keepdims=True)
            result[features.HEATMAP_OUTPUT] = tf.math.divide_no_nan(saliency, peak)
            return result

    return GradingModel()


def write_example_model(export_dir: str, *, seed: int = 0, image_size: int = 32,
                        backbone: str = "linear", ood: bool = False,
                        input_checks: bool = False) -> str:
    """Writes a SavedModel with the project's three signatures.

    The model is written to a temporary sibling directory and renamed into
    place, so a watching server never sees it half-written.

    Args:
        export_dir: the version directory to create, e.g. ``.../koa/1``; must not exist.
        seed: weights' random seed (different seeds, different predictions).
        image_size: side of the square the images are resized to.
        backbone: ``"linear"`` (tiny, fast) or ``"mobilenet_v2"`` (α=0.35, random weights).
        ood: also return ``ood_score``, ``out_of_distribution`` and ``ood_reason`` (see
            module docstring).
        input_checks: with ``ood``, score the product's input checks instead of colour.

    Returns:
        ``export_dir``.

    Raises:
        FileExistsError: ``export_dir`` exists.
        ValueError: ``input_checks`` without ``ood``.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    if input_checks and not ood:
        raise ValueError("input_checks needs ood=True: the checks are OOD outputs")
    if os.path.exists(export_dir):
        raise FileExistsError(f"{export_dir} already exists")
    parent = os.path.dirname(os.path.abspath(export_dir))
    os.makedirs(parent, exist_ok=True)
    module = _build_module(tf, seed, image_size, backbone, ood, input_checks)
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
    _LOG.info("Wrote example model (%s, seed %d, ood outputs %s, input checks %s) to %s",
              backbone, seed, ood, input_checks, export_dir)
    return export_dir


CLASSIFIER_LABELS = (b"low", b"mid", b"high")
CLASSIFIER_FEATURE = "x"


def write_example_classifier(export_dir: str, *, seed: int = 0) -> str:
    """Writes a TF1-style SavedModel with a classification signature.

    ``serving_default`` has method ``tensorflow/serving/classify``: input
    ``inputs`` (serialized tf.Example with a float feature ``x`` of length 2),
    outputs ``classes`` [N, 3] (``CLASSIFIER_LABELS``) and ``scores`` [N, 3]
    (softmax of a fixed random linear map). TensorFlow 2 cannot write
    classification signatures, hence the v1 SavedModel builder.

    Args:
        export_dir: the version directory to create; must not exist.
        seed: seed of the weights.

    Returns:
        ``export_dir``.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    if os.path.exists(export_dir):
        raise FileExistsError(f"{export_dir} already exists")
    parent = os.path.dirname(os.path.abspath(export_dir))
    os.makedirs(parent, exist_ok=True)
    weights = classifier_weights(seed)
    staging = os.path.join(tempfile.mkdtemp(prefix=".tmp-", dir=parent), "model")
    try:
        with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as session:
            serialized = tf.compat.v1.placeholder(tf.string, [None], name="tf_example")
            parsed = tf.io.parse_example(
                serialized, {CLASSIFIER_FEATURE: tf.io.FixedLenFeature([2], tf.float32)})
            scores = tf.nn.softmax(tf.matmul(parsed[CLASSIFIER_FEATURE], tf.constant(weights)))
            classes = tf.tile(tf.constant([list(CLASSIFIER_LABELS)]), [tf.shape(scores)[0], 1])
            signature = tf.compat.v1.saved_model.classification_signature_def(
                examples=serialized, classes=classes, scores=scores)
            builder = tf.compat.v1.saved_model.Builder(staging)
            builder.add_meta_graph_and_variables(
                session, [tf.compat.v1.saved_model.tag_constants.SERVING],
                signature_def_map={"serving_default": signature})
            builder.save()
        os.rename(staging, export_dir)
    finally:
        shutil.rmtree(os.path.dirname(staging), ignore_errors=True)
    return export_dir


def classifier_weights(seed: int = 0) -> np.ndarray:
    """Returns the weights :func:`write_example_classifier` uses for a seed."""
    return np.random.default_rng(seed).normal(size=(2, len(CLASSIFIER_LABELS))).astype(np.float32)


def write_conformance_models(root: str) -> dict:
    """Writes the models the conformance tests expect a server to serve.

    ``<root>/koa/1`` (seed 1), ``<root>/koa/2`` (seed 2) and
    ``<root>/classifier/1``. Serve them with :func:`model_config_text`.

    Returns:
        {model name: base path}.
    """
    write_example_model(os.path.join(root, "koa", "1"), seed=1)
    write_example_model(os.path.join(root, "koa", "2"), seed=2)
    write_example_classifier(os.path.join(root, "classifier", "1"))
    return {"koa": os.path.join(root, "koa"), "classifier": os.path.join(root, "classifier")}


def model_config_text(base_paths: dict) -> str:
    """Returns the ModelServerConfig text the conformance tests expect.

    ``koa`` serves versions 1 and 2 with labels ``stable`` -> 1 and
    ``canary`` -> 2; ``classifier`` serves its latest version.
    """
    return f"""model_config_list {{
  config {{
    name: "koa"
    base_path: "{base_paths['koa']}"
    model_platform: "tensorflow"
    model_version_policy {{ specific {{ versions: 1 versions: 2 }} }}
    version_labels {{ key: "stable" value: 1 }}
    version_labels {{ key: "canary" value: 2 }}
  }}
  config {{
    name: "classifier"
    base_path: "{base_paths['classifier']}"
    model_platform: "tensorflow"
  }}
}}
"""


def main(argv=None) -> int:
    """``python tests/models/example_model.py ROOT [--config-base-path=/models]``.

    Writes the conformance models under ROOT and ``ROOT/models.config``;
    ``--config-base-path`` rewrites the paths in the config for a server that
    sees ROOT elsewhere (e.g. ``/models`` inside the tensorflow/serving image).
    """
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("root")
    parser.add_argument("--config-base-path", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    paths = write_conformance_models(args.root)
    if args.config_base_path:
        paths = {name: f"{args.config_base_path.rstrip('/')}/{name}" for name in paths}
    with open(os.path.join(args.root, "models.config"), "w", encoding="utf-8") as f:
        f.write(model_config_text(paths))
    _LOG.info("Wrote %s", os.path.join(args.root, "models.config"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
