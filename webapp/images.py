"""Checks uploaded radiographs and prepares them for grading and for the history pages.

The conversion to the model's input is the shared one (components/image_files.py), the
same `koa ingest` and `koa grade` use: a PNG goes to the model untouched (16-bit data
keeps all 16 bits), a JPEG as a lossless PNG of its upright pixels, a DICOM as the grey
image its modality LUT, VOI LUT / window and polarity define. Only the thumbnail is
mapped to 8-bit grey, for display.
"""

import dataclasses
import io

import numpy as np
from PIL import Image

from components import image_files

THUMBNAIL_SIZE = (160, 160)


@dataclasses.dataclass(frozen=True)
class PreparedImage:
    """An upload that passed every check.

    Attributes:
        png: PNG bytes, exactly what is sent to the model server (8- or 16-bit).
        source_format: "png", "jpeg" or "dicom".
        width: Width in pixels.
        height: Height in pixels.
        thumbnail_png: A small 8-bit grey PNG for history pages.
        laterality: "L", "R" or "B" from a DICOM's laterality attribute, else "".
    """

    png: bytes
    source_format: str
    width: int
    height: int
    thumbnail_png: bytes
    laterality: str = ""


def _to_gray8(image: Image.Image) -> Image.Image:
    if image.mode == "L":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # High bit depth: map the film's own value range onto 8 bits for display.
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        if high <= low:
            return Image.new("L", image.size, 128)
        scaled = np.rint((values - low) / (high - low) * 255.0).astype(np.uint8)
        return Image.fromarray(scaled)
    if image.mode in ("LA", "RGBA", "PA", "P"):
        image = image.convert("RGB")
    return image.convert("L")


def _thumbnail(png: bytes) -> bytes:
    with Image.open(io.BytesIO(png)) as image:
        thumb = _to_gray8(image)
        thumb.thumbnail(THUMBNAIL_SIZE)
        out = io.BytesIO()
        thumb.save(out, format="PNG")
    return out.getvalue()


def prepare_upload(data: bytes, max_pixels: int) -> PreparedImage:
    """Validates an upload and converts it to the model's PNG input.

    Args:
        data: The uploaded file's bytes.
        max_pixels: Largest width*height accepted.

    Returns:
        The prepared image.

    Raises:
        ImageError: naming the problem (empty, wrong type, truncated, corrupt,
            too many pixels, unsupported DICOM); see `image_files.read_radiograph`.
    """
    radiograph = image_files.read_radiograph(data, max_pixels)
    return PreparedImage(
        png=radiograph.png,
        source_format=radiograph.image_format,
        width=radiograph.width,
        height=radiograph.height,
        thumbnail_png=_thumbnail(radiograph.png),
        laterality=radiograph.laterality,
    )
