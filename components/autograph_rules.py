"""Keeps TensorFlow's AutoGraph out of tf_keras's own code.

AutoGraph rewrites every Python function a `tf.function` calls into graph code unless the
function's module is on TensorFlow's do-not-convert list
(`tensorflow/python/autograph/core/config.py`). That list names `keras`, the Keras that
came with TensorFlow up to 2.15, but not `tf_keras`, where Keras 2 lives from TensorFlow
2.16 on. Without the rule AutoGraph re-parses and converts tf_keras's engine (train step,
losses, metrics, optimizer) on every trace: the first train step of a MobileNetV2 costs
~85 CPU-seconds on this project's 2-core machine instead of ~25, once per `fit` after a
`compile` (twice per training run, once per Tuner trial). tf_keras is written to be traced
as plain Python (it ran unconverted under its old name), and our own subclassed layers are
still converted, because Keras converts subclassed layers' `call` explicitly.
"""

import logging

logger = logging.getLogger(__name__)

_MODULE = "tf_keras"


def keep_autograph_out_of_tf_keras() -> bool:
    """Adds a do-not-convert rule for the `tf_keras` package to AutoGraph's rules.

    Idempotent; process-wide. Uses TensorFlow's private rule list (there is no public
    API for it): if that list is gone in another TensorFlow version, logs a warning and
    changes nothing (tracing is then only slower).

    Returns:
      True if the rule is in place after the call.
    """
    try:
        from tensorflow.python.autograph.core import config
    except ImportError:
        logger.warning("AutoGraph's rule list is not where TensorFlow 2.16 keeps it: "
                       "tf_keras code will be converted on every trace (slower, same result)")
        return False
    rules = tuple(config.CONVERSION_RULES)
    if any(isinstance(rule, config.DoNotConvert) and rule.matches(_MODULE) for rule in rules):
        return True
    # First, so that it wins over any broader rule that would convert it.
    config.CONVERSION_RULES = (config.DoNotConvert(_MODULE),) + rules
    return True
