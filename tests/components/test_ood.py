"""Out-of-distribution score: fitted on features, exported as a TF module; probe images."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from components import features, non_knee, ood, preprocessing, synthetic


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


def test_numpy_distance_equals_mahalanobis_by_hand_across_chunks(monkeypatch):
    monkeypatch.setattr(ood, "_CHUNK", 7)  # 20 rows: three chunks, the last one short
    rng = np.random.default_rng(2)
    means = rng.normal(size=(3, 6))
    a = rng.normal(size=(6, 6))
    precision = a @ a.T + np.eye(6)
    x = rng.normal(size=(20, 6)) * 2
    by_hand = [min(np.sqrt((v - m) @ precision @ (v - m)) for m in means) for v in x]
    np.testing.assert_allclose(ood._distances(x, means, precision), by_hand, rtol=1e-10)


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


def _phantom(tmp_path) -> np.ndarray:
    synthetic.generate(tmp_path / "set", patients=1, size=128, seed=5)
    return np.asarray(Image.open(next((tmp_path / "set").glob("*/*.png"))))


def _reasons(images):
    _, measures = preprocessing.preprocess_with_checks(tf.constant(images), 64)
    ratios = ood.input_check_ratios(measures)
    judged = ood.judge(ratios)
    score = ood.input_check_score(measures).numpy()
    np.testing.assert_allclose(judged[features.OOD_SCORE_OUTPUT].numpy(), score)
    return [r.decode() for r in judged[features.OOD_REASON_OUTPUT].numpy()], score


def test_input_checks_pass_films_and_flag_each_failure_with_its_reason(tmp_path):
    film = _phantom(tmp_path)
    ok = [_encode(film), _encode(np.stack([film] * 3, -1), "JPEG"),
          _encode(film.astype(np.uint16) * 257), _encode(np.rot90(film, 2).copy()),
          _encode(np.asarray(Image.fromarray(film).resize((64, 64))))]
    probes = non_knee.probe_images(size=128, seed=0)
    # Pictures that are no film may fail more than the check named here.
    not_films = {probes["blank_black"]: "blank", probes["blank_gray"]: "blank",
                 probes["photo_like_texture"]: "colour", probes["gaussian_noise_rgb"]: "colour"}
    bad = {
        _encode(255 - film): "inverted",
        _encode(np.rot90(film).copy()): "rotated",
        _encode(np.rot90(film, 3).copy()): "rotated",
        _encode(np.rot90(255 - film).copy()): "inverted,rotated",
        _encode(np.asarray(Image.fromarray(film).resize((32, 32)))): "too_small",
        _encode(np.asarray(Image.fromarray(film).resize((96, 8)))): "too_small",
    }
    reasons, scores = _reasons(ok + list(bad) + list(not_films))
    assert reasons[:len(ok)] == [""] * len(ok), scores
    assert (scores[:len(ok)] <= 1.0).all(), scores
    assert reasons[len(ok):len(ok) + len(bad)] == list(bad.values()), scores
    for reason, expected in zip(reasons[len(ok) + len(bad):], not_films.values()):
        assert expected in reason.split(","), reason
    assert (scores[len(ok):] > 1.0).all(), scores


def test_an_upside_down_film_is_rotated_where_the_upright_sign_was_learned(tmp_path):
    film = _phantom(tmp_path)
    images = [film, np.rot90(film, 2).copy(), 255 - film, np.rot90(film).copy()]
    _, measures = preprocessing.preprocess_with_checks(
        tf.constant([_encode(i) for i in images]), 64)
    # Without the Transform graph's learned sign, a half turn is not checked.
    reasons = ood.judge(ood.input_check_ratios(measures))[features.OOD_REASON_OUTPUT]
    assert [r.decode() for r in reasons.numpy()] == ["", "", "inverted", "rotated"]
    # With it (the sign the analyzer would learn from films like this one): the half
    # turn is flagged, the upright and the inverted film are not called rotated.
    sign = np.sign(measures[features.VERTICAL_KEY].numpy()[0])
    learned = {**measures, features.UPRIGHT_KEY: measures[features.VERTICAL_KEY] * sign}
    reasons = ood.judge(ood.input_check_ratios(learned))[features.OOD_REASON_OUTPUT]
    assert [r.decode() for r in reasons.numpy()] == ["", "rotated", "inverted", "rotated"]


def test_judge_names_every_failed_check_in_the_documented_order():
    ratios = {features.REASON_UNLIKE_TRAINING: tf.constant([0.5, 3.0, 1.0, 2.0]),
              features.REASON_ROTATED: tf.constant([0.1, 1.5, 0.2, 0.9]),
              features.REASON_BLANK: tf.constant([0.0, 0.0, 0.0, 1.01])}
    out = ood.judge(ratios)
    assert [r.decode() for r in out[features.OOD_REASON_OUTPUT].numpy()] == [
        "", "rotated,unlike_training_films", "", "blank,unlike_training_films"]
    np.testing.assert_allclose(out[features.OOD_SCORE_OUTPUT].numpy(), [0.5, 3.0, 1.0, 2.0])
    assert out[features.OOD_FLAG_OUTPUT].numpy().tolist() == [False, True, False, True]
    with pytest.raises(ValueError, match="check codes"):
        ood.judge({"upside_down": tf.constant([2.0])})
