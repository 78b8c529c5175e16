"""The in-graph preprocessing: decoding any supported image and CLAHE enhancement."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from skimage import exposure

from components import preprocessing, synthetic


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
    np.testing.assert_allclose(out[0], out[4], atol=1e-2)
    np.testing.assert_allclose(out[0], out[3], atol=1e-2)
    # JPEG is lossy, but close.
    assert np.abs(out[0] - out[1]).mean() < 0.02


def test_non_square_image_keeps_its_aspect_ratio(tmp_path):
    wide = np.zeros((64, 128), np.uint8)
    wide[:, 60:68] = 255  # a vertical bar stays thin when padded, not stretched
    out = preprocessing.decode_image(tf.constant(_encode(wide)), 64).numpy()[..., 0]
    assert out[:16].max() == 0.0 and out[48:].max() == 0.0  # padding above and below
    assert (out[32] > 0.5).sum() <= 6


def test_clahe_matches_a_reference_implementation(tmp_path):
    knee = _knee(tmp_path, size=128)
    ours = preprocessing.clahe(tf.constant(knee[None, ..., None] / 255.0, tf.float32)).numpy()
    reference = exposure.equalize_adapthist(knee, kernel_size=16, clip_limit=0.01)
    assert np.abs(ours[0, ..., 0] - reference).mean() < 0.03


def test_enhanced_and_unenhanced_films_look_alike_to_the_model(tmp_path):
    """The training data was CLAHE-enhanced upstream; clinicians may upload raw films."""
    raw = _knee(tmp_path, size=128)
    enhanced = (exposure.equalize_adapthist(raw, kernel_size=16, clip_limit=0.01) * 255
                ).round().astype(np.uint8)
    before = np.abs(raw / 255.0 - enhanced / 255.0).mean()
    out = _run([_encode(raw), _encode(enhanced)], size=128)
    after = np.abs(out[0] - out[1]).mean()
    assert after < 0.05
    assert after < before / 2


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
