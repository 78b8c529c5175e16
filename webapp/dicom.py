"""DICOM radiographs to 8-bit grayscale pixels for display and for the model.

Only pixel data and the display attributes (photometric interpretation, modality
and VOI LUTs, window centre/width) are read. Patient-identifying attributes are
never copied, logged or put into error messages: the dataset object does not
leave this module.
"""

import io

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from webapp.image_errors import ImageError

DICOM_MAGIC_OFFSET = 128
DICOM_MAGIC = b"DICM"

_SUPPORTED_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2", "RGB")


def looks_like_dicom(data: bytes) -> bool:
    """True if ``data`` has the DICOM Part 10 preamble marker."""
    return data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == DICOM_MAGIC


def _first(value) -> float:
    """Window centre/width may be multi-valued; the first pair is the default view."""
    if isinstance(value, pydicom.multival.MultiValue):
        value = value[0]
    return float(value)


def _window_to_uint8(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """Linear VOI window (DICOM PS3.3 C.11.2.1.2.1) mapped onto 0..255."""
    if width < 1:
        raise ImageError(f"DICOM window width {width} is invalid (must be >= 1)")
    low = center - 0.5 - (width - 1) / 2
    scaled = ((values - (center - 0.5)) / max(width - 1, 1) + 0.5) * 255.0
    out = np.clip(scaled, 0, 255)
    out = np.where(values <= low, 0.0, out)
    return np.rint(out).astype(np.uint8)


def _range_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:
        # A constant image carries no contrast; show it mid-grey rather than divide by 0.
        return np.full(values.shape, 128 if high == low else 0, dtype=np.uint8)
    scaled = (values.astype(np.float64) - low) / (high - low) * 255.0
    return np.rint(np.clip(scaled, 0, 255)).astype(np.uint8)


def _monochrome_to_uint8(pixels: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    values = apply_modality_lut(pixels, ds).astype(np.float64)
    if "VOILUTSequence" in ds:
        lut_item = ds.VOILUTSequence[0]
        bits = int(lut_item.LUTDescriptor[2])
        # The VOI LUT is indexed by the (integer) output of the modality LUT.
        looked_up = apply_voi_lut(np.rint(values).astype(np.int64), ds, index=0)
        out = _range_to_uint8(looked_up, 0, 2**bits - 1)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        out = _window_to_uint8(values, _first(ds.WindowCenter), _first(ds.WindowWidth))
    else:
        # No display window stored: use the image's own range (12/16-bit -> 8-bit).
        out = _range_to_uint8(values, float(values.min()), float(values.max()))
    if ds.PhotometricInterpretation == "MONOCHROME1":
        # MONOCHROME1 stores bone dark; radiologists (and the model) expect bone bright.
        out = 255 - out
    return out


def dicom_to_gray8(data: bytes, max_pixels: int) -> np.ndarray:
    """Decodes a single-frame DICOM image to display-ready 8-bit grayscale.

    Args:
        data: The bytes of a DICOM Part 10 file.
        max_pixels: Largest rows*columns accepted (decompression-bomb guard).

    Returns:
        uint8 array [rows, columns].

    Raises:
        ImageError: naming what is wrong (not DICOM, no pixels, multi-frame, too
            large, unsupported colour model or compression, truncated pixel data).
    """
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError) as e:
        raise ImageError(f"not a readable DICOM file ({type(e).__name__})") from e
    if "PixelData" not in ds:
        raise ImageError("DICOM file has no pixel data (not an image)")
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    if rows <= 0 or cols <= 0:
        raise ImageError("DICOM file has no image size (Rows/Columns missing)")
    if rows * cols > max_pixels:
        raise ImageError(
            f"DICOM image is {cols}x{rows} = {rows * cols} pixels, above the limit of "
            f"{max_pixels}; refused as a possible decompression bomb"
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise ImageError(f"DICOM file has {frames} frames; upload a single-frame radiograph")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in _SUPPORTED_PHOTOMETRIC:
        raise ImageError(
            f"DICOM photometric interpretation {photometric or 'missing'} is not supported "
            f"(supported: {', '.join(_SUPPORTED_PHOTOMETRIC)})"
        )
    try:
        pixels = ds.pixel_array
    except (ValueError, RuntimeError, NotImplementedError, AttributeError, EOFError) as e:
        syntax = getattr(ds.file_meta, "TransferSyntaxUID", None)
        name = getattr(syntax, "name", "unknown transfer syntax")
        raise ImageError(
            f"DICOM pixel data could not be decoded ({name}): truncated, corrupt or "
            f"compressed in an unsupported way ({type(e).__name__})"
        ) from e
    if photometric == "RGB":
        rgb = pixels.astype(np.float64)
        gray = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
        bits = int(ds.get("BitsStored", 8))
        return _range_to_uint8(gray, 0, 2**bits - 1)
    return _monochrome_to_uint8(pixels, ds)
