"""Tests for the synthetic knee phantom generator."""

import io
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components import features, synthetic

_NAME = re.compile(r"^syn(\d{5})([LR])\.png$")


def _images(root: Path) -> dict[str, tuple[int, Path]]:
    """File name -> (grade, path) for every image of a generated set."""
    found = {}
    for grade in range(features.NUM_GRADES):
        for path in (root / str(grade)).iterdir():
            found[path.name] = (grade, path)
    return found


def _joint_space_width(pixels: np.ndarray) -> float:
    """Median height (pixels) of the dark band between femur and tibia.

    Measured per column under both condyles, after a 5x5 box blur, as the run
    of pixels darker than the midpoint between soft tissue and bone around
    the darkest pixel of the image's middle rows.
    """
    img = pixels.astype(np.float64)
    kernel = np.ones(5) / 5
    img = np.apply_along_axis(np.convolve, 0, img, kernel, "same")
    img = np.apply_along_axis(np.convolve, 1, img, kernel, "same")
    size = img.shape[0]
    level = (np.percentile(img, 10) + np.percentile(img, 90)) / 2
    lo, hi = int(0.3 * size), int(0.7 * size)
    columns = [*range(int(0.22 * size), int(0.4 * size)),
               *range(int(0.6 * size), int(0.78 * size))]
    widths = []
    for c in columns:
        col = img[:, c]
        darkest = lo + int(np.argmin(col[lo:hi]))
        if col[darkest] >= level:
            widths.append(0)
            continue
        top = bottom = darkest
        while top > 0 and col[top - 1] < level:
            top -= 1
        while bottom < size - 1 and col[bottom + 1] < level:
            bottom += 1
        widths.append(bottom - top + 1)
    return float(np.median(widths))


def test_same_arguments_give_byte_identical_files(tmp_path):
    first = synthetic.generate(tmp_path / "a", patients=12, size=64, seed=3)
    second = synthetic.generate(tmp_path / "b", patients=12, size=64, seed=3)
    assert first["counts"] == second["counts"]
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*")
                     if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*")
                     if p.is_file())
    assert files_a == files_b
    assert len(files_a) == 2 * 12 + 1  # images + SYNTHETIC.md
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_other_seed_gives_other_images(tmp_path):
    synthetic.generate(tmp_path / "a", patients=5, size=64, seed=1)
    synthetic.generate(tmp_path / "b", patients=5, size=64, seed=2)
    pixels_a = [np.asarray(Image.open(p)) for _, p in sorted(_images(tmp_path / "a").values())]
    pixels_b = [np.asarray(Image.open(p)) for _, p in sorted(_images(tmp_path / "b").values())]
    assert not any(np.array_equal(a, b) for a, b in zip(pixels_a, pixels_b))


def test_layout_names_sizes_and_knee_pairs(tmp_path):
    out = tmp_path / "syn"
    summary = synthetic.generate(out, patients=25, size=96, seed=0)
    images = _images(out)
    assert len(images) == summary["images"] == 50
    assert sorted(p.name for p in out.iterdir()) == ["0", "1", "2", "3", "4", "SYNTHETIC.md"]
    grades_of = defaultdict(dict)
    for name, (grade, path) in images.items():
        match = _NAME.match(name)
        assert match, name
        assert not re.match(r"^9\d{6}[LR]", name)  # never an OAI-like id
        grades_of[match.group(1)][match.group(2)] = grade
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.mode == "L"
            assert image.size == (96, 96)
    assert len(grades_of) == 25
    for patient, knees in grades_of.items():
        assert set(knees) == {"L", "R"}, patient
        assert abs(knees["L"] - knees["R"]) <= 1, patient
    counts = [summary["counts"][str(g)] for g in range(features.NUM_GRADES)]
    assert counts == [len(list((out / str(g)).iterdir())) for g in range(features.NUM_GRADES)]
    # Balanced mix: every grade well represented even in a small set.
    assert min(counts) >= 5
    readme = (out / "SYNTHETIC.md").read_text()
    assert readme.startswith(synthetic.MARKER)
    assert "not radiographs" in readme and "seed: 0" in readme and "patients: 25" in readme


def test_png_pixels_round_trip_through_pillow():
    pixels = np.random.default_rng(0).integers(0, 256, (7, 9), dtype=np.uint8)
    decoded = np.asarray(Image.open(io.BytesIO(synthetic._encode_png(pixels))))
    np.testing.assert_array_equal(decoded, pixels)


def test_joint_space_narrows_with_grade(tmp_path):
    out = tmp_path / "syn"
    synthetic.generate(out, patients=40, size=224, seed=5)
    widths = defaultdict(list)
    for grade, path in _images(out).values():
        widths[grade].append(_joint_space_width(np.asarray(Image.open(path))))
    means = [np.mean(widths[g]) for g in range(features.NUM_GRADES)]
    assert all(a > b for a, b in zip(means, means[1:])), means
    # Grades 0 and 1 differ, but only subtly: their ranges overlap.
    assert max(widths[1]) >= min(widths[0]), (widths[0], widths[1])


def test_right_knees_are_mirrored(tmp_path):
    out = tmp_path / "syn"
    synthetic.generate(out, patients=30, size=64, seed=0)
    left, right = [], []
    for name, (_, path) in _images(out).items():
        (left if name[-5] == "L" else right).append(np.asarray(Image.open(path), float))
    mean_left, mean_right = np.mean(left, axis=0), np.mean(right, axis=0)
    # The left-right asymmetric part of the mean knee (fibula on the lateral
    # side, narrower medial joint space) must flip sign between L and R.
    asym_left = (mean_left - mean_left[:, ::-1]).ravel()
    asym_right = (mean_right - mean_right[:, ::-1]).ravel()
    assert np.corrcoef(asym_left, asym_right)[0, 1] < -0.5


def test_regenerating_replaces_a_previous_set(tmp_path):
    out = tmp_path / "syn"
    synthetic.generate(out, patients=5, size=48, seed=0)
    synthetic.generate(out, patients=3, size=48, seed=1)
    assert len(_images(out)) == 6
    assert "seed: 1" in (out / "SYNTHETIC.md").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["syn"]  # no temp folders left


def test_refuses_to_overwrite_a_foreign_folder(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(synthetic.SyntheticError, match="refusing to overwrite"):
        synthetic.generate(out, patients=2, size=48)
    assert [p.name for p in out.iterdir()] == ["precious.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


@pytest.mark.parametrize("kwargs", [{"patients": 0}, {"size": 8}])
def test_bad_arguments_write_nothing(tmp_path, kwargs):
    with pytest.raises(synthetic.SyntheticError):
        synthetic.generate(tmp_path / "syn", **kwargs)
    assert not any(tmp_path.iterdir())
