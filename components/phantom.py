"""Draws one synthetic knee phantom: anatomy and per-grade findings, rendered to pixels.

`components/synthetic.py` writes whole data sets of them; see its docstring for what the
phantoms are. All randomness comes from the caller's generator, so the same generator
state draws the same pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Per-grade means, in phantom units (the image spans 2 units at scale 1, so
# one unit is about size/2 pixels). Joint space width narrows with grade.
_JOINT_SPACE = (0.085, 0.078, 0.062, 0.042, 0.018)
# Fraction by which the medial compartment is narrower than the mean.
_MEDIAL_ASYMMETRY = (0.04, 0.10, 0.20, 0.35, 0.50)
# Osteophyte length; grade 1 spurs are tiny and only sometimes present.
_OSTEOPHYTE = (0.0, 0.022, 0.05, 0.08, 0.11)
_OSTEOPHYTE_PRESENT = (0.0, 0.5, 0.9, 1.0, 1.0)
# Extra brightness and depth of the subchondral sclerosis band.
_SCLEROSIS = (0.0, 0.02, 0.06, 0.12, 0.18)
_SCLEROSIS_DEPTH = (0.02, 0.025, 0.035, 0.05, 0.07)


@dataclass(frozen=True)
class _Anatomy:
    """Per-patient bone shape, shared by both knees of the patient."""

    half_width: float  # femoral condyles' half width at the joint
    tibia_half_width: float
    condyle_centre: float  # |x| of each condyle's centre
    condyle_a: float  # condyle ellipse half width
    condyle_b: float  # condyle ellipse half height


@dataclass(frozen=True)
class _Knee:
    """Everything needed to draw one knee."""

    gap_medial: float
    gap_lateral: float
    spurs: tuple[float, float, float, float]  # femur med/lat, tibia med/lat
    sclerosis: float
    sclerosis_depth: float
    shift: tuple[float, float]
    scale: float
    cos_t: float
    sin_t: float
    brightness: float
    contrast: float


def draw_anatomy(rng: np.random.Generator) -> _Anatomy:
    half_width = 0.78 + 0.05 * (rng.random() - 0.5)
    condyle_a = 0.31 + 0.03 * rng.random()
    return _Anatomy(
        half_width=half_width,
        tibia_half_width=half_width + 0.02 + 0.03 * rng.random(),
        condyle_centre=half_width - condyle_a,
        condyle_a=condyle_a,
        condyle_b=0.20 + 0.04 * rng.random(),
    )


def draw_knee(rng: np.random.Generator, grade: int) -> _Knee:
    gap = _JOINT_SPACE[grade] * (1.0 + 0.16 * (rng.random() - 0.5))
    asym = _MEDIAL_ASYMMETRY[grade]
    spurs = []
    for _ in range(4):
        present = rng.random() < _OSTEOPHYTE_PRESENT[grade]
        length = _OSTEOPHYTE[grade] * (0.7 + 0.6 * rng.random())
        spurs.append(length if present else 0.0)
    angle = math.radians(8.0 * (rng.random() - 0.5))
    return _Knee(
        gap_medial=max(gap * (1.0 - asym), 0.004),
        gap_lateral=gap * (1.0 + 0.4 * asym),
        spurs=tuple(spurs),
        sclerosis=_SCLEROSIS[grade] * (0.8 + 0.4 * rng.random()),
        sclerosis_depth=_SCLEROSIS_DEPTH[grade],
        shift=(0.12 * (rng.random() - 0.5), 0.12 * (rng.random() - 0.5)),
        scale=0.92 + 0.16 * rng.random(),
        # Rounded so libm differences in the last bit cannot change a pixel.
        cos_t=round(math.cos(angle), 12),
        sin_t=round(math.sin(angle), 12),
        brightness=0.12 * (rng.random() - 0.5),
        contrast=0.85 + 0.3 * rng.random(),
    )


def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres in image units: u (columns) and v (rows), both in (-1, 1)."""
    centres = (np.arange(size, dtype=np.float64) + 0.5) / size * 2.0 - 1.0
    return np.meshgrid(centres, centres)


def _ramp(distance: np.ndarray, pixel: float) -> np.ndarray:
    """Anti-aliased inside mask from a signed distance (positive inside)."""
    return np.clip(distance / pixel + 0.5, 0.0, 1.0)


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of a small random grid to size x size (smooth texture)."""
    rows, cols = grid.shape
    r = np.linspace(0.0, rows - 1.0, size)
    c = np.linspace(0.0, cols - 1.0, size)
    r0 = np.minimum(r.astype(np.int64), rows - 2)
    c0 = np.minimum(c.astype(np.int64), cols - 2)
    fr = (r - r0)[:, None]
    fc = (c - c0)[None, :]
    top = grid[r0][:, c0] * (1 - fc) + grid[r0][:, c0 + 1] * fc
    bottom = grid[r0 + 1][:, c0] * (1 - fc) + grid[r0 + 1][:, c0 + 1] * fc
    return top * (1 - fr) + bottom * fr


def _noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Zero-mean, unit-variance noise from uniforms only (exactly reproducible)."""
    u = rng.random((3,) + shape)
    return (u[0] + u[1] + u[2] - 1.5) * 2.0


def render(grid: tuple[np.ndarray, np.ndarray], anatomy: _Anatomy, knee: _Knee,
            rng: np.random.Generator) -> np.ndarray:
    """Draws one left knee; returns uint8 pixels (medial side on the left)."""
    u, v = grid
    size = u.shape[0]
    # Phantom coordinates: undo the per-image shift, rotation and scale.
    du, dv = u - knee.shift[0], v - knee.shift[1]
    x = (knee.cos_t * du + knee.sin_t * dv) / knee.scale
    y = (-knee.sin_t * du + knee.cos_t * dv) / knee.scale
    pixel = 2.0 / (size * knee.scale)
    ax = np.abs(x)
    medial = x < 0
    half_gap = np.where(medial, knee.gap_medial, knee.gap_lateral) / 2.0

    # Femur: two elliptic condyles, an intercondylar notch, a narrowing shaft.
    a, b, xc = anatomy.condyle_a, anatomy.condyle_b, anatomy.condyle_centre
    t = np.clip(1.0 - ((ax - xc) / a) ** 2, 0.0, 1.0)
    condyle = -half_gap - b + b * np.sqrt(t)
    notch = np.where(ax < 0.2, -half_gap - 0.17 + 1.5 * ax ** 2, -half_gap - 1.0)
    femur_bottom = np.maximum(condyle, notch)
    femur_half = anatomy.half_width - 0.2 * np.clip((-y - 0.35) / 0.6, 0.0, 1.0)
    femur_d = np.minimum(femur_bottom - y, femur_half - ax)

    # Tibia: a slightly concave plateau with the intercondylar spines.
    plateau = half_gap + 0.004 - 0.15 * (ax - xc) ** 2
    spines = -0.01 + 0.9 * np.abs(ax - 0.07)
    tibia_top = np.minimum(plateau, spines)
    tibia_half = (anatomy.tibia_half_width
                  - 0.18 * np.clip((y - 0.15) / 0.6, 0.0, 1.0))
    tibia_d = np.minimum(y - tibia_top, tibia_half - ax)

    femur = _ramp(femur_d, pixel)
    tibia = _ramp(tibia_d, pixel)
    # Fibular head, lateral and below the plateau; it overlaps the tibia.
    fib = 1.0 - np.sqrt(((x - anatomy.tibia_half_width + 0.1) / 0.11) ** 2
                        + ((y - 0.55) / 0.2) ** 2)
    fibula = _ramp(fib * 0.11, pixel)

    bone = 0.42 * (femur + tibia) + 0.25 * fibula
    rim = 0.035
    bone += 0.16 * femur * np.clip(1.0 - femur_d / rim, 0.0, 1.0)
    bone += 0.16 * tibia * np.clip(1.0 - tibia_d / rim, 0.0, 1.0)

    # Subchondral sclerosis under the weight-bearing surfaces, worse medially.
    if knee.sclerosis > 0:
        load = np.clip(1.0 - np.abs(ax - xc) / (a * 0.9), 0.0, 1.0)
        load = load * np.where(medial, 1.0, 0.6)
        depth = knee.sclerosis_depth
        bone += knee.sclerosis * load * femur * np.clip(1.0 - (femur_bottom - y) / depth, 0, 1)
        bone += knee.sclerosis * load * tibia * np.clip(1.0 - (y - tibia_top) / depth, 0, 1)

    # Osteophytes: triangular spurs growing out of the four joint margins.
    margins = (
        (-1.0, anatomy.half_width, -half_gap - 0.02, -1.0),
        (1.0, anatomy.half_width, -half_gap - 0.02, -1.0),
        (-1.0, anatomy.tibia_half_width, half_gap + 0.025, 1.0),
        (1.0, anatomy.tibia_half_width, half_gap + 0.025, 1.0),
    )
    for length, (sign, edge, level, toward) in zip(knee.spurs, margins):
        if length <= 0:
            continue
        out = sign * x - edge  # distance outward from the bone edge
        height = 0.5 * length + 0.012
        # The spur's axis bends toward the joint line as it grows outward.
        axis_y = level - toward * 0.35 * np.clip(out, 0.0, None)
        spur_d = np.minimum.reduce([
            length - out,
            height * (1.0 - np.clip(out, 0.0, None) / length) - np.abs(y - axis_y),
            out + 0.04,
        ])
        spur = _ramp(spur_d, pixel)
        bone = np.maximum(bone, 0.55 * spur * (sign * x > 0))

    # Bone texture: vertically streaky trabeculae, scaled with the bone signal.
    trabeculae = _upsample(rng.random((size // 14 + 2, size // 3 + 2)) - 0.5, size)
    bone = bone * (1.0 + 0.22 * trabeculae)

    # Soft tissue: thicker in the middle, slow mottling, darker at the edges.
    tissue = 0.14 + 0.14 * np.clip(1.0 - (u - knee.shift[0] * 0.5) ** 2, 0.0, 1.0)
    tissue = tissue + 0.04 * _upsample(rng.random((6, 6)) - 0.5, size)
    value = knee.brightness + knee.contrast * (tissue + bone)
    value = value + 0.03 * _noise(rng, (size, size))
    return np.clip(np.rint(value * 255.0), 0, 255).astype(np.uint8)
