"""The served heatmap: class activation maps, their normalisation, and the tapped backbone
they are computed on (the exported signature is tested on the pipeline's pushed model in
tests/pipeline)."""

import re

import numpy as np
import pytest
import tensorflow as tf

from components import export, model
from components.model_config import ModelConfig


def _two_spots(size=6):
    """Activations [1, size, size, 2]: channel 0 lit at the top left, channel 1 at the
    bottom right."""
    activations = np.zeros((1, size, size, 2), np.float32)
    activations[0, 1, 1, 0] = 3.0
    activations[0, size - 2, size - 2, 1] = 3.0
    return activations


@pytest.mark.parametrize("method", export.HEATMAP_METHODS)
def test_the_map_lights_where_the_rewarded_channel_is(method):
    activations = _two_spots()
    for rewarded, spot in ((0, (1, 1)), (1, (4, 4))):
        gradients = np.zeros_like(activations)
        gradients[..., rewarded] = 0.5
        gradients[..., 1 - rewarded] = -0.5  # evidence against the grade
        cam = export.class_activation_map(tf.constant(activations), tf.constant(gradients),
                                          method).numpy()
        assert cam.shape == (1, 6, 6) and cam.dtype == np.float32
        assert np.unravel_index(cam[0].argmax(), (6, 6)) == spot
        # The penalised channel's spot is not lit: ReLU of a negative contribution.
        assert cam[0][(4, 4) if rewarded == 0 else (1, 1)] == 0.0


def test_gradcam_weighs_channels_by_their_mean_gradient():
    activations = _two_spots()
    gradients = np.zeros_like(activations)
    gradients[0, :, :, 0] = 1.0  # mean 1
    gradients[0, :3, :, 1] = 2.0  # mean 1 over the map although larger where it is 0
    cam = export.class_activation_map(tf.constant(activations), tf.constant(gradients),
                                      export.GRADCAM).numpy()
    np.testing.assert_allclose(cam[0], activations[0, ..., 0] + activations[0, ..., 1])


def test_gradcam_plus_plus_follows_the_closed_form_alpha():
    # Constant gradient g_k per channel: alpha = 1 / (2 + g_k * sum(A_k)) everywhere, so the
    # channel weight is h * w * relu(g_k) / (2 + g_k * sum(A_k)) (Chattopadhay et al. 2018,
    # eq. 19 with an exponential score).
    activations = _two_spots()
    activations[0, 1, 2, 0] = 1.0  # channel 0 sums to 4, channel 1 to 3
    gradients = np.zeros_like(activations)
    gradients[..., 0], gradients[..., 1] = 0.5, 0.25
    cam = export.class_activation_map(tf.constant(activations), tf.constant(gradients),
                                      export.GRADCAM_PLUS_PLUS).numpy()
    weights = [36 * 0.5 / (2 + 0.5 * 4), 36 * 0.25 / (2 + 0.25 * 3)]
    expected = weights[0] * activations[0, ..., 0] + weights[1] * activations[0, ..., 1]
    np.testing.assert_allclose(cam[0], expected, rtol=1e-6)


def test_layercam_weighs_each_location_by_its_own_positive_gradient():
    activations = _two_spots()
    gradients = np.zeros_like(activations)
    gradients[0, 1, 1, 0] = 2.0  # where channel 0 is lit
    gradients[0, 4, 4, 1] = -1.0  # evidence against, where channel 1 is lit
    gradients[0, 0, :, 1] = 5.0  # a strong gradient where channel 1 is dark adds nothing
    cam = export.class_activation_map(tf.constant(activations), tf.constant(gradients),
                                      export.LAYERCAM).numpy()
    expected = np.zeros((6, 6), np.float32)
    expected[1, 1] = 6.0
    np.testing.assert_allclose(cam[0], expected)


def test_unknown_heatmap_method_is_named():
    zeros = tf.zeros([1, 2, 2, 1])
    with pytest.raises(ValueError, match=re.escape("'gradcam+++'")):
        export.class_activation_map(zeros, zeros, "gradcam+++")


def test_heatmap_is_input_sized_in_unit_range_with_peak_one():
    cam = np.zeros((3, 4, 4), np.float32)
    cam[0, 0, 0] = 5.0
    cam[1] = np.arange(16, dtype=np.float32).reshape(4, 4)
    heat = export.heatmap(tf.constant(cam), (32, 32)).numpy()
    assert heat.shape == (3, 32, 32) and heat.dtype == np.float32
    assert heat.min() >= 0.0
    np.testing.assert_allclose(heat[:2].max(axis=(1, 2)), 1.0)
    assert heat[2].max() == 0.0  # no evidence: an empty map, not a division by zero
    # The peak stays where the coarse map's was.
    assert heat[0, :8, :8].mean() > heat[0, 8:, 8:].mean()
    assert heat[1, -1, -1] == 1.0


@pytest.fixture(scope="module")
def small_model():
    return model.build_model(ModelConfig(image_size=64, weights="none"))


def test_tapped_backbone_keeps_the_logits_and_returns_the_heatmap_layer(small_model):
    images = tf.constant(np.random.default_rng(2).random((2, 64, 64, 1)), tf.float32)
    tapped = model.tapped_backbone(small_model, [export.HEATMAP_LAYER])
    (activations,), pooled, logits = model.tapped_features_and_logits(small_model, tapped,
                                                                      images)
    last, expected_pooled, expected_logits = model.features_and_logits(small_model, images)
    np.testing.assert_allclose(logits.numpy(), expected_logits.numpy(), atol=1e-5)
    np.testing.assert_allclose(pooled.numpy(), expected_pooled.numpy(), atol=1e-5)
    # A finer map than the last block's 2x2 at 64 px.
    assert activations.shape[1] == activations.shape[2] > last.shape[1] == 2
    # No copy: the tapped view trains and serves the model's own variables.
    assert {id(v) for v in tapped.weights} <= {id(v) for v in small_model.weights}


def test_heatmap_of_the_model_is_differentiable_and_in_unit_range(small_model):
    images = tf.constant(np.random.default_rng(3).random((3, 64, 64, 1)), tf.float32)
    tapped = model.tapped_backbone(small_model, [export.HEATMAP_LAYER])
    grades = tf.constant([0, 2, 4], tf.int64)
    with tf.GradientTape() as tape:
        (activations,), _, logits = model.tapped_features_and_logits(small_model, tapped,
                                                                     images)
        score = tf.gather(logits, grades, axis=1, batch_dims=1)
    gradients = tape.gradient(score, activations)
    assert gradients is not None and float(tf.reduce_max(tf.abs(gradients))) > 0.0
    for method in export.HEATMAP_METHODS:
        heat = export.heatmap(export.class_activation_map(activations, gradients, method),
                              (64, 64)).numpy()
        assert heat.shape == (3, 64, 64) and heat.dtype == np.float32
        assert heat.min() >= 0.0 and heat.max() <= 1.0 + 1e-6


def test_unknown_tapped_layer_is_named(small_model):
    with pytest.raises(ValueError, match="block_99_add"):
        model.tapped_backbone(small_model, ["block_99_add"])
