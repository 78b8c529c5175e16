"""Out-of-distribution score: fitted on features, exported as a TF module; probe images."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from components import non_knee, ood, preprocessing


def _clusters(rng, n, dim=40):
    means = np.eye(5, dim) * 6.0
    labels = rng.integers(0, 5, n)
    mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)  # correlated features
    return means[labels] + rng.normal(size=(n, dim)) @ mixing, labels


def test_threshold_is_the_validation_percentile_and_far_points_are_flagged():
    rng = np.random.default_rng(0)
    train, labels = _clusters(rng, 2000)
    val, _ = _clusters(rng, 500)
    distance = ood.fit(train, labels, val, percentile=95)
    val_scores = distance(tf.constant(val, tf.float32)).numpy()
    assert np.mean(val_scores > 1.0) == pytest.approx(0.05, abs=0.01)
    far = rng.normal(size=(50, 40)) * 10.0
    assert (distance(tf.constant(far, tf.float32)).numpy() > 1.0).all()


def test_graph_distance_equals_numpy_mahalanobis():
    rng = np.random.default_rng(1)
    train, labels = _clusters(rng, 600, dim=8)
    distance = ood.fit(train, labels, train[:100], percentile=99)
    x = rng.normal(size=(20, 8)) * 3
    means, precision = distance.means.numpy(), distance.precision.numpy()
    by_hand = [min(np.sqrt((v - m) @ precision @ (v - m)) for m in means) for v in x]
    np.testing.assert_allclose(distance.distance(tf.constant(x, tf.float32)).numpy(),
                               by_hand, rtol=1e-4)


@pytest.mark.parametrize("kwargs, message", [
    ({"train_labels": np.zeros(3)}, "labels"),
    ({"eval_features": np.zeros((0, 4))}, "no validation"),
    ({"percentile": 0.0}, "percentile"),
])
def test_bad_fit_input_is_named(kwargs, message):
    args = {"train_features": np.random.default_rng(0).normal(size=(10, 4)),
            "train_labels": np.arange(10) % 2, "eval_features": np.ones((3, 4)),
            "percentile": 99.0}
    with pytest.raises(ood.OodError, match=message):
        ood.fit(**{**args, **kwargs})


def test_probe_images_decode_and_are_deterministic():
    probes = non_knee.probe_images(size=96, seed=4)
    assert probes == non_knee.probe_images(size=96, seed=4)
    assert {"blank_black", "uniform_noise", "chest_film", "photo_like_texture"} <= set(probes)
    for name, data in probes.items():
        image = Image.open(io.BytesIO(data))
        assert image.size == (96, 96), name


def _encode(pixels, fmt="PNG"):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def test_input_checks_flag_blank_and_colour_pictures_only():
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[0:128, 0:128] / 128
    film = (255 * np.clip(0.5 + 0.3 * np.sin(6 * xx) * np.cos(4 * yy)
                          + rng.normal(0, 0.05, (128, 128)), 0, 1)).astype(np.uint8)
    ok = [_encode(film), _encode(np.stack([film] * 3, -1), "JPEG"),
          _encode(film.astype(np.uint16) * 257)]
    probes = non_knee.probe_images(size=128, seed=0)
    bad = [probes["blank_black"], probes["blank_gray"], probes["photo_like_texture"],
           probes["gaussian_noise_rgb"]]
    _, pixel_std, chroma = preprocessing.preprocess_with_checks(tf.constant(ok + bad), 64)
    scores = ood.input_check_score(pixel_std, chroma).numpy()
    assert (scores[:len(ok)] < 1.0).all(), scores
    assert (scores[len(ok):] > 1.0).all(), scores
