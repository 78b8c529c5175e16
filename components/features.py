"""Names shared by ingestion, the TFX module code, the model server and the web app.

This is the single place that defines feature keys, grade names and the exported
signatures' names, so the pipeline, the server and the UI cannot drift apart.
It must stay importable without TensorFlow (the web app imports it).
"""

import os

# The project's Keras is Keras 2 (tf_keras). TensorFlow reads this when it is first
# imported, so every process entry point calls `select_keras_2()` before that, and
# child processes get `KERAS_ENV` in their environment.
KERAS_ENV = {"TF_USE_LEGACY_KERAS": "1"}


def select_keras_2() -> None:
    """Makes TensorFlow load tf_keras (Keras 2) in this process and its children."""
    os.environ.update(KERAS_ENV)

# Kellgren-Lawrence grades, index == grade.
GRADE_NAMES = ("Normal", "Doubtful", "Mild", "Moderate", "Severe")
NUM_GRADES = len(GRADE_NAMES)

# Raw tf.Example features written by ingestion and read by ExampleGen.
IMAGE_KEY = "image"  # encoded PNG/JPEG bytes, exactly as on disk
LABEL_KEY = "grade"  # int64 KL grade 0..4
PATIENT_KEY = "patient_id"  # bytes, e.g. b"9001695"
SIDE_KEY = "side"  # bytes: b"L", b"R" or b"U" (unknown)
SOURCE_KEY = "source"  # bytes: path of the file relative to the dataset root

# Transform output: the preprocessed image, float32 [size, size, 1] in [0, 1].
TRANSFORMED_IMAGE_KEY = "image_xf"
# The equalisation works on an 8x8 grid of tiles, so the model's image size must be a
# multiple of it.
IMAGE_SIZE_MULTIPLE = 8
# Transform outputs beside the image, for the out-of-distribution input checks
# (components/ood.py): float32 [N], measured on the decoded film before equalisation.
PIXEL_STD_KEY = "pixel_std"  # standard deviation of the gray pixels in [0, 1]
CHROMA_KEY = "chroma"  # mean over pixels of max - min over R, G, B; 0 for gray files
# Contrast enhancement the Transform graph can apply (components/preprocessing.py):
# unclipped adaptive histogram equalisation, classic clip-limited CLAHE, or none.
EQUALISATIONS = ("ahe", "clahe", "none")
DEFAULT_EQUALISATION = "ahe"

# Split names used by ingestion and ExampleGen.
TRAIN_SPLIT = "train"
EVAL_SPLIT = "eval"

# Exported SavedModel signatures (see README, "Model signatures").
SERVING_SIGNATURE = "serving_default"  # image bytes -> grade outputs
EXAMPLES_SIGNATURE = "from_examples"  # serialized tf.Example -> grade outputs
GRADCAM_SIGNATURE = "gradcam"  # image bytes -> grade outputs + heatmap

SERVING_INPUT = "image_bytes"
EXAMPLES_INPUT = "examples"

PROBABILITIES_OUTPUT = "probabilities"  # float32 [N, 5], rows sum to 1
GRADE_OUTPUT = "grade"  # int64 [N], argmax of probabilities
EXPECTED_GRADE_OUTPUT = "expected_grade"  # float32 [N], sum_g g * p(g)
HEATMAP_OUTPUT = "heatmap"  # float32 [N, H, W] in [0, 1], Grad-CAM of the grade
# Out-of-distribution check; models exported before it lack both outputs.
OOD_SCORE_OUTPUT = "ood_score"  # float32 [N]; > 1 means flagged
OOD_FLAG_OUTPUT = "out_of_distribution"  # bool [N], ood_score > 1: do not use the grade

# Files that travel with a pushed SavedModel (TF Serving ignores this folder):
# <model_base_path>/<version>/assets.extra/model_card.json, written by the pusher and read
# by the web app.
ASSETS_EXTRA_DIR = "assets.extra"
MODEL_CARD_FILE = "model_card.json"


def model_card_path(version_dir: str) -> str:
    """Where the model card of a pushed version lives, given the version's folder."""
    return os.path.join(version_dir, ASSETS_EXTRA_DIR, MODEL_CARD_FILE)
