"""TFX module code for KL grading: features, preprocessing, model, ingestion, custom components."""

import os

# One Keras flavour for every process that touches the model code (pipeline, Beam
# workers, tests): Keras 2 via tf_keras. It must be set before TensorFlow is imported,
# and TFX and TFT otherwise pick or rewrite it on their own.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
