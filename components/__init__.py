"""TFX module code for KL grading: features, preprocessing, model, ingestion, custom components."""

from components import features

# Beam workers and the TFX executors import this package before any model code: they get
# the project's Keras flavour even though they are not started through an entry point.
features.select_keras_2()
