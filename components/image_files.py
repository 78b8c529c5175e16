"""Radiograph files (PNG, JPEG, DICOM) to the PNG bytes the model takes, with image facts.

The one way a file becomes the model's input: `koa ingest`, the web app and `koa grade`
all call `read_radiograph`, so training and grading see the same pixels. It does only
what the model's graph cannot: apply the EXIF orientation, and turn DICOM pixel data
into displayed values (modality LUT, VOI LUT or window, MONOCHROME1 / Presentation LUT
Shape polarity). Bit depth and colour are left alone: a PNG keeps its bytes (a 16-bit
film keeps all 16 bits), a JPEG becomes a lossless PNG of its decoded pixels, a DICOM a
16-bit grey PNG (8-bit when it stores 8 bits or fewer). Resizing, normalising and
equalising stay in the TensorFlow graph (components/preprocessing.py).

TensorFlow-free: the web app and the CLI import it. Patient-identifying DICOM
attributes are never read into the result, logged or put into an error message.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import struct
import warnings

import numpy as np
import pydicom
from PIL import Image, ImageOps, UnidentifiedImageError
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut, apply_windowing

logger = logging.getLogger(__name__)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
DICOM_MAGIC_OFFSET = 128
DICOM_MAGIC = b"DICM"

FORMAT_PNG = "png"
FORMAT_JPEG = "jpeg"
FORMAT_DICOM = "dicom"
FORMATS = (FORMAT_PNG, FORMAT_JPEG, FORMAT_DICOM)

# What a file that names no modality (PNG, JPEG, a DICOM without (0008,0060)) records.
MODALITY_UNKNOWN = "unknown"
# EXIF Orientation 1: stored upright (also what a file without the tag means).
ORIENTATION_UPRIGHT = 1
# Largest width*height read by default (the web app sets its own): well above a
# full-resolution DR knee film (~3000 x 3000), far below a decompression bomb.
DEFAULT_MAX_PIXELS = 64_000_000

_EXIF_ORIENTATION_TAG = 0x0112
# Fast zlib level: a few percent bigger files, several times faster on large DICOMs.
_PNG_COMPRESS_LEVEL = 3
# PNG IHDR colour type -> samples per pixel (palette entries are RGB).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}
_PILLOW_CHANNELS = {"1": 1, "L": 1, "P": 3, "LA": 2, "RGB": 3, "YCbCr": 3, "RGBA": 4,
                    "CMYK": 4, "I;16": 1, "I": 1, "F": 1}
# Pillow modes PNG cannot hold as they are -> the mode written (anything else -> RGB).
_PNG_MODE_OF = {"1": "L", "I": "I;16"}
_SUPPORTED_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2", "RGB")
_LATERALITIES = ("L", "R", "B")


class UnreadableImageError(ValueError):
    """The file is not a radiograph this module can read; the message says why.

    Messages are meant for the person who supplied the file and never contain
    patient data.
    """


@dataclasses.dataclass(frozen=True)
class Radiograph:
    """A readable radiograph: the model's input bytes and facts about the source file.

    Attributes:
        png: PNG bytes the model takes: the file itself for a single-frame upright
            PNG, otherwise a lossless PNG of the (upright) pixels; 8- or 16-bit,
            grey or colour, as the source.
        image_format: Source format, one of FORMATS ("png", "jpeg", "dicom").
        height: Rows of ``png`` in pixels (after the EXIF orientation is applied).
        width: Columns of ``png`` in pixels.
        bit_depth: Bits per sample stored in the source: the PNG header's bit depth
            (1, 2, 4, 8 or 16), 8 for JPEG, DICOM Bits Stored (e.g. 12).
        channels: Samples per pixel of the source: 1 grey, 2 grey + alpha,
            3 colour (RGB, YCbCr, palette), 4 colour + alpha or CMYK.
        exif_orientation: EXIF Orientation of the source (1..8; 1 = upright, also
            when the file has no such tag). Already applied to ``png``.
        modality: DICOM Modality (e.g. "DX", "CR"), or MODALITY_UNKNOWN.
        laterality: "L", "R" or "B" (both knees) from DICOM Image Laterality or
            Laterality; "" when the file does not say.
    """

    png: bytes
    image_format: str
    height: int
    width: int
    bit_depth: int
    channels: int
    exif_orientation: int = ORIENTATION_UPRIGHT
    modality: str = MODALITY_UNKNOWN
    laterality: str = ""


def detect_format(data: bytes) -> str:
    """Names the file type from its leading bytes (never from the file name).

    Returns:
        One of FORMATS.

    Raises:
        UnreadableImageError: if ``data`` is empty or not PNG, JPEG or DICOM Part 10.
    """
    if not data:
        raise UnreadableImageError("the file is empty")
    if data.startswith(PNG_MAGIC):
        return FORMAT_PNG
    if data.startswith(JPEG_MAGIC):
        return FORMAT_JPEG
    if data[DICOM_MAGIC_OFFSET:DICOM_MAGIC_OFFSET + len(DICOM_MAGIC)] == DICOM_MAGIC:
        return FORMAT_DICOM
    raise UnreadableImageError(
        "unsupported file type: expected a PNG, JPEG or DICOM radiograph")


def read_radiograph(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Radiograph:
    """Converts a PNG, JPEG or DICOM file to the model's PNG input and reads its facts.

    Every pixel is decoded, so a truncated file is refused here rather than at the
    model.

    Args:
        data: The file's bytes.
        max_pixels: Largest width*height accepted (decompression-bomb guard).

    Returns:
        The radiograph (see `Radiograph`).

    Raises:
        UnreadableImageError: naming the problem: empty, unsupported type, corrupt or
            truncated, too many pixels, a 16-bit colour PNG that would need rotating,
            an unsupported DICOM (no pixels, several frames, colour model, transfer
            syntax without an installed decoder, contradictory polarity).
    """
    image_format = detect_format(data)
    if image_format == FORMAT_DICOM:
        return _read_dicom(data, max_pixels)
    return _read_raster(data, image_format, max_pixels)


def _encode_png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)
    return out.getvalue()


def _open_raster(data: bytes, image_format: str, max_pixels: int) -> Image.Image:
    name = image_format.upper()
    try:
        with warnings.catch_warnings():
            # Pillow only warns below 2x its own limit; treat any bomb warning as fatal.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UnreadableImageError(
            "image dimensions are too large; refused as a possible decompression bomb"
        ) from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UnreadableImageError(f"the {name} file is corrupt ({e})") from e
    width, height = image.size
    if width * height > max_pixels:
        raise UnreadableImageError(
            f"image is {width}x{height} = {width * height} pixels, above the limit of "
            f"{max_pixels}; refused as a possible decompression bomb")
    try:
        image.load()
    # Broken files raise many types from deep inside the decoders (struct and zlib
    # errors among them); each means the file cannot be read.
    except Exception as e:  # noqa: BLE001
        raise UnreadableImageError(
            f"the {name} file is truncated or corrupt ({type(e).__name__}: {e})") from e
    return image


def _png_header(data: bytes) -> tuple[int, int]:
    """Bit depth and colour type from the IHDR chunk, which PNG puts first."""
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise UnreadableImageError("the PNG file is corrupt (no IHDR header)")
    bit_depth, colour_type = struct.unpack(">BB", data[24:26])
    return bit_depth, colour_type


def _exif_orientation(image: Image.Image) -> int:
    value = image.getexif().get(_EXIF_ORIENTATION_TAG, ORIENTATION_UPRIGHT)
    if not isinstance(value, int) or not 1 <= value <= 8:
        # Viewers ignore an invalid tag and show the pixels as stored; so do we.
        logger.warning("ignoring invalid EXIF orientation %r", value)
        return ORIENTATION_UPRIGHT
    return value


def _read_raster(data: bytes, image_format: str, max_pixels: int) -> Radiograph:
    image = _open_raster(data, image_format, max_pixels)
    orientation = _exif_orientation(image)
    if image_format == FORMAT_PNG:
        bit_depth, colour_type = _png_header(data)
        channels = _PNG_CHANNELS.get(colour_type, _PILLOW_CHANNELS.get(image.mode, 3))
    else:
        bit_depth, channels = 8, _PILLOW_CHANNELS.get(image.mode, 3)
    single_frame = getattr(image, "n_frames", 1) == 1
    if image_format == FORMAT_PNG and single_frame and orientation == ORIENTATION_UPRIGHT:
        # The model decodes PNG itself: the file's own bytes keep every bit.
        png = data
    else:
        if bit_depth == 16 and channels > 1:
            # Pillow reads 16-bit colour PNG as 8-bit; rotating it would drop 8 bits.
            raise UnreadableImageError(
                "16-bit colour PNG with an EXIF orientation (or several frames) cannot "
                "be converted without losing precision; save it as grey or upright")
        # Graded the way a viewer shows it.
        image = ImageOps.exif_transpose(image)
        if image.mode not in ("L", "RGB", "I;16"):
            image = image.convert(_PNG_MODE_OF.get(image.mode, "RGB"))
        png = _encode_png(image)
    return Radiograph(png=png, image_format=image_format, height=image.height,
                      width=image.width, bit_depth=bit_depth, channels=channels,
                      exif_orientation=orientation)


def _read_dicom(data: bytes, max_pixels: int) -> Radiograph:
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError) as e:
        raise UnreadableImageError(f"not a readable DICOM file ({type(e).__name__})") from e
    if "PixelData" not in ds:
        raise UnreadableImageError("DICOM file has no pixel data (not an image)")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows <= 0 or cols <= 0:
        raise UnreadableImageError("DICOM file has no image size (Rows/Columns missing)")
    if rows * cols > max_pixels:
        raise UnreadableImageError(
            f"DICOM image is {cols}x{rows} = {rows * cols} pixels, above the limit of "
            f"{max_pixels}; refused as a possible decompression bomb")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise UnreadableImageError(
            f"DICOM file has {frames} frames; a single-frame radiograph is needed")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in _SUPPORTED_PHOTOMETRIC:
        raise UnreadableImageError(
            f"DICOM photometric interpretation {photometric or 'missing'} is not supported "
            f"(supported: {', '.join(_SUPPORTED_PHOTOMETRIC)})")
    bits_stored = int(ds.get("BitsStored", 8) or 8)
    try:
        pixels = ds.pixel_array
    # pydicom's decoders raise these for truncated data and for a transfer syntax
    # no installed plugin decodes.
    except (ValueError, RuntimeError, NotImplementedError, AttributeError, EOFError) as e:
        syntax = getattr(ds.file_meta, "TransferSyntaxUID", None)
        name = getattr(syntax, "name", "unknown transfer syntax")
        raise UnreadableImageError(
            f"DICOM pixel data could not be decoded ({name}): truncated, corrupt or "
            f"compressed in a way no installed decoder reads ({type(e).__name__})") from e
    if photometric == "RGB":
        gray = _rgb_to_gray(pixels, bits_stored)
    else:
        gray = _displayed_values(pixels, ds, photometric, bits_stored)
    return Radiograph(
        png=_encode_png(Image.fromarray(gray)), image_format=FORMAT_DICOM,
        height=rows, width=cols, bit_depth=bits_stored,
        channels=int(ds.get("SamplesPerPixel", 1) or 1),
        modality=str(ds.get("Modality", "") or "").strip().upper() or MODALITY_UNKNOWN,
        laterality=_laterality(ds))


def _laterality(ds: pydicom.Dataset) -> str:
    # Image Laterality (0020,0062) is the image's own; Laterality (0020,0060) the series'.
    for keyword in ("ImageLaterality", "Laterality"):
        value = str(ds.get(keyword, "") or "").strip().upper()
        if value in _LATERALITIES:
            return value
    return ""


def _output_dtype(bits: int) -> type:
    """8-bit output for data of 8 bits or fewer, else 16-bit: never fewer levels than stored."""
    return np.uint8 if bits <= 8 else np.uint16


def _scale(values: np.ndarray, low: float, high: float, dtype: type) -> np.ndarray:
    """Maps low..high linearly onto the full range of ``dtype`` (a constant -> mid-grey)."""
    top = np.iinfo(dtype).max
    if high <= low:
        return np.full(values.shape, (top + 1) // 2, dtype=dtype)
    scaled = (values.astype(np.float64) - low) / (high - low) * top
    return np.rint(np.clip(scaled, 0, top)).astype(dtype)


def _rgb_to_gray(pixels: np.ndarray, bits_stored: int) -> np.ndarray:
    rgb = pixels.astype(np.float64)
    gray = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    return _scale(gray, 0, 2**bits_stored - 1, _output_dtype(bits_stored))


def _inverted(ds: pydicom.Dataset, photometric: str) -> bool:
    """Whether the displayed values must be inverted so that bone is bright.

    MONOCHROME1 stores bone dark. In DX and CR images, Presentation LUT Shape INVERSE
    is how that same inversion is declared (PS3.3 C.8.11.6.1), so it is applied once.
    """
    shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
    if "PresentationLUTSequence" in ds:
        raise UnreadableImageError("DICOM Presentation LUT Sequence is not supported")
    if shape not in ("", "IDENTITY", "INVERSE"):
        raise UnreadableImageError(f"DICOM Presentation LUT Shape {shape} is not supported")
    if photometric == "MONOCHROME1" and shape == "IDENTITY":
        raise UnreadableImageError(
            "DICOM polarity is contradictory (MONOCHROME1 with Presentation LUT Shape "
            "IDENTITY); re-export the film")
    return photometric == "MONOCHROME1" or shape == "INVERSE"


def _displayed_values(pixels: np.ndarray, ds: pydicom.Dataset, photometric: str,
                      bits_stored: int) -> np.ndarray:
    """Modality LUT, then VOI LUT or window, then polarity: grey values, bone bright."""
    values = apply_modality_lut(pixels, ds)
    try:
        if "VOILUTSequence" in ds:
            lut_bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
            dtype = _output_dtype(lut_bits)
            # The VOI LUT is indexed by the (integer) output of the modality LUT.
            looked_up = apply_voi_lut(np.rint(values).astype(np.int64), ds, index=0)
            out = _scale(looked_up, 0, 2**lut_bits - 1, dtype)
        elif "WindowCenter" in ds and "WindowWidth" in ds:
            dtype = _output_dtype(bits_stored)
            out = _window(values, ds, dtype)
        else:
            # No display window stored: the image's own range.
            dtype = _output_dtype(bits_stored)
            out = _scale(values, float(values.min()), float(values.max()), dtype)
    except ValueError as e:  # pydicom: a window width < 1, an unknown VOI LUT Function
        raise UnreadableImageError(f"DICOM display window is invalid ({e})") from e
    if _inverted(ds, photometric):
        out = np.iinfo(dtype).max - out
    return out


def _window(values: np.ndarray, ds: pydicom.Dataset, dtype: type) -> np.ndarray:
    """The first stored window (LINEAR, LINEAR_EXACT or SIGMOID) onto ``dtype``'s range.

    pydicom's windowing writes onto the range of the dataset's Bits Stored; a small
    dataset holding only the window, unsigned with ``dtype``'s bits and no rescale
    (already applied), makes that range exactly ``dtype``'s.
    """
    window = pydicom.Dataset()
    window.PhotometricInterpretation = "MONOCHROME2"
    window.BitsStored = np.iinfo(dtype).bits
    window.PixelRepresentation = 0
    window.WindowCenter = ds.WindowCenter
    window.WindowWidth = ds.WindowWidth
    if "VOILUTFunction" in ds:
        window.VOILUTFunction = ds.VOILUTFunction
    windowed = apply_windowing(values.astype(np.float64), window, index=0)
    return np.rint(np.clip(windowed, 0, np.iinfo(dtype).max)).astype(dtype)
