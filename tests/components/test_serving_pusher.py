"""Version numbering and warmup request of pushed models (the push itself is covered end to end)."""

import os
import time

from components.features import SERVING_INPUT, SERVING_SIGNATURE, model_card_path
from components.serving_pusher import next_version


def test_versions_are_unix_seconds_and_always_increase(tmp_path):
    assert next_version(str(tmp_path / "absent")) >= int(time.time())
    future = int(time.time()) + 1000
    (tmp_path / str(future)).mkdir()
    (tmp_path / ".staging-5").mkdir()  # hidden staging dirs are not versions
    assert next_version(str(tmp_path)) == future + 1


def test_model_card_lives_where_tf_serving_ignores_it(tmp_path):
    assert model_card_path(str(tmp_path / "7")).endswith("7/assets.extra/model_card.json")


def _write_image_model(export_dir: str):
    """A SavedModel with the product's serving interface: image_bytes -> mean gray level."""
    import tensorflow as tf

    class MeanGray(tf.Module):
        def __init__(self):
            super().__init__()
            self.scale = tf.Variable(1.0 / 255.0)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=SERVING_INPUT)])
        def serve(self, image_bytes):
            def mean(png):
                return tf.reduce_mean(tf.cast(tf.io.decode_png(png, channels=1), tf.float32))
            return {"mean_gray": tf.map_fn(mean, image_bytes, fn_output_signature=tf.float32) * self.scale}

    module = MeanGray()
    tf.saved_model.save(module, export_dir, signatures={SERVING_SIGNATURE: module.serve})


def test_warmup_request_is_written_and_replayed_by_the_server(tmp_path):
    import shutil

    from components.serving_pusher import write_warmup_request
    from serving import warmup
    from serving.servable import Servable

    export_dir = str(tmp_path / "koa" / "1")
    _write_image_model(export_dir)

    assert write_warmup_request(export_dir, "koa")
    assert os.path.exists(warmup.warmup_path(export_dir))
    assert warmup.run_warmup(Servable("koa", 1, export_dir)) == 1

    # A model that cannot answer the request gets no warmup file (it would fail to load).
    broken = str(tmp_path / "broken")
    shutil.copytree(export_dir, broken)
    shutil.rmtree(os.path.join(broken, "assets.extra"))
    shutil.rmtree(os.path.join(broken, "variables"))
    assert not write_warmup_request(broken, "koa")
    assert not os.path.exists(warmup.warmup_path(broken))
