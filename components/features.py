"""Names shared by ingestion, the TFX module code, the model server and the web app.

This is the single place that defines feature keys, grade names and the exported
signatures' names, so the pipeline, the server and the UI cannot drift apart.
It must stay importable without TensorFlow (the web app imports it).
"""

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
# Contrast enhancement the Transform graph can apply (components/preprocessing.py):
# unclipped adaptive histogram equalisation, classic clip-limited CLAHE, or none.
EQUALISATIONS = ("ahe", "clahe", "none")

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
