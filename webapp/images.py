"""Checks uploaded radiographs and converts them to the PNG bytes the model receives.

Format conversion is this module's job; colour, bit depth, resizing, normalising and
contrast enhancement are the model's (they live in its graph, which decodes 8/16-bit
gray or colour PNG and JPEG itself). So a PNG goes to the model untouched, a JPEG as a
lossless PNG of the same pixels (upright, as a viewer shows it), and a DICOM as the
8-bit image its VOI LUT / window defines. Only the thumbnail is mapped to 8-bit gray,
for display.
"""

import dataclasses
import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from webapp import dicom
from webapp.image_errors import ImageError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"

FORMAT_PNG = "png"
FORMAT_JPEG = "jpeg"
FORMAT_DICOM = "dicom"

THUMBNAIL_SIZE = (160, 160)
# Fast zlib level: a few percent bigger files, several times faster on large DICOMs.
_PNG_COMPRESS_LEVEL = 3


@dataclasses.dataclass(frozen=True)
class PreparedImage:
    """An upload that passed every check.

    Attributes:
        png: 8-bit grayscale PNG bytes, exactly what is sent to the model server.
        source_format: "png", "jpeg" or "dicom".
        width: Width in pixels.
        height: Height in pixels.
        thumbnail_png: A small PNG for history pages.
    """

    png: bytes
    source_format: str
    width: int
    height: int
    thumbnail_png: bytes


def detect_format(data: bytes) -> str:
    """Names the file type from its leading bytes (never from the file name).

    Raises:
        ImageError: if the file is empty or not PNG, JPEG or DICOM.
    """
    if not data:
        raise ImageError("the file is empty")
    if data.startswith(PNG_MAGIC):
        return FORMAT_PNG
    if data.startswith(JPEG_MAGIC):
        return FORMAT_JPEG
    if dicom.looks_like_dicom(data):
        return FORMAT_DICOM
    raise ImageError("unsupported file type: expected a PNG, JPEG or DICOM radiograph")


def _encode_png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)
    return out.getvalue()


def _thumbnail(image: Image.Image) -> bytes:
    thumb = image.copy()
    thumb.thumbnail(THUMBNAIL_SIZE)
    return _encode_png(thumb)


def _to_gray8(image: Image.Image) -> Image.Image:
    if image.mode == "L":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # High bit depth PNG: map its own value range onto 8 bits for display.
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        if high <= low:
            return Image.new("L", image.size, 128)
        scaled = np.rint((values - low) / (high - low) * 255.0).astype(np.uint8)
        return Image.fromarray(scaled)
    if image.mode in ("LA", "RGBA", "PA", "P"):
        image = image.convert("RGB")
    return image.convert("L")


def _single_frame(image: Image.Image) -> bool:
    return getattr(image, "n_frames", 1) == 1


def _open_raster(data: bytes, expected_format: str, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # Pillow only warns below 2x its own limit; treat any bomb warning as fatal.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(
            "image dimensions are too large; refused as a possible decompression bomb"
        ) from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"the {expected_format.upper()} file is corrupt ({e})") from e
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(
            f"image is {width}x{height} = {width * height} pixels, above the limit of "
            f"{max_pixels}; refused as a possible decompression bomb"
        )
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(
            f"the {expected_format.upper()} file is truncated or corrupt ({e})"
        ) from e
    return image


def prepare_upload(data: bytes, max_pixels: int) -> PreparedImage:
    """Validates an upload and converts it to the model's PNG input.

    Args:
        data: The uploaded file's bytes.
        max_pixels: Largest width*height accepted.

    Returns:
        The prepared image.

    Raises:
        ImageError: naming the problem (empty, wrong type, truncated, corrupt,
            too many pixels, unsupported DICOM).
    """
    source_format = detect_format(data)
    if source_format == FORMAT_DICOM:
        gray = Image.fromarray(dicom.dicom_to_gray8(data, max_pixels))
        png = _encode_png(gray)
    else:
        image = _open_raster(data, source_format, max_pixels)
        if source_format == FORMAT_PNG and _single_frame(image):
            png = data
        else:
            if source_format == FORMAT_JPEG:
                # Show and grade the picture the way a viewer displays it.
                image = ImageOps.exif_transpose(image)
            if image.mode not in ("L", "RGB", "I;16"):
                image = image.convert("RGB")
            png = _encode_png(image)
        gray = _to_gray8(image)
    return PreparedImage(
        png=png,
        source_format=source_format,
        width=gray.width,
        height=gray.height,
        thumbnail_png=_thumbnail(gray),
    )
