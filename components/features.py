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
IMAGE_KEY = "image"  # PNG bytes from components/image_files.py (a PNG file's own bytes)
LABEL_KEY = "grade"  # int64 KL grade 0..4
PATIENT_KEY = "patient_id"  # bytes, e.g. b"9001695"
SIDE_KEY = "side"  # bytes: b"L", b"R" or b"U" (unknown)
SOURCE_KEY = "source"  # bytes: path of the file relative to the dataset root
# Facts about the source file (components/image_files.py), constrained by
# pipeline/schema.pbtxt; they describe the data and are never fed to the model.
IMAGE_FORMAT_KEY = "image_format"  # bytes: b"png", b"jpeg" or b"dicom"
IMAGE_HEIGHT_KEY = "image_height"  # int64: rows of the (upright) image, pixels
IMAGE_WIDTH_KEY = "image_width"  # int64: columns of the (upright) image, pixels
BIT_DEPTH_KEY = "bit_depth"  # int64: bits per sample stored in the file (DICOM Bits Stored)
CHANNELS_KEY = "channels"  # int64: samples per pixel in the file (1 grey, 3 colour, 4 CMYK)
EXIF_ORIENTATION_KEY = "exif_orientation"  # int64 1..8, already applied to IMAGE_KEY
MODALITY_KEY = "modality"  # bytes: DICOM Modality (b"DX", b"CR", ...) or b"unknown"
IMAGE_FACT_KEYS = (IMAGE_FORMAT_KEY, IMAGE_HEIGHT_KEY, IMAGE_WIDTH_KEY, BIT_DEPTH_KEY,
                   CHANNELS_KEY, EXIF_ORIENTATION_KEY, MODALITY_KEY)

# Transform output: the preprocessed image, float32 [size, size, 1] in [0, 1].
TRANSFORMED_IMAGE_KEY = "image_xf"
# The equalisation works on an 8x8 grid of tiles, so the model's image size must be a
# multiple of it.
IMAGE_SIZE_MULTIPLE = 8
# Transform outputs beside the image, for the out-of-distribution input checks
# (components/ood.py): float32 [N], measured on the decoded film before equalisation.
PIXEL_STD_KEY = "pixel_std"  # standard deviation of the gray pixels in [0, 1]
CHROMA_KEY = "chroma"  # mean over pixels of max - min over R, G, B; 0 for gray files
MIN_SIDE_KEY = "min_side"  # the decoded film's smaller side, pixels
POLARITY_KEY = "polarity"  # middle minus sides across the bones, in [-1, 1]; < 0 inverted
ANISOTROPY_KEY = "anisotropy"  # column vs row profile spread, [-1, 1]; < 0 turned 90/270
# Upper half minus lower half along the bones, in [-1, 1], polarity-corrected.
VERTICAL_KEY = "vertical_asymmetry"
INPUT_CHECK_KEYS = (PIXEL_STD_KEY, CHROMA_KEY, MIN_SIDE_KEY, POLARITY_KEY, ANISOTROPY_KEY,
                    VERTICAL_KEY)
# Transform output only (an analyzer learns the training films' upright sign):
# VERTICAL_KEY times that sign, > 0 for a film the right way up, < 0 turned 180 degrees.
UPRIGHT_KEY = "upright"
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
# Why: string [N], b"" when not flagged, else the failed checks' codes joined by ",", in
# the order of OOD_REASONS (docs/serving.md). Models exported before it lack it.
OOD_REASON_OUTPUT = "ood_reason"
REASON_BLANK = "blank"  # no image content (pixel standard deviation near 0)
REASON_COLOUR = "colour"  # a colour picture; radiographs are gray
REASON_TOO_SMALL = "too_small"  # smaller side below the minimum size
REASON_INVERTED = "inverted"  # polarity reversed: bone dark (e.g. MONOCHROME1 sent as is)
REASON_ROTATED = "rotated"  # turned by 90 or 270 degrees
REASON_UNLIKE_TRAINING = "unlike_training_films"  # backbone features far from training knees
OOD_REASONS = (REASON_BLANK, REASON_COLOUR, REASON_TOO_SMALL, REASON_INVERTED, REASON_ROTATED,
               REASON_UNLIKE_TRAINING)

# Class activation maps the `gradcam` signature can serve (`model.heatmap_method`), and the
# names users read for them (Selvaraju 2017; Chattopadhay 2018; Jiang 2021).
HEATMAP_METHOD_NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "layercam": "LayerCAM"}

# Files that travel with a pushed SavedModel (TF Serving ignores this folder):
# <model_base_path>/<version>/assets.extra/model_card.json, written by the pusher and read
# by the web app.
ASSETS_EXTRA_DIR = "assets.extra"
MODEL_CARD_FILE = "model_card.json"


def model_card_path(version_dir: str) -> str:
    """Where the model card of a pushed version lives, given the version's folder."""
    return os.path.join(version_dir, ASSETS_EXTRA_DIR, MODEL_CARD_FILE)
