"""Model building and training settings (the trained model is tested in tests/pipeline)."""

import numpy as np
import pytest
import tensorflow as tf

from components import features, model, train
from components.model_config import ModelConfig
from conftest import shared_dir

WEIGHTS = shared_dir() / "weights" / "mobilenet_v2_0.35_224_no_top.h5"


def test_class_weights_favour_rare_grades_and_average_one():
    counts = [2286, 1046, 1516, 757, 173]
    for mode in ("balanced", "sqrt"):
        weights = train.class_weights(counts, mode)
        assert weights[4] > weights[3] > weights[2] > weights[0]
        mean = sum(weights[g] * c for g, c in enumerate(counts)) / sum(counts)
        assert mean == pytest.approx(1.0)
    balanced = train.class_weights(counts, "balanced")
    assert balanced[4] * counts[4] == pytest.approx(balanced[0] * counts[0])
    assert train.class_weights(counts, "none") is None


def test_class_weights_refuse_a_missing_grade():
    with pytest.raises(ValueError, match=r"grade\(s\) \[4\]"):
        train.class_weights([10, 10, 10, 10, 0], "balanced")


@pytest.mark.parametrize("values, message", [
    ({"image_size": 100}, "multiple of 8"),
    ({"class_weighting": "inverse"}, "class_weighting"),
    ({"class_balance": "oversample"}, "class_balance must be"),
    ({"class_balance": "sampling", "class_weighting": "none"}, "needs class_weighting"),
    ({"learning_rate": 0.1}, "unknown model settings"),
    ({"recall_floor": 1.2}, "recall_floor"),
    ({"ordinal_smoothing": 1.0}, "ordinal_smoothing"),
    ({"equalisation": "gamma"}, "equalisation"),
    ({"label_smoothing": -0.1}, "label_smoothing"),
    ({"weight_decay": -1.0}, "weight_decay"),
    ({"finetune_epochs": 4, "warmup_epochs": 4}, "warmup_epochs"),
    ({"augment_zoom": -0.1}, "augmentation ranges"),
    ({"augment_gamma": -0.2}, "augment_gamma"),
    ({"augment_gamma": 3.0}, "augment_gamma"),
    ({"augment_gamma": float("nan")}, "augment_gamma"),
    ({"mixup_alpha": -0.2}, "mixup_alpha"),
    ({"mixup_alpha": 8.0}, "mixup_alpha"),
    ({"mixup_alpha": 0.2, "batch_size": 1}, "batch_size"),
    ({"select_fraction": 0.5}, "select_fraction"),
    ({"select_fraction": -0.1}, "select_fraction"),
    ({"early_stopping_patience": -1}, "early_stopping_patience"),
    ({"early_stopping_patience": 3}, "needs select_fraction"),
    ({"pooling": "max"}, "pooling must be one of"),
    ({"heatmap_method": "saliency"}, "heatmap_method must be one of"),
    ({"heatmap_layer": ""}, "heatmap_layer must name"),
])
def test_invalid_model_config_is_named(values, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_dict(values)


def test_missing_weights_file_is_a_clear_error(tmp_path):
    config = ModelConfig(image_size=64, weights=str(tmp_path / "nope.h5"))
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        model.build_model(config)


def test_augmentation_only_acts_in_training():
    net = model.build_model(ModelConfig(image_size=64, weights="none"))
    images = np.random.default_rng(0).random((4, 64, 64, 1)).astype("float32")
    inference = [net(images, training=False).numpy() for _ in range(2)]
    np.testing.assert_array_equal(inference[0], inference[1])
    np.testing.assert_allclose(inference[0].sum(axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(net(images, training=True).numpy(), inference[0])


@pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"shared weights not found at {WEIGHTS}")
def test_imagenet_weights_load_from_a_local_file():
    config = ModelConfig(image_size=96, weights=str(WEIGHTS))
    net = model.build_model(config)
    backbone = net.get_layer("backbone")
    assert backbone.count_params() == 410_208
    # Fresh batch-norm statistics are exactly 1; ImageNet-trained ones are not.
    moving_variance = backbone.get_layer("bn_Conv1").moving_variance.numpy()
    assert not np.allclose(moving_variance, 1.0)


def test_ordinal_head_gives_ordered_valid_probabilities():
    net = model.build_model(ModelConfig(image_size=32, weights="none", head="ordinal"))
    head = net.get_layer("logits")
    images = np.random.default_rng(1).random((6, 32, 32, 1)).astype("float32")
    probabilities = net(images, training=False).numpy()
    assert probabilities.shape == (6, 5) and (probabilities >= 0).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    # Even with gap parameters pushed negative, the cut-points stay increasing.
    head.gaps.assign(-5.0 * np.ones(3, "float32"))
    assert (np.diff(head.cut_points().numpy()) > 0).all()


def test_ordinal_head_probabilities_follow_the_cumulative_link():
    layer = model.OrdinalLogits(5)
    features = np.array([[0.0], [3.0], [-3.0]], "float32")
    layer.build(features.shape)
    layer.kernel.assign([[1.0]])
    cuts = layer.cut_points().numpy()
    np.testing.assert_allclose(cuts, [-1.5, -0.5, 0.5, 1.5], atol=1e-3)
    p = np.exp(layer(features).numpy())
    sigmoid = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    above = sigmoid(features - cuts[None, :])  # P(grade > k)
    np.testing.assert_allclose(p[:, 0], 1 - above[:, 0], rtol=1e-4)
    np.testing.assert_allclose(p[:, 4], above[:, 3], rtol=1e-4)
    # A higher severity score moves the mass to higher grades.
    expected = p @ np.arange(5)
    assert expected[1] > expected[0] > expected[2]


def test_overrides_are_checked_like_the_config():
    config = ModelConfig(image_size=64)
    assert config.with_overrides({"head": "ordinal"}).head == "ordinal"
    with pytest.raises(ValueError, match="head"):
        config.with_overrides({"head": "regression"})
    with pytest.raises(ValueError, match="ood_percentile"):
        config.with_overrides({"ood_percentile": 0})


def test_ordinal_smoothing_loss_charges_far_misses_more_than_near_ones():
    loss = train.ordinal_smoothing_loss(0.2)
    labels = tf.constant([[2], [2], [0]])
    near = tf.constant([[0.05, 0.8, 0.05, 0.05, 0.05]] * 2 + [[0.05, 0.8, 0.05, 0.05, 0.05]])
    far = tf.constant([[0.05, 0.05, 0.05, 0.05, 0.8]] * 2 + [[0.05, 0.05, 0.05, 0.05, 0.8]])
    assert (loss(labels, near).numpy() < loss(labels, far).numpy()).all()
    # The target is a distribution: for a perfect-shaped prediction the loss is its entropy.
    target = tf.constant([[0.0, 0.1, 0.8, 0.1, 0.0], [0.8, 0.2, 0.0, 0.0, 0.0]])
    expected = -np.sum(np.where(target > 0, target * np.log(np.maximum(target, 1e-12)), 0), -1)
    np.testing.assert_allclose(loss(tf.constant([2, 0]), target).numpy(), expected, rtol=1e-4)
    assert train.ordinal_smoothing_loss(0.0)(tf.constant([1]), near[:1]).numpy() == pytest.approx(
        -np.log(0.8), rel=1e-5)


def test_model_config_defaults_are_the_params_yaml_settings():
    from pathlib import Path

    import yaml

    with open(Path(__file__).resolve().parents[2] / "params.yaml", encoding="utf-8") as f:
        model = yaml.safe_load(f)["model"]
    defaults = ModelConfig()
    assert {key: getattr(defaults, key) for key in model} == model


def test_label_smoothing_spreads_the_target_over_all_grades():
    loss = train.ordinal_smoothing_loss(0.0, uniform=0.1)
    target = np.full((1, 5), 0.02, np.float32)
    target[0, 3] = 0.92
    expected = -np.sum(target * np.log(target))
    assert loss(tf.constant([3]), tf.constant(target)).numpy()[0] == pytest.approx(expected,
                                                                                  rel=1e-5)


@pytest.mark.slow  # a real (tiny) training run
def test_fine_tune_options_train_and_the_schedule_warms_up():
    import tensorflow as tf_

    config = ModelConfig(image_size=32, weights="none", head_epochs=0, finetune_epochs=2,
                         warmup_epochs=1, weight_decay=0.01, ema=True, label_smoothing=0.1,
                         augment_translate=0.1, batch_size=8)
    images = tf_.random.uniform([16, 32, 32, 1], seed=1)
    labels = tf_.constant([0, 1, 2, 3, 4, 0, 1, 2] * 2)
    ds = tf_.data.Dataset.from_tensor_slices(
        ({features.TRANSFORMED_IMAGE_KEY: images}, labels)).batch(8)
    trained, history, stats = train.train(config, ds, ds, None, 16)
    assert len(history["loss"]) == 2 and all(np.isfinite(history["loss"]))
    # Without a selection split every epoch runs and the last is kept.
    assert "selection" not in stats and "select_loss" not in history
    assert isinstance(trained.optimizer, tf_.keras.optimizers.AdamW)
    schedule = train.finetune_schedule(config, steps_per_epoch=2)
    # One warm-up epoch of 2 steps from 0 to the peak, then the cosine decay.
    assert float(schedule(0)) == pytest.approx(0.0)
    assert float(schedule(2)) == pytest.approx(config.finetune_lr, rel=1e-5)
    assert float(schedule(3)) < config.finetune_lr


def test_avg_max_pooling_puts_the_average_beside_the_maximum():
    net = model.build_model(ModelConfig(image_size=64, weights="none", pooling="avg_max"))
    images = tf.constant(np.random.default_rng(4).random((3, 64, 64, 1)), tf.float32)
    feature_map, pooled, logits = model.features_and_logits(net, images)
    maps = feature_map.numpy()
    channels = maps.shape[-1]
    assert pooled.shape == (3, 2 * channels) and logits.shape == (3, features.NUM_GRADES)
    np.testing.assert_allclose(pooled[:, :channels], maps.mean(axis=(1, 2)), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(pooled[:, channels:], maps.max(axis=(1, 2)), rtol=1e-6)
    # The head reads both halves.
    assert net.get_layer(model.LOGITS).kernel.shape == (2 * channels, features.NUM_GRADES)
