"""Upload validation and conversion: PNG/JPEG/DICOM to the model's PNG input."""

import numpy as np
import pytest

import webapp_images as wi
from webapp import heatmap, images
from webapp.image_errors import ImageError

# A DICOM storing more than 8 bits reaches the model as a 16-bit PNG.
WHITE16 = 65535

LIMIT = 64_000_000


def test_gray_png_is_passed_through_unchanged():
    data = wi.gradient_png()
    prepared = images.prepare_upload(data, LIMIT)
    assert prepared.png == data
    assert (prepared.source_format, prepared.width, prepared.height) == ("png", 96, 96)
    thumb = wi.decode_png(prepared.thumbnail_png)
    assert max(thumb.shape) <= images.THUMBNAIL_SIZE[0]


def test_rgb_jpeg_becomes_a_lossless_png_of_the_same_pixels():
    """Colour conversion is the model's job (in its graph), not the web app's."""
    data = wi.jpeg_bytes(rgb=True)
    prepared = images.prepare_upload(data, LIMIT)
    pixels = wi.decode_png(prepared.png)
    assert prepared.source_format == "jpeg"
    assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels, wi.decode_png(data))  # Pillow decodes JPEG too


def test_16bit_png_reaches_the_model_untouched_and_its_thumbnail_is_8bit():
    data = wi.png16_bytes()
    prepared = images.prepare_upload(data, LIMIT)
    assert prepared.png == data
    thumb = wi.decode_png(prepared.thumbnail_png)
    assert thumb.dtype == np.uint8 and thumb.min() == 0 and thumb.max() == 255


@pytest.mark.parametrize(
    "data, problem",
    [
        (b"", "empty"),
        (b"GIF89a" + b"\x00" * 200, "unsupported file type"),
        (b"%PDF-1.7 not an image", "unsupported file type"),
        (wi.truncated(wi.gradient_png(256)), "truncated"),
        (wi.truncated(wi.jpeg_bytes(size=256), 0.5), "truncated"),
        (wi.png_header_bomb(), "decompression bomb"),
        (b"\x89PNG\r\n\x1a\n" + b"garbage" * 10, "corrupt"),
    ],
    ids=["empty", "gif", "pdf", "truncated-png", "truncated-jpeg", "header-bomb", "corrupt-png"],
)
def test_bad_files_are_rejected_with_the_problem_named(data, problem):
    with pytest.raises(ImageError, match=problem):
        images.prepare_upload(data, LIMIT)


def test_pixel_limit_is_enforced_below_pillow_default():
    # 9000 x 9000 = 81 MP: Pillow alone would accept it, the app's limit must not.
    big = wi.png_bytes(np.zeros((9000, 9000), dtype=np.uint8))
    with pytest.raises(ImageError, match="decompression bomb"):
        images.prepare_upload(big, LIMIT)
    with pytest.raises(ImageError, match="above the limit of 100"):
        images.prepare_upload(wi.gradient_png(), 100)


def test_dicom_12bit_without_window_uses_full_range_at_16_bits():
    prepared = images.prepare_upload(wi.dicom_bytes(wi.ramp_12bit()), LIMIT)
    pixels = wi.decode_png(prepared.png)
    assert pixels.shape == (48, 64) and pixels.dtype == np.uint16
    assert pixels[:, 0].max() == 0 and pixels[:, -1].min() == WHITE16
    # Every stored level keeps a value of its own.
    assert len(np.unique(pixels)) == len(np.unique(wi.ramp_12bit()))
    thumb = wi.decode_png(prepared.thumbnail_png)
    assert thumb.dtype == np.uint8 and thumb.max() == 255
    assert np.all(np.diff(pixels[0].astype(int)) >= 0)


def test_dicom_monochrome1_is_inverted():
    raw = wi.ramp_12bit()
    mono2 = wi.decode_png(images.prepare_upload(wi.dicom_bytes(raw), LIMIT).png).astype(int)
    mono1 = wi.decode_png(
        images.prepare_upload(wi.dicom_bytes(raw, photometric="MONOCHROME1"), LIMIT).png
    ).astype(int)
    assert np.array_equal(mono1, WHITE16 - mono2)


def test_dicom_window_level_clips_outside_the_window():
    raw = wi.ramp_12bit()
    pixels = wi.decode_png(
        images.prepare_upload(wi.dicom_bytes(raw, window=(2048, 1024)), LIMIT).png
    )
    low, high = 2048 - 512, 2048 + 512
    assert np.all(pixels[raw <= low - 1] == 0)
    assert np.all(pixels[raw >= high + 1] == WHITE16)
    inside = (raw > low + 50) & (raw < high - 50)
    assert np.all((pixels[inside] > 0) & (pixels[inside] < WHITE16))


def test_dicom_rescale_is_applied_before_the_window():
    raw = wi.ramp_12bit()
    # Slope 2, intercept -1000 moves the window's input: output must equal a
    # window on the rescaled values.
    with_rescale = wi.decode_png(
        images.prepare_upload(
            wi.dicom_bytes(raw, window=(3000, 2000), rescale=(2, -1000)), LIMIT
        ).png
    )
    rescaled = raw.astype(np.float64) * 2 - 1000
    assert np.all(with_rescale[rescaled <= 2000 - 1] == 0)
    assert np.all(with_rescale[rescaled >= 4000 + 1] == WHITE16)


def test_dicom_voi_lut_is_used():
    raw = np.tile(np.arange(0, 16, dtype=np.uint16), (4, 1))
    # A LUT that reverses 16 input values onto 0..65535.
    lut = np.linspace(65535, 0, 16).astype(np.uint16)
    pixels = wi.decode_png(
        images.prepare_upload(wi.dicom_bytes(raw, bits_stored=4, voi_lut=lut), LIMIT).png
    )
    assert pixels[0, 0] == WHITE16 and pixels[0, -1] == 0


@pytest.mark.parametrize(
    "kwargs, problem",
    [
        ({"with_pixels": False}, "no pixel data"),
        ({"frames": 3}, "3 frames"),
        ({"photometric": "YBR_FULL"}, "not supported"),
    ],
    ids=["no-pixels", "multi-frame", "colour-model"],
)
def test_unusable_dicoms_are_rejected(kwargs, problem):
    with pytest.raises(ImageError, match=problem):
        images.prepare_upload(wi.dicom_bytes(wi.ramp_12bit(), **kwargs), LIMIT)


def test_truncated_dicom_pixel_data_is_rejected_without_patient_data():
    data = wi.truncated(wi.dicom_bytes(wi.ramp_12bit(200, 200)), 0.7)
    with pytest.raises(ImageError) as info:
        images.prepare_upload(data, LIMIT)
    message = str(info.value)
    assert "DICOM" in message
    for secret in (wi.PATIENT_NAME, wi.PATIENT_ID, "Doe", wi.PATIENT_BIRTH_DATE):
        assert secret not in message


def test_dicom_bomb_is_refused_before_decoding():
    data = wi.dicom_bytes(wi.ramp_12bit(100, 100))
    with pytest.raises(ImageError, match="decompression bomb"):
        images.prepare_upload(data, 5000)


def test_converted_dicom_png_carries_no_patient_data():
    png = images.prepare_upload(wi.dicom_bytes(wi.ramp_12bit()), LIMIT).png
    for secret in (b"Doe", wi.PATIENT_ID.encode(), wi.PATIENT_BIRTH_DATE.encode(), b"Elsewhere"):
        assert secret not in png


def test_heatmap_overlay_is_transparent_where_cold():
    heat = np.zeros((8, 8), dtype=np.float32)
    heat[2, 3] = 1.0
    rgba = wi.decode_png(heatmap.overlay_png(heat))
    assert rgba.shape == (8, 8, 4)
    assert rgba[0, 0, 3] == 0
    assert rgba[2, 3, 3] > 100 and rgba[2, 3, 0] == 255


@pytest.mark.parametrize("bad", [np.zeros((2, 2, 2)), np.array([[np.nan]]), np.zeros((0, 3))])
def test_heatmap_overlay_rejects_malformed_heatmaps(bad):
    with pytest.raises(ValueError):
        heatmap.overlay_png(bad)
