"""AutoGraph leaves tf_keras's own code alone once the rule is in place, and our
subclassed layers are still converted."""

from tensorflow.python.autograph.core import config
from tensorflow.python.autograph.impl import conversion

from components import autograph_rules


def _tf_keras_rules():
    return [r for r in config.CONVERSION_RULES
            if isinstance(r, config.DoNotConvert) and r.matches("tf_keras")]


def test_tf_keras_is_not_converted_and_the_rule_is_added_once():
    import tf_keras

    assert autograph_rules.keep_autograph_out_of_tf_keras()
    assert autograph_rules.keep_autograph_out_of_tf_keras()
    assert len(_tf_keras_rules()) == 1
    assert conversion.is_allowlisted(tf_keras.Model.train_step)
    assert conversion.is_allowlisted(tf_keras.layers.Dense.call)


def test_project_code_is_still_converted():
    from components import model

    autograph_rules.keep_autograph_out_of_tf_keras()
    assert not conversion.is_allowlisted(model.build_model)
