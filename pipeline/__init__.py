"""TFX pipeline wiring, configuration, runners and the `koa` command line."""

import os

# Same Keras flavour as components/ (tf_keras); set before anything imports TensorFlow.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
