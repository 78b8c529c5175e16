"""Model building and training settings (the trained model is tested in tests/pipeline)."""

import numpy as np
import pytest

from components import model
from conftest import shared_dir

WEIGHTS = shared_dir() / "weights" / "mobilenet_v2_0.35_224_no_top.h5"


def test_class_weights_favour_rare_grades_and_average_one():
    counts = [2286, 1046, 1516, 757, 173]
    for mode in ("balanced", "sqrt"):
        weights = model.class_weights(counts, mode)
        assert weights[4] > weights[3] > weights[2] > weights[0]
        mean = sum(weights[g] * c for g, c in enumerate(counts)) / sum(counts)
        assert mean == pytest.approx(1.0)
    balanced = model.class_weights(counts, "balanced")
    assert balanced[4] * counts[4] == pytest.approx(balanced[0] * counts[0])
    assert model.class_weights(counts, "none") is None


def test_class_weights_refuse_a_missing_grade():
    with pytest.raises(ValueError, match=r"grade\(s\) \[4\]"):
        model.class_weights([10, 10, 10, 10, 0], "balanced")


@pytest.mark.parametrize("values, message", [
    ({"image_size": 100}, "multiple of 8"),
    ({"class_weighting": "inverse"}, "class_weighting"),
    ({"learning_rate": 0.1}, "unknown model settings"),
])
def test_invalid_model_config_is_named(values, message):
    with pytest.raises(ValueError, match=message):
        model.ModelConfig.from_dict(values)


def test_missing_weights_file_is_a_clear_error(tmp_path):
    config = model.ModelConfig(image_size=64, weights=str(tmp_path / "nope.h5"))
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        model.build_model(config)


def test_augmentation_only_acts_in_training():
    net = model.build_model(model.ModelConfig(image_size=64, weights="none"))
    images = np.random.default_rng(0).random((4, 64, 64, 1)).astype("float32")
    inference = [net(images, training=False).numpy() for _ in range(2)]
    np.testing.assert_array_equal(inference[0], inference[1])
    np.testing.assert_allclose(inference[0].sum(axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(net(images, training=True).numpy(), inference[0])


@pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"shared weights not found at {WEIGHTS}")
def test_imagenet_weights_load_from_a_local_file():
    config = model.ModelConfig(image_size=96, weights=str(WEIGHTS))
    net = model.build_model(config)
    backbone = net.get_layer("backbone")
    assert backbone.count_params() == 410_208
    # Fresh batch-norm statistics are exactly 1; ImageNet-trained ones are not.
    moving_variance = backbone.get_layer("bn_Conv1").moving_variance.numpy()
    assert not np.allclose(moving_variance, 1.0)
