"""Deterministic synthetic knee "radiograph" phantoms graded 0..4 (Kellgren-Lawrence).

The phantoms stand in for real radiographs in the demo and in tests: a femur
(top) and tibia (bottom) drawn as bright bone with a brighter cortical rim on a
soft-tissue background, separated by a dark joint space. The KL grade drives
three findings, as in real knees:

* the joint space narrows (more on the medial side),
* osteophytes (bony spurs at the joint margins) appear and grow,
* subchondral sclerosis (a brighter band under the joint surfaces) grows.

Grades 0 and 1 differ only subtly (slight narrowing, a possible tiny spur).
Pose, scale, rotation, brightness, contrast, bone texture and noise vary per
image so no single pixel gives the grade away. Right knees are mirror images.

The output uses the real data's layout, ``<out_dir>/<grade>/<id><L|R>.png``,
with ids such as ``syn00017`` that cannot be mistaken for OAI ids. The same
arguments always give byte-identical files: all randomness comes from one
seeded generator, and PNGs are encoded here with the standard library's zlib
instead of Pillow's bundled encoder, whose output may change with the Pillow
build or CPU features (DVC tracks these files by hash).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.atomic_dir import replace_dir
from components import features

logger = logging.getLogger(__name__)

# Bump when the drawing changes, so a regenerated set is not mistaken for the old one.
GENERATOR_VERSION = 1

# First line of SYNTHETIC.md; its presence marks a folder we may overwrite.
MARKER = "# Synthetic knee phantoms (not radiographs)"
README_NAME = "SYNTHETIC.md"
ID_PREFIX = "syn"

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


class SyntheticError(Exception):
    """The synthetic set cannot be written (bad arguments or a foreign out_dir)."""


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


def generate(out_dir: str | os.PathLike, *, patients: int = 200, size: int = 224,
             seed: int = 0) -> dict:
    """Writes a synthetic KL-graded knee set to ``out_dir``.

    Each patient gets a left and a right knee whose grades differ by at most
    one; the patients' grades cycle through 0..4 so the grade mix is roughly
    balanced. The folder is written to a temporary sibling and renamed into
    place, so readers never see a half-written set.

    Args:
        out_dir: Folder to create. It may exist if it is empty or holds a
            previous synthetic set (identified by its SYNTHETIC.md), which is
            replaced.
        patients: Number of patients (two images each), at least 1.
        size: Width and height of the square 8-bit grayscale PNGs, at least 32.
        seed: Seed of the only random generator used.

    Returns:
        A summary dict: ``out_dir``, ``patients``, ``images``, ``size``,
        ``seed``, ``generator_version`` and ``counts`` (images per grade, keys
        "0".."4").

    Raises:
        SyntheticError: If an argument is out of range or ``out_dir`` is a
            non-empty folder that is not a previous synthetic set.
    """
    if patients < 1:
        raise SyntheticError(f"patients must be at least 1, got {patients}")
    if size < 32:
        raise SyntheticError(f"size must be at least 32 pixels, got {size}")
    out = Path(out_dir)
    _check_replaceable(out)

    rng = np.random.default_rng(seed)
    grid = _pixel_grid(size)
    counts = [0] * features.NUM_GRADES
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the result is a normal folder
    try:
        for grade in range(features.NUM_GRADES):
            (tmp / str(grade)).mkdir()
        for index, (left, right) in enumerate(_patient_grades(rng, patients)):
            anatomy = _draw_anatomy(rng)
            for side, grade in (("L", left), ("R", right)):
                pixels = _render(grid, anatomy, _draw_knee(rng, grade), rng)
                if side == "R":
                    pixels = pixels[:, ::-1]
                name = f"{ID_PREFIX}{index:05d}{side}.png"
                (tmp / str(grade) / name).write_bytes(_encode_png(pixels))
                counts[grade] += 1
            if (index + 1) % 500 == 0:
                logger.info("Synthetic set: %d/%d patients drawn", index + 1, patients)
        summary = {
            "out_dir": str(out),
            "patients": patients,
            "images": 2 * patients,
            "size": size,
            "seed": seed,
            "generator_version": GENERATOR_VERSION,
            "counts": {str(g): n for g, n in enumerate(counts)},
        }
        (tmp / README_NAME).write_text(_readme(summary), encoding="utf-8")
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("Wrote %d synthetic images to %s (counts per grade %s)",
                2 * patients, out, summary["counts"])
    return summary


def _check_replaceable(out: Path) -> None:
    """Refuses to replace anything but nothing, an empty folder or our own set."""
    if not out.exists():
        return
    if not out.is_dir():
        raise SyntheticError(f"{out} exists and is not a folder")
    if not any(out.iterdir()):
        return
    readme = out / README_NAME
    first_line = ""
    if readme.is_file():
        with readme.open(encoding="utf-8", errors="replace") as handle:
            first_line = handle.readline().strip()
    if first_line != MARKER:
        raise SyntheticError(
            f"refusing to overwrite {out}: it is not empty and has no {README_NAME} "
            "from a previous synthetic set (choose an empty or new folder)")


def _patient_grades(rng: np.random.Generator, patients: int) -> list[tuple[int, int]]:
    """(left, right) grades: base grades balanced over 0..4, the other knee +-1."""
    base = rng.permutation(np.arange(patients) % features.NUM_GRADES)
    pairs = []
    top = features.NUM_GRADES - 1
    for grade in base.tolist():
        low, high = max(grade - 1, 0), min(grade + 1, top)
        other = int(rng.integers(low, high + 1))
        pairs.append((grade, other) if rng.random() < 0.5 else (other, grade))
    return pairs


def _draw_anatomy(rng: np.random.Generator) -> _Anatomy:
    half_width = 0.78 + 0.05 * (rng.random() - 0.5)
    condyle_a = 0.31 + 0.03 * rng.random()
    return _Anatomy(
        half_width=half_width,
        tibia_half_width=half_width + 0.02 + 0.03 * rng.random(),
        condyle_centre=half_width - condyle_a,
        condyle_a=condyle_a,
        condyle_b=0.20 + 0.04 * rng.random(),
    )


def _draw_knee(rng: np.random.Generator, grade: int) -> _Knee:
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


def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
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


def _render(grid: tuple[np.ndarray, np.ndarray], anatomy: _Anatomy, knee: _Knee,
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


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def _encode_png(pixels: np.ndarray) -> bytes:
    """Encodes an 8-bit grayscale image as PNG (filter "Sub" on every row)."""
    height, width = pixels.shape
    rows = np.empty((height, width + 1), dtype=np.uint8)
    rows[:, 0] = 1  # PNG filter type 1: each byte minus its left neighbour
    rows[:, 1] = pixels[:, 0]
    rows[:, 2:] = pixels[:, 1:] - pixels[:, :-1]  # uint8 arithmetic wraps mod 256
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"".join([
        b"\x89PNG\r\n\x1a\n",
        _png_chunk(b"IHDR", header),
        _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)),
        _png_chunk(b"IEND", b""),
    ])


def _readme(summary: dict) -> str:
    counts = ", ".join(f"grade {g}: {n}" for g, n in summary["counts"].items())
    return f"""{MARKER}

These images are SYNTHETIC PHANTOMS generated by `components/synthetic.py` for the
demo and the tests. They are not radiographs, contain no patient data, and say
nothing about real knees. Do not use them to judge a model's clinical quality.

Each image draws a femur and a tibia with a dark joint space between them. The
Kellgren-Lawrence grade (the folder name) narrows the joint space, grows
osteophytes at the joint margins and brightens the subchondral bone. Pose,
contrast, texture and noise vary per image. File names are
`{ID_PREFIX}<5-digit patient><L|R>.png`; right knees are mirror images, and the two
knees of a patient differ by at most one grade.

Generator parameters:
- generator_version: {summary["generator_version"]}
- patients: {summary["patients"]} ({summary["images"]} images)
- size: {summary["size"]} x {summary["size"]} pixels, 8-bit grayscale PNG
- seed: {summary["seed"]}
- images per grade: {counts}

The same parameters always produce byte-identical files.
"""
