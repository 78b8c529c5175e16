"""The one conversion from PNG, JPEG and DICOM files to the model's PNG input."""

import io
import struct
import zlib

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.uid import JPEGLosslessSV1

from components import image_files
from components.image_files import UnreadableImageError, read_radiograph
from dicom_testlib import PATIENT_ID, dicom_bytes as _dicom, ramp as _ramp

# Upright test film: rows differ from columns and no two corners are alike, so every
# EXIF orientation gives a different stored array.
_UPRIGHT = np.add.outer(np.arange(24) * 5, np.arange(40) * 3).astype(np.uint8)


def _png(pixels: np.ndarray, orientation: int | None = None, mode: str | None = None) -> bytes:
    image = Image.fromarray(pixels) if mode is None else Image.fromarray(pixels).convert(mode)
    out = io.BytesIO()
    kwargs = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    image.save(out, format="PNG", **kwargs)
    return out.getvalue()


def _decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def _stored_for(upright: np.ndarray, orientation: int) -> np.ndarray:
    """The array a camera stores so that a viewer applying ``orientation`` shows ``upright``."""
    stored = {
        1: upright,
        2: upright[:, ::-1],
        3: upright[::-1, ::-1],
        4: upright[::-1, :],
        5: upright.T,
        6: np.rot90(upright, 1),  # shown after a 90 degree clockwise turn
        7: upright[::-1, ::-1].T,
        8: np.rot90(upright, -1),
    }[orientation]
    return np.ascontiguousarray(stored)


def test_upright_8bit_png_is_passed_on_as_it_is_with_its_facts():
    data = _png(_UPRIGHT)
    radiograph = read_radiograph(data)
    assert radiograph.png == data
    assert (radiograph.image_format, radiograph.height, radiograph.width) == ("png", 24, 40)
    assert (radiograph.bit_depth, radiograph.channels) == (8, 1)
    assert radiograph.exif_orientation == 1
    assert (radiograph.modality, radiograph.laterality) == (image_files.MODALITY_UNKNOWN, "")


def test_12bit_data_in_a_16bit_png_keeps_every_level():
    values = _ramp(12, cols=4096)
    data = _png(values)
    radiograph = read_radiograph(data)
    assert radiograph.png == data and radiograph.bit_depth == 16
    np.testing.assert_array_equal(_decode(radiograph.png), values)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_exactly(orientation):
    radiograph = read_radiograph(_png(_stored_for(_UPRIGHT, orientation), orientation))
    np.testing.assert_array_equal(_decode(radiograph.png), _UPRIGHT)
    assert radiograph.exif_orientation == orientation
    assert (radiograph.height, radiograph.width) == _UPRIGHT.shape


def test_a_rotated_16bit_png_stays_16bit():
    upright = _ramp(12, rows=8, cols=20)
    radiograph = read_radiograph(_png(_stored_for(upright, 6), 6))
    pixels = _decode(radiograph.png)
    assert pixels.dtype == np.uint16
    np.testing.assert_array_equal(pixels, upright)


def test_exif_rotated_jpeg_is_upright():
    # Left half dark, right half bright: JPEG's losses cannot swap them.
    upright = np.zeros((32, 64), dtype=np.uint8)
    upright[:, 32:] = 220
    out = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_stored_for(upright, 6)).save(out, format="JPEG", quality=95,
                                                  exif=exif.tobytes())
    radiograph = read_radiograph(out.getvalue())
    pixels = _decode(radiograph.png).astype(int)
    assert (radiograph.image_format, radiograph.exif_orientation) == ("jpeg", 6)
    assert pixels.shape == (32, 64) and (radiograph.height, radiograph.width) == (32, 64)
    assert pixels[:, :28].max() < 30 and pixels[:, 36:].min() > 190


@pytest.mark.parametrize("mode, bit_depth, channels", [
    ("1", 1, 1), ("P", 8, 3), ("LA", 8, 2), ("RGB", 8, 3), ("RGBA", 8, 4)])
def test_png_colour_models_are_named(mode, bit_depth, channels):
    radiograph = read_radiograph(_png(_UPRIGHT, mode=mode))
    assert (radiograph.bit_depth, radiograph.channels) == (bit_depth, channels)


def test_cmyk_jpeg_counts_four_channels_and_reaches_the_model_as_rgb():
    out = io.BytesIO()
    Image.fromarray(_UPRIGHT).convert("CMYK").save(out, format="JPEG")
    radiograph = read_radiograph(out.getvalue())
    assert radiograph.channels == 4
    assert _decode(radiograph.png).shape == _UPRIGHT.shape + (3,)


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))


def test_16bit_colour_png_that_needs_rotating_is_refused():
    # Pillow writes no 16-bit colour PNG, so the file is put together by chunks.
    header = struct.pack(">IIBBBBB", 4, 2, 16, 2, 0, 0, 0)
    rows = b"".join(b"\x00" + b"\x12\x34" * 3 * 4 for _ in range(2))
    exif = Image.Exif()
    exif[0x0112] = 3
    tiff = exif.tobytes().removeprefix(b"Exif\x00\x00")  # eXIf holds the TIFF part
    data = (image_files.PNG_MAGIC + _chunk(b"IHDR", header) + _chunk(b"eXIf", tiff)
            + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b""))
    with pytest.raises(UnreadableImageError, match="16-bit colour PNG"):
        read_radiograph(data)
    # Upright, the same file is passed on untouched (the model reads all 16 bits).
    upright = (image_files.PNG_MAGIC + _chunk(b"IHDR", header)
               + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b""))
    radiograph = read_radiograph(upright)
    assert radiograph.png == upright and (radiograph.bit_depth, radiograph.channels) == (16, 3)


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"), (b"GIF89a" + bytes(100), "unsupported file type"),
    (_png(_UPRIGHT)[:60], "truncated or corrupt")])
def test_unreadable_files_are_refused_with_the_reason(data, reason):
    with pytest.raises(UnreadableImageError, match=reason):
        read_radiograph(data)


def test_dicom_facts_modality_bits_and_laterality():
    radiograph = read_radiograph(_dicom(_ramp(), Modality="DX", ImageLaterality="L",
                                        Laterality="R"))
    assert (radiograph.image_format, radiograph.modality, radiograph.bit_depth) == (
        "dicom", "DX", 12)
    assert (radiograph.height, radiograph.width, radiograph.channels) == (16, 64, 1)
    # The image's own laterality wins over the series'.
    assert radiograph.laterality == "L"
    assert read_radiograph(_dicom(_ramp(), Laterality="R")).laterality == "R"
    assert read_radiograph(_dicom(_ramp(), ImageLaterality="U")).laterality == ""
    assert read_radiograph(_dicom(_ramp())).modality == image_files.MODALITY_UNKNOWN


def test_dicom_of_8_stored_bits_becomes_an_8bit_png():
    pixels = _decode(read_radiograph(_dicom(_ramp(8), bits_stored=8)).png)
    assert pixels.dtype == np.uint8 and pixels.min() == 0 and pixels.max() == 255


@pytest.mark.parametrize("photometric, shape, inverted", [
    ("MONOCHROME2", None, False),
    ("MONOCHROME1", None, True),
    # DX/CR declare MONOCHROME1's inversion as Presentation LUT Shape INVERSE: once.
    ("MONOCHROME1", "INVERSE", True),
    ("MONOCHROME2", "INVERSE", True),
    ("MONOCHROME2", "IDENTITY", False),
])
def test_dicom_polarity_puts_bone_bright_exactly_once(photometric, shape, inverted):
    attributes = {"PhotometricInterpretation": photometric}
    if shape is not None:
        attributes["PresentationLUTShape"] = shape
    pixels = _decode(read_radiograph(_dicom(_ramp(), **attributes)).png).astype(int)
    rising = pixels[0, -1] > pixels[0, 0]
    assert rising != inverted
    assert {pixels[0, 0], pixels[0, -1]} == {0, 65535}


def test_contradictory_dicom_polarity_is_refused():
    with pytest.raises(UnreadableImageError, match="polarity is contradictory"):
        read_radiograph(_dicom(_ramp(), PhotometricInterpretation="MONOCHROME1",
                               PresentationLUTShape="IDENTITY"))


def test_dicom_sigmoid_window_is_applied():
    raw = _ramp(cols=4096)  # every 12-bit value once per row
    pixels = _decode(read_radiograph(_dicom(raw, WindowCenter=2048, WindowWidth=400,
                                            VOILUTFunction="SIGMOID")).png).astype(int)
    assert np.all(np.diff(pixels[0]) >= 0)
    assert abs(pixels[0, 2048] - 32768) <= 1  # half the output range at the centre
    assert pixels[0, 0] < 100 and pixels[0, -1] > 65435


def test_invalid_dicom_window_is_refused():
    with pytest.raises(UnreadableImageError, match="display window is invalid"):
        read_radiograph(_dicom(_ramp(), WindowCenter=2048, WindowWidth=0))


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                                  "MR_small_jpeg_ls_lossless.dcm"])
def test_compressed_dicoms_decode_like_their_uncompressed_original(name):
    with open(get_testdata_file("MR_small.dcm"), "rb") as f:
        reference = read_radiograph(f.read())
    with open(get_testdata_file(name), "rb") as f:
        compressed = read_radiograph(f.read())
    np.testing.assert_array_equal(_decode(compressed.png), _decode(reference.png))
    assert compressed.modality == "MR"


def test_jpeg_lossless_dicom_the_common_cr_dx_syntax_decodes(tmp_path):
    import gdcm  # pylint: disable=import-outside-toplevel  (python-gdcm; only this test)
    raw = _ramp()
    plain = tmp_path / "plain.dcm"
    plain.write_bytes(_dicom(raw, Modality="CR"))
    reader = gdcm.ImageReader()
    reader.SetFileName(str(plain))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(tmp_path / "lossless.dcm"))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()
    data = (tmp_path / "lossless.dcm").read_bytes()
    assert pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID == JPEGLosslessSV1
    np.testing.assert_array_equal(_decode(read_radiograph(data).png),
                                  _decode(read_radiograph(plain.read_bytes()).png))


def test_dicom_errors_name_the_problem_and_no_patient_data():
    data = _dicom(_ramp(rows=200, cols=200))
    with pytest.raises(UnreadableImageError) as info:
        read_radiograph(data[: int(len(data) * 0.7)])
    assert "DICOM" in str(info.value)
    assert "Doe" not in str(info.value) and PATIENT_ID not in str(info.value)
    with pytest.raises(UnreadableImageError, match="decompression bomb"):
        read_radiograph(data, max_pixels=1000)
    png = read_radiograph(data).png
    assert b"Doe" not in png and PATIENT_ID.encode() not in png
