"""Deterministic NON-knee images for measuring the out-of-distribution flag.

Things a clinician might upload by mistake, or a broken acquisition might produce: blank
frames, sensor noise, a plain gradient, a natural-photo-like colour texture, and a drawn
chest film (lungs, mediastinum, spine, ribs). None of them is a knee; the served model
should flag all of them. They are drawn, not collected, so tests and benchmarks can make
them anywhere.
"""

import io
from typing import Dict

import numpy as np
from PIL import Image, ImageFilter


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _pink_noise(rng: np.random.Generator, size: int, channels: int) -> np.ndarray:
    """1/f noise, the power spectrum of natural scenes, scaled to [0, 1]."""
    freq = np.hypot(*np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size)))
    freq[0, 0] = 1.0
    out = []
    for _ in range(channels):
        spectrum = (rng.normal(size=(size, size)) + 1j * rng.normal(size=(size, size))) / freq
        plane = np.real(np.fft.ifft2(spectrum))
        out.append((plane - plane.min()) / (plane.max() - plane.min()))
    return np.stack(out, axis=-1)


def _photo(rng: np.random.Generator, size: int) -> np.ndarray:
    """A colour scene-like texture: 1/f colour noise with a few bright and dark blobs."""
    image = _pink_noise(rng, size, 3) * np.array([0.9, 0.8, 0.6])
    yy, xx = np.mgrid[0:size, 0:size] / size
    for _ in range(4):
        cy, cx, r = rng.random(3) * [1, 1, 0.25] + [0, 0, 0.05]
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        image += blob[..., None] * rng.uniform(-0.5, 0.5, 3)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def _chest_film(rng: np.random.Generator, size: int) -> np.ndarray:
    """A frontal chest radiograph sketch: dark lungs, bright spine/mediastinum, ribs."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    image = np.full((size, size), 0.75)
    for cx in (0.3, 0.7):  # lungs
        lung = ((xx - cx) / 0.17) ** 2 + ((yy - 0.5) / 0.33) ** 2 < 1
        image[lung] = 0.25
    image[np.abs(xx - 0.5) < 0.07] = 0.9  # spine and mediastinum
    heart = ((xx - 0.56) / 0.14) ** 2 + ((yy - 0.62) / 0.12) ** 2 < 1
    image[heart] = 0.8
    for k in range(8):  # ribs: bright arcs over the lungs
        arc = np.abs(yy - (0.22 + 0.07 * k) - 0.08 * (xx - 0.5) ** 2 * 4) < 0.012
        image[arc & (np.abs(xx - 0.5) > 0.07) & (np.abs(xx - 0.5) < 0.4)] += 0.25
    image += rng.normal(0, 0.03, image.shape)
    pixels = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(size / 150)))


def probe_images(size: int = 224, seed: int = 0) -> Dict[str, bytes]:
    """Encoded non-knee images, keyed by what they are.

    Args:
      size: width and height in pixels.
      seed: random seed (the same seed gives the same bytes).

    Returns:
      {name: PNG or JPEG bytes}.
    """
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, size, dtype=np.float64)
    return {
        "blank_black": _png(np.zeros((size, size), np.uint8)),
        "blank_white": _png(np.full((size, size), 255, np.uint8)),
        "blank_gray": _png(np.full((size, size), 128, np.uint8)),
        "uniform_noise": _png(rng.integers(0, 256, (size, size), dtype=np.uint8)),
        "gaussian_noise_rgb": _png(np.clip(rng.normal(128, 50, (size, size, 3)), 0, 255)
                                   .astype(np.uint8)),
        "horizontal_gradient": _png(np.tile(ramp, (size, 1)).astype(np.uint8)),
        "radial_gradient": _png((255 * np.clip(np.hypot(*np.mgrid[-1:1:size * 1j,
                                                                  -1:1:size * 1j]), 0, 1))
                                .astype(np.uint8)),
        "photo_like_texture": _jpeg(_photo(rng, size)),
        "photo_like_texture_2": _jpeg(_photo(rng, size)),
        "chest_film": _png(_chest_film(rng, size)),
    }
