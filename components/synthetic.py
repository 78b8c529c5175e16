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
import os
import shutil
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np

from components import features, phantom
from components.atomic_dir import replace_dir

logger = logging.getLogger(__name__)

# Bump when the drawing changes, so a regenerated set is not mistaken for the old one.
GENERATOR_VERSION = 1

# First line of SYNTHETIC.md; its presence marks a folder we may overwrite.
MARKER = "# Synthetic knee phantoms (not radiographs)"
README_NAME = "SYNTHETIC.md"
ID_PREFIX = "syn"


class SyntheticError(Exception):
    """The synthetic set cannot be written (bad arguments or a foreign out_dir)."""


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
    grid = phantom.pixel_grid(size)
    counts = [0] * features.NUM_GRADES
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the result is a normal folder
    try:
        for grade in range(features.NUM_GRADES):
            (tmp / str(grade)).mkdir()
        for index, (left, right) in enumerate(_patient_grades(rng, patients)):
            anatomy = phantom.draw_anatomy(rng)
            for side, grade in (("L", left), ("R", right)):
                pixels = phantom.render(grid, anatomy, phantom.draw_knee(rng, grade), rng)
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
    if not is_synthetic_set(out):
        raise SyntheticError(
            f"refusing to overwrite {out}: it is not empty and has no {README_NAME} "
            "from a previous synthetic set (choose an empty or new folder)")


def is_synthetic_set(folder: str | os.PathLike) -> bool:
    """Whether `folder` is a set this module wrote (its README starts with MARKER)."""
    readme = Path(folder) / README_NAME
    if not readme.is_file():
        return False
    with readme.open(encoding="utf-8", errors="replace") as handle:
        return handle.readline().strip() == MARKER


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
