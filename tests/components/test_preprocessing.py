"""The in-graph preprocessing: decoding any supported image and CLAHE enhancement."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from skimage import exposure

from components import features, preprocessing, synthetic


def _encode(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def _knee(tmp_path, size=128) -> np.ndarray:
    synthetic.generate(tmp_path / "set", patients=1, size=size, seed=5)
    path = next((tmp_path / "set").glob("*/*.png"))
    return np.asarray(Image.open(path))


def _run(images, size=64):
    return preprocessing.preprocess_images(tf.constant(images), size).numpy()


def test_every_supported_encoding_gives_one_gray_square(tmp_path):
    gray = _knee(tmp_path)
    rgb = np.stack([gray] * 3, axis=-1)
    rgba = np.concatenate([rgb, np.full(gray.shape + (1,), 255, np.uint8)], axis=-1)
    wide = np.pad(gray, ((0, 0), (32, 32)))
    images = [_encode(gray), _encode(gray, "JPEG"), _encode(rgb, "JPEG"), _encode(rgba),
              _encode(gray.astype(np.uint16) * 257), _encode(wide)]
    out = _run(images)
    assert out.shape == (len(images), 64, 64, 1)
    assert out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    # 8-bit PNG, 16-bit PNG and RGBA of the same pixels are the same image to the model.
    # (Gray conversion rounds differently by a hair, which can move a pixel one histogram bin.)
    for same in (3, 4):
        difference = np.abs(out[0] - out[same])
        assert difference.mean() < 0.01 and np.percentile(difference, 99) < 0.1
    # JPEG is lossy, and equalisation stretches its noise in flat areas; still close.
    assert np.abs(out[0] - out[1]).mean() < 0.05


def test_non_square_image_keeps_its_aspect_ratio(tmp_path):
    wide = np.zeros((64, 128), np.uint8)
    wide[:, 60:68] = 255  # a vertical bar stays thin when padded, not stretched
    out = preprocessing.decode_image(tf.constant(_encode(wide)), 64).numpy()[..., 0]
    assert out[:16].max() == 0.0 and out[48:].max() == 0.0  # padding above and below
    assert (out[32] > 0.5).sum() <= 6


@pytest.mark.parametrize("ours_clip, reference_clip", [(None, 1.0), (2.0, 0.01)])
def test_equalisation_matches_a_reference_implementation(tmp_path, ours_clip, reference_clip):
    knee = _knee(tmp_path, size=256)
    ours = preprocessing.clahe(tf.constant(knee[None, ..., None] / 255.0, tf.float32),
                               clip_limit=ours_clip).numpy()
    # Same tiles (8 x 8 of 32 px) as scikit-image's; its clip 1.0 means no clipping.
    reference = exposure.equalize_adapthist(knee, kernel_size=32, clip_limit=reference_clip)
    assert np.abs(ours[0, ..., 0] - reference).mean() < 0.04
    assert np.corrcoef(ours.ravel(), reference.ravel())[0, 1] > 0.99


@pytest.mark.parametrize("variant", [lambda x: 0.25 + 0.5 * x, lambda x: x ** 1.8,
                                     lambda x: np.clip(x * 1.3 - 0.1, 0, 1)])
def test_exposure_and_contrast_of_an_upload_do_not_reach_the_model(tmp_path, variant):
    raw = _knee(tmp_path, size=256) / 255.0
    changed = variant(raw)
    before = np.abs(raw - changed).mean()
    out = preprocessing.clahe(tf.constant(np.stack([raw, changed])[..., None], tf.float32))
    after = float(np.abs(out[0] - out[1]).mean())
    assert after < 0.03 and after < before / 4


def test_enhanced_and_unenhanced_films_look_alike_to_the_model(tmp_path):
    """The training data was CLAHE-enhanced upstream; clinicians may upload raw films."""
    raw = _knee(tmp_path, size=256)
    enhanced = (exposure.equalize_adapthist(raw, kernel_size=32, clip_limit=0.01) * 255
                ).round().astype(np.uint8)
    before = np.abs(raw / 255.0 - enhanced / 255.0).mean()
    out = _run([_encode(raw), _encode(enhanced)], size=256)
    after = np.abs(out[0] - out[1]).mean()
    assert after < 0.05
    assert after < before * 0.75


def test_preprocessing_is_deterministic(tmp_path):
    image = _encode(_knee(tmp_path))
    np.testing.assert_array_equal(_run([image]), _run([image]))


@pytest.mark.parametrize("payload", [b"", b"not an image", b"\x89PNG\r\n\x1a\n truncated"])
def test_bytes_that_are_not_an_image_are_rejected(payload):
    with pytest.raises(tf.errors.InvalidArgumentError):
        _run([payload])


def test_clahe_needs_a_size_divisible_by_its_grid():
    with pytest.raises(ValueError, match="divisible"):
        preprocessing.clahe(tf.zeros([1, 60, 60, 1]))


def test_equalisation_modes_none_and_clip_limited(tmp_path):
    knee = (_knee(tmp_path, 64) * 0.4 + 50).astype(np.uint8)  # an under-exposed film
    encoded = tf.constant([_encode(knee)])
    plain = preprocessing.preprocess_images(encoded, 64, "none").numpy()[0, ..., 0]
    decoded = preprocessing.decode_image(encoded[0], 64).numpy()[..., 0]
    np.testing.assert_allclose(plain, decoded, atol=1e-6)
    ahe = preprocessing.preprocess_images(encoded, 64, "ahe").numpy()
    clahe = preprocessing.preprocess_images(encoded, 64, "clahe").numpy()
    # Unclipped equalisation stretches a narrow-range film the most, the clip-limited
    # one less, none not at all.
    assert np.ptp(ahe) > np.ptp(clahe) > np.ptp(plain)
    with pytest.raises(ValueError, match="equalisation"):
        preprocessing.preprocess_images(encoded, 64, "gamma")


def test_10_to_16_bit_data_in_a_16_bit_png_gives_the_8_bit_image(tmp_path):
    """Detectors store 10/12/14-bit data in 16-bit PNGs; dividing by 65535 would leave a
    12-bit film 16 of the equalisation's 256 levels."""
    film = _knee(tmp_path)
    film = film.astype(np.float64)
    film = np.round((film - film.min()) * 255.0 / np.ptp(film)).astype(np.uint8)  # 0..255
    stored = [_encode(film), _encode(film.astype(np.uint16) * 257)] + [
        _encode(np.round(film * (2.0 ** bits - 1) / 255.0).astype(np.uint16))
        for bits in (10, 12, 14)]
    decoded = np.stack([preprocessing.decode_image(tf.constant(b), 64).numpy()
                        for b in stored])
    # Rounding to the stored depth moves a pixel by at most half a level of 8 bits.
    assert np.abs(decoded - decoded[0]).max() < 0.5 / 255 + 1e-6
    equalised = _run(stored)
    assert np.abs(equalised - equalised[0]).mean(axis=(1, 2, 3)).max() < 0.01
    # Gray + alpha and RGBA 16-bit PNGs: the opaque alpha (65535) does not set the scale.
    twelve = np.round(film * 4095.0 / 255.0).astype(np.uint16)[..., None]
    opaque = np.full_like(twelve, 65535)
    for pixels in (np.concatenate([twelve, opaque], -1),
                   np.concatenate([twelve] * 3 + [opaque], -1)):
        decoded_alpha = preprocessing.decode_image(tf.io.encode_png(pixels), 64).numpy()
        assert np.abs(decoded_alpha - decoded[0]).max() < 0.5 / 255 + 1e-3
    # A 12-bit film whose brightest pixel is under full scale still maps by 4095.
    dim = np.round(film * 3000.0 / 255.0).astype(np.uint16)
    assert dim.max() == 3000
    np.testing.assert_allclose(preprocessing.decode_image(tf.constant(_encode(dim)), 64),
                               preprocessing.decode_image(tf.constant(_encode(
                                   np.round(dim * 255.0 / 4095.0).astype(np.uint8))), 64),
                               atol=0.5 / 255 + 1e-6)


def test_check_measures_read_size_polarity_and_orientation(tmp_path):
    film = _knee(tmp_path)
    images = [film, 255 - film, np.rot90(film).copy(), np.rot90(film, 3).copy(),
              film[:40, :90], np.rot90(film, 2).copy()]
    _, measures = preprocessing.preprocess_with_checks(
        tf.constant([_encode(i) for i in images]), 64)
    assert set(measures) == set(features.INPUT_CHECK_KEYS)
    for value in measures.values():
        assert value.shape == (len(images),) and value.dtype == tf.float32
    polarity = measures[features.POLARITY_KEY].numpy()
    anisotropy = measures[features.ANISOTROPY_KEY].numpy()
    assert polarity[0] > 0.1 and anisotropy[0] > 0.3
    np.testing.assert_allclose(polarity[1], -polarity[0], atol=0.01)  # inverted
    np.testing.assert_allclose(anisotropy[2:4], -anisotropy[0], atol=0.01)  # turned
    np.testing.assert_allclose(polarity[2:4], polarity[0], atol=0.01)  # read across bones
    assert measures[features.MIN_SIDE_KEY].numpy().tolist() == [128, 128, 128, 128, 40, 128]
    vertical = measures[features.VERTICAL_KEY].numpy()
    assert abs(vertical[0]) > 0.01
    np.testing.assert_allclose(vertical[5], -vertical[0], atol=0.005)  # upside down
    np.testing.assert_allclose(vertical[1], vertical[0], atol=0.005)  # inverted: same sign
