"""Version numbering of pushed models (the push itself is covered end to end)."""

import time

from components.features import model_card_path
from components.serving_pusher import next_version


def test_versions_are_unix_seconds_and_always_increase(tmp_path):
    assert next_version(str(tmp_path / "absent")) >= int(time.time())
    future = int(time.time()) + 1000
    (tmp_path / str(future)).mkdir()
    (tmp_path / ".staging-5").mkdir()  # hidden staging dirs are not versions
    assert next_version(str(tmp_path)) == future + 1


def test_model_card_lives_where_tf_serving_ignores_it(tmp_path):
    assert model_card_path(str(tmp_path / "7")).endswith("7/assets.extra/model_card.json")
