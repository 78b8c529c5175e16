"""Renders the served heatmap (Grad-CAM, Grad-CAM++ or LayerCAM) as a colour overlay PNG."""

import io

import numpy as np
from PIL import Image

# Anchor colours of a blue -> cyan -> yellow -> red scale (readable on grey X-rays).
_STOPS = np.array([0.0, 0.35, 0.65, 1.0])
_COLOURS = np.array(
    [[0, 0, 255], [0, 255, 255], [255, 255, 0], [255, 0, 0]], dtype=np.float64
)
_MAX_ALPHA = 0.6


def overlay_png(heatmap: np.ndarray) -> bytes:
    """Colours a heatmap; cold areas are transparent so the radiograph shows through.

    Args:
        heatmap: float array [H, W] with values in [0, 1].

    Returns:
        RGBA PNG bytes at the heatmap's own resolution (the browser stretches it
        over the radiograph, so no resampling is done here).

    Raises:
        ValueError: if the heatmap is not a finite 2-D array.
    """
    heat = np.asarray(heatmap, dtype=np.float64)
    if heat.ndim != 2 or heat.size == 0:
        raise ValueError(f"heatmap must be a non-empty 2-D array, got shape {heat.shape}")
    if not np.all(np.isfinite(heat)):
        raise ValueError("heatmap contains NaN or infinite values")
    heat = np.clip(heat, 0.0, 1.0)
    rgba = np.empty(heat.shape + (4,), dtype=np.uint8)
    for channel in range(3):
        rgba[..., channel] = np.rint(np.interp(heat, _STOPS, _COLOURS[:, channel]))
    rgba[..., 3] = np.rint(heat * _MAX_ALPHA * 255)
    out = io.BytesIO()
    Image.fromarray(rgba).save(out, format="PNG")
    return out.getvalue()
