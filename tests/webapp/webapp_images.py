"""Test images: PNG/JPEG of chosen brightness, broken files, and DICOMs made with pydicom.

The tiny test model grades a uniform image of brightness v as floor(5 v), so
``png_of_grade(g)`` gives an image the model grades ``g``.
"""

import io
import struct
import zlib

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset

import dicom_testlib

PATIENT_NAME = "Doe^Janet^Q"
PATIENT_ID = "PID-7731-SECRET"
PATIENT_BIRTH_DATE = "19580412"
INSTITUTION = "St Elsewhere Hospital"


def png_bytes(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def png_of_grade(grade: int, size: int = 64) -> bytes:
    """A uniform 8-bit grayscale PNG the tiny model grades ``grade``."""
    value = int(round((0.1 + 0.2 * grade) * 255))
    return png_bytes(np.full((size, size), value, dtype=np.uint8))


def colour_png(size: int = 64) -> bytes:
    """A saturated orange RGB PNG: nothing like a radiograph; the tiny model flags it."""
    pixels = np.zeros((size, size, 3), dtype=np.uint8)
    pixels[..., 0] = 240
    pixels[..., 1] = 120
    return png_bytes(pixels)


def gradient_png(size: int = 96) -> bytes:
    ramp = np.tile(np.linspace(0, 255, size, dtype=np.float64), (size, 1))
    return png_bytes(np.rint(ramp).astype(np.uint8))


def jpeg_bytes(rgb: bool = True, size: int = 64) -> bytes:
    pixels = np.zeros((size, size, 3), dtype=np.uint8)
    pixels[..., 0] = 120
    pixels[..., 1] = 130
    pixels[..., 2] = 140
    image = Image.fromarray(pixels)
    if not rgb:
        image = image.convert("L")
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=95)
    return out.getvalue()


def png16_bytes(size: int = 32) -> bytes:
    """A 16-bit grayscale PNG spanning values 1000..3000."""
    values = np.linspace(1000, 3000, size * size).reshape(size, size).astype(np.uint16)
    out = io.BytesIO()
    Image.fromarray(values).save(out, format="PNG")
    return out.getvalue()


def truncated(data: bytes, keep: float = 0.6) -> bytes:
    return data[: int(len(data) * keep)]


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


def png_header_bomb(width: int = 60000, height: int = 60000) -> bytes:
    """A tiny PNG whose header claims a huge image (a classic decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    # A few rows of zeros: decoding all of it would need width*height bytes.
    idat = zlib.compress(b"\x00" * (width + 1) * 4, 9)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def dicom_bytes(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    window: tuple = None,
    rescale: tuple = None,
    voi_lut: np.ndarray = None,
    frames: int = 1,
    with_pixels: bool = True,
) -> bytes:
    """A knee DX DICOM with patient-identifying tags set (they must never leak).

    Args:
        pixels: uint16 array [rows, cols].
        photometric: MONOCHROME1 or MONOCHROME2.
        bits_stored: Bits used per pixel.
        window: (centre, width) to store, or None.
        rescale: (slope, intercept) modality LUT, or None.
        voi_lut: uint16 lookup table (first mapped value 0) to store, or None.
        frames: NumberOfFrames to claim.
        with_pixels: False leaves out PixelData.
    """
    attributes = dict(
        PatientName=PATIENT_NAME, PatientID=PATIENT_ID, PatientBirthDate=PATIENT_BIRTH_DATE,
        InstitutionName=INSTITUTION, Modality="DX", BodyPartExamined="KNEE",
        PhotometricInterpretation=photometric)
    if window is not None:
        attributes["WindowCenter"], attributes["WindowWidth"] = window
    if rescale is not None:
        attributes["RescaleSlope"], attributes["RescaleIntercept"] = rescale
        attributes["RescaleType"] = "US"
    if voi_lut is not None:
        item = Dataset()
        item.LUTDescriptor = [len(voi_lut), 0, 16]
        item.LUTData = np.asarray(voi_lut, dtype="<u2").tobytes()
        attributes["VOILUTSequence"] = pydicom.Sequence([item])
    return dicom_testlib.dicom_bytes(pixels, bits_stored, frames=frames,
                                     with_pixels=with_pixels, **attributes)


def ramp_12bit(rows: int = 48, cols: int = 64) -> np.ndarray:
    """12-bit values rising left to right from 0 to 4095."""
    row = np.linspace(0, 4095, cols)
    return np.rint(np.tile(row, (rows, 1))).astype(np.uint16)


def decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))
