"""Tests for the dataset importer."""

import io
import json
import os
import shutil
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components import features, ingestion, synthetic
from components.ingestion import IngestError

_REPO = Path(__file__).resolve().parents[2]
_REAL_COUNTS = {"0": 2286, "1": 1046, "2": 1516, "3": 757, "4": 173}
_REAL_VAL_COUNTS = {"0": 328, "1": 153, "2": 212, "3": 106, "4": 27}


def _real_data_dir() -> Path:
    shared = Path(os.environ.get("KOA_SHARED_DIR", _REPO.parent / "shared"))
    return shared / "data" / "kneeKL224"


def _read_records(path: Path) -> list[dict]:
    """Parses a TFRecord file of tf.train.Example into plain dicts."""
    import tensorflow as tf

    records = []
    for raw in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
        feature = tf.train.Example.FromString(raw).features.feature
        records.append({
            "image": feature[features.IMAGE_KEY].bytes_list.value[0],
            "grade": feature[features.LABEL_KEY].int64_list.value[0],
            "patient": feature[features.PATIENT_KEY].bytes_list.value[0].decode(),
            "side": feature[features.SIDE_KEY].bytes_list.value[0].decode(),
            "source": feature[features.SOURCE_KEY].bytes_list.value[0].decode(),
        })
    return records


def _png(path: Path, value: int, fmt: str = "PNG") -> Path:
    """Writes a small distinct grayscale image (its content depends on value)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(path, fmt)
    return path


def _tree(root: Path, files: dict[str, int]) -> Path:
    """Builds a source tree from {relative path: image seed}."""
    for rel, value in files.items():
        _png(root / rel, value, "JPEG" if rel.endswith((".jpg", ".jpeg")) else "PNG")
    return root


def _given_split_tree(root: Path) -> Path:
    """train: patients 100..109, val: patients 200..204, both knees, grades 0..4."""
    files = {}
    for n in range(10):
        files[f"train/{n % 5}/{100 + n}L.png"] = 1000 + n
        files[f"train/{n % 5}/{100 + n}R.png"] = 2000 + n
    for n in range(5):
        files[f"val/{n}/{200 + n}L.png"] = 3000 + n
        files[f"val/{n}/{200 + n}R.png"] = 4000 + n
    return _tree(root, files)


@pytest.fixture(scope="module")
def synthetic_source(tmp_path_factory):
    """A small synthetic set in the real layout: <grade>/<id><L|R>.png."""
    root = tmp_path_factory.mktemp("src") / "syn"
    synthetic.generate(root, patients=40, size=48, seed=1)
    return root


def test_carved_split_is_patient_level_and_stratified(synthetic_source, tmp_path):
    report = ingestion.ingest(synthetic_source, tmp_path / "out", eval_fraction=0.25, seed=7)
    assert report.split_policy == "patient_stratified"
    records = {s: _read_records(tmp_path / "out" / s / "data.tfrecord")
               for s in (features.TRAIN_SPLIT, features.EVAL_SPLIT)}
    patients = {s: {r["patient"] for r in recs} for s, recs in records.items()}
    assert not patients["train"] & patients["eval"]
    knees = defaultdict(set)
    for recs in records.values():
        for r in recs:
            knees[r["patient"]].add(r["side"])
    assert len(knees) == 40 and all(sides == {"L", "R"} for sides in knees.values())
    assert {r["grade"] for r in records["eval"]} == set(range(features.NUM_GRADES))
    assert 0.15 < len(patients["eval"]) / 40 < 0.35
    for split, recs in records.items():
        expected = {str(g): 0 for g in range(features.NUM_GRADES)}
        expected.update({str(g): n for g, n in Counter(r["grade"] for r in recs).items()})
        assert report.counts[split] == expected
        assert report.patients[split] == len(patients[split])
    assert report.total_images == 80
    assert report.skipped == ["SYNTHETIC.md"] and report.excluded == []
    saved = json.loads((tmp_path / "out" / "ingest_report.json").read_text())
    assert saved == json.loads(report.to_json())


def test_ingest_is_deterministic_for_a_seed(synthetic_source, tmp_path):
    first = ingestion.ingest(synthetic_source, tmp_path / "a", seed=3)
    second = ingestion.ingest(synthetic_source, tmp_path / "b", seed=3)
    other = ingestion.ingest(synthetic_source, tmp_path / "c", seed=4)
    assert first.content_hash == second.content_hash
    for split in ("train", "eval"):
        assert ((tmp_path / "a" / split / "data.tfrecord").read_bytes()
                == (tmp_path / "b" / split / "data.tfrecord").read_bytes())
    # Same images, other seed: another patient split, so another content hash.
    assert other.content_hash != first.content_hash
    eval_a = {r["patient"] for r in _read_records(tmp_path / "a" / "eval" / "data.tfrecord")}
    eval_c = {r["patient"] for r in _read_records(tmp_path / "c" / "eval" / "data.tfrecord")}
    assert eval_a != eval_c


def test_records_round_trip_the_original_files(tmp_path):
    source = _tree(tmp_path / "src", {
        "train/3/9001695L.png": 1, "train/2/9001695R.jpg": 2, "train/0/knee_scan.jpeg": 3,
        "val/1/9002000L.png": 4, "val/1/9002000R.png": 5, "val/4/9003000L.png": 6,
    })
    ingestion.ingest(source, tmp_path / "out")
    records = []
    for split in ("train", "eval"):
        records += _read_records(tmp_path / "out" / split / "data.tfrecord")
    by_source = {r["source"]: r for r in records}
    assert set(by_source) == {p.relative_to(source).as_posix()
                              for p in source.rglob("*") if p.is_file()}
    for rel, record in by_source.items():
        assert record["image"] == (source / rel).read_bytes()
        assert record["grade"] == int(rel.split("/")[1])
    assert (by_source["train/3/9001695L.png"]["patient"],
            by_source["train/3/9001695L.png"]["side"]) == ("9001695", "L")
    assert by_source["train/2/9001695R.jpg"]["side"] == "R"
    assert (by_source["train/0/knee_scan.jpeg"]["patient"],
            by_source["train/0/knee_scan.jpeg"]["side"]) == ("knee_scan", "U")


def test_given_splits_are_honoured(tmp_path):
    source = _given_split_tree(tmp_path / "src")
    report = ingestion.ingest(source, tmp_path / "out")
    assert report.split_policy == "given"
    eval_records = _read_records(tmp_path / "out" / "eval" / "data.tfrecord")
    train_records = _read_records(tmp_path / "out" / "train" / "data.tfrecord")
    assert sorted(r["source"] for r in eval_records) == sorted(
        p.relative_to(source).as_posix() for p in (source / "val").rglob("*.png"))
    assert all(r["source"].startswith("train/") for r in train_records)
    assert report.patients == {"train": 10, "eval": 5}


def test_identical_image_in_two_given_splits_is_a_leak(tmp_path):
    source = _given_split_tree(tmp_path / "src")
    leaked = (source / "train/0/100L.png").read_bytes()
    (source / "val/0/300L.png").write_bytes(leaked)
    with pytest.raises(IngestError, match="byte-identical in two given splits") as err:
        ingestion.ingest(source, tmp_path / "out")
    assert "train/0/100L.png" in str(err.value) and "val/0/300L.png" in str(err.value)
    # Atomic: a failed import leaves neither the output nor temporary folders.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_patient_in_two_given_splits_is_a_leak(tmp_path):
    source = _given_split_tree(tmp_path / "src")
    _png(source / "val/2/105L.png", 9999)  # patient 105 is also in train
    with pytest.raises(IngestError, match="patient-level leak") as err:
        ingestion.ingest(source, tmp_path / "out")
    assert "105" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_duplicates_with_conflicting_grades_are_excluded(synthetic_source, tmp_path):
    source = tmp_path / "src"
    shutil.copytree(synthetic_source, source)
    original = sorted((source / "1").iterdir())[0]
    (source / "3" / "copy77L.png").write_bytes(original.read_bytes())
    (source / "1" / "copy88L.png").write_bytes(original.read_bytes())
    report = ingestion.ingest(source, tmp_path / "out")
    reasons = {e["path"]: e["reason"] for e in report.excluded}
    assert set(reasons) == {f"1/{original.name}", "3/copy77L.png", "1/copy88L.png"}
    assert all("conflicting grades [1, 3]" in reason for reason in reasons.values())
    assert len(report.duplicates) == 1
    assert report.duplicates[0]["grades"] == [1, 3]
    assert sorted(report.duplicates[0]["files"]) == sorted(reasons)
    assert report.total_images == 80 - 1


def test_same_grade_duplicates_keep_one_copy(tmp_path):
    source = _tree(tmp_path / "src", {f"{g}/{10 + i}{s}.png": 100 * g + 10 * i + (s == "R")
                                      for g in range(5) for i in range(2) for s in "LR"})
    (source / "2" / "99L.png").write_bytes((source / "2" / "10L.png").read_bytes())
    report = ingestion.ingest(source, tmp_path / "out")
    assert report.excluded == [{"path": "2/99L.png",
                                "reason": "byte-identical duplicate of 2/10L.png"}]
    assert report.duplicates[0]["files"] == ["2/10L.png", "2/99L.png"]
    assert report.total_images == 20


def test_unreadable_files_are_excluded_and_reported(tmp_path):
    files = {f"{g}/{10 + i}{s}.png": 100 * g + 10 * i + (s == "R")
             for g in range(5) for i in range(2) for s in "LR"}
    source = _tree(tmp_path / "src", files)
    (source / "1" / "50L.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    truncated = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(
        truncated, "JPEG")
    (source / "2" / "51L.jpg").write_bytes(truncated.getvalue()[: len(truncated.getvalue()) // 2])
    (source / "3" / "52L.png").write_text("not an image at all")
    (source / "4" / "notes.txt").write_text("grader's notes")
    (source / "README.md").write_text("about this data")
    (source / "labels.csv").write_text("path,grade\n")

    report = ingestion.ingest(source, tmp_path / "out")
    reasons = {e["path"]: e["reason"] for e in report.excluded}
    assert set(reasons) == {"1/50L.png", "2/51L.jpg", "3/52L.png", "4/notes.txt"}
    assert reasons["2/51L.jpg"].startswith("cannot decode image")
    assert reasons["3/52L.png"].startswith("cannot decode image")
    assert "not an image file" in reasons["4/notes.txt"]
    assert sorted(report.skipped) == ["README.md", "labels.csv"]
    assert report.total_images == len(files)


@pytest.mark.parametrize("bad", ["5/123L.png", "train/7/123L.png", "train/mild/123L.png"])
def test_unknown_grade_folder_is_an_error(tmp_path, bad):
    good = "train/0/1L.png" if bad.startswith("train") else "0/1L.png"
    source = _tree(tmp_path / "src", {good: 1, bad: 2})
    folder = bad.rsplit("/", 1)[0]
    with pytest.raises(IngestError, match=f"unknown grade folder '{folder}'"):
        ingestion.ingest(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_manifest_gives_paths_grades_patients_and_splits(tmp_path):
    source = tmp_path / "src"
    rows = ["path,grade,patient_id,side,split"]
    for n in range(5):
        _png(source / "img" / f"a{n}.png", n)
        _png(source / "img" / f"b{n}.png", 10 + n)
        rows.append(f"img/a{n}.png,{n},P{n},L,train")
        rows.append(f"img/b{n}.png,{n},Q{n},R,valid")
    (source / "labels.csv").write_text("\n".join(rows) + "\n")
    report = ingestion.ingest(source, tmp_path / "out", manifest=source / "labels.csv")
    assert report.split_policy == "given"
    eval_records = _read_records(tmp_path / "out" / "eval" / "data.tfrecord")
    assert sorted((r["source"], r["grade"], r["patient"], r["side"]) for r in eval_records) == [
        (f"img/b{n}.png", n, f"Q{n}", "R") for n in range(5)]
    assert report.counts["train"] == {str(g): 1 for g in range(5)}


def test_manifest_without_split_is_carved_and_absolute_paths_work(tmp_path):
    source = tmp_path / "src"
    rows = ["path,grade"]
    for n in range(20):
        for side in "LR":
            path = _png(source / f"{n:04d}{side}.png", 2 * n + (side == "R"))
            rows.append(f"{path if n % 2 else path.name},{n % 5}")
    manifest = source / "labels.csv"
    manifest.write_text("\n".join(rows) + "\n")
    report = ingestion.ingest(source, tmp_path / "out", manifest=manifest)
    assert report.split_policy == "patient_stratified"
    assert report.patients["train"] + report.patients["eval"] == 20
    assert all(n > 0 for n in report.counts["eval"].values())


@pytest.mark.parametrize("row, message", [
    ("img.png,7", "unknown grade '7'"),
    ("img.png,2,,X", "unknown side 'X'"),
    ("../outside.png,2", "outside the source"),
])
def test_bad_manifest_rows_are_errors(tmp_path, row, message):
    source = tmp_path / "src"
    _png(source / "img.png", 1)
    (source / "labels.csv").write_text(f"path,grade,patient_id,side\n{row}\n")
    with pytest.raises(IngestError, match=message):
        ingestion.ingest(source, tmp_path / "out", manifest=source / "labels.csv")


def test_empty_dataset_and_empty_split_are_errors(tmp_path):
    empty = tmp_path / "empty"
    (empty / "0").mkdir(parents=True)
    with pytest.raises(IngestError, match="no usable images"):
        ingestion.ingest(empty, tmp_path / "out")
    source = _given_split_tree(tmp_path / "src")
    for path in (source / "val").rglob("*.png"):
        path.write_text("broken")
    with pytest.raises(IngestError, match="eval split has no usable images"):
        ingestion.ingest(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refuses_foreign_out_dir_but_replaces_a_previous_import(synthetic_source, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(IngestError, match="refusing to overwrite"):
        ingestion.ingest(synthetic_source, foreign)
    assert [p.name for p in foreign.iterdir()] == ["keep.txt"]
    out = tmp_path / "out"
    first = ingestion.ingest(synthetic_source, out, seed=1)
    second = ingestion.ingest(synthetic_source, out, seed=2)
    saved = json.loads((out / "ingest_report.json").read_text())
    assert saved["seed"] == 2 and saved["content_hash"] == second.content_hash
    assert first.content_hash != second.content_hash
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign", "out"]


def test_real_dataset(tmp_path, caplog):
    """The published protocol: all of the train folder trains, the dataset's own
    validation folder is the eval split."""
    source = _real_data_dir()
    val = source.parent / "kneeKL224-val"
    if not source.is_dir() or not val.is_dir():
        pytest.skip(f"real data not found at {source} and {val} (set KOA_SHARED_DIR)")
    caplog.set_level("INFO", logger="components.ingestion")
    started = time.monotonic()
    report = ingestion.ingest(source, tmp_path / "out", eval_source=val)
    print(f"ingested {report.total_images} real images in {time.monotonic() - started:.1f} s")
    assert report.counts["train"] == _REAL_COUNTS
    assert report.counts["eval"] == _REAL_VAL_COUNTS
    assert report.split_policy == "given" and report.eval_source == str(val)
    assert report.excluded == [] and report.duplicates == []
    eval_records = _read_records(tmp_path / "out/eval/data.tfrecord")
    eval_patients = {r["patient"] for r in eval_records}
    train_patients = {r["patient"] for r in _read_records(tmp_path / "out/train/data.tfrecord")}
    assert not eval_patients & train_patients
    assert len(eval_patients) == report.patients["eval"]
    assert all(r["source"].startswith("kneeKL224-val/") for r in eval_records)
    assert any("Checked 5000/" in m for m in caplog.messages)


def test_an_eval_source_folder_is_the_eval_split_and_the_rest_trains(tmp_path):
    source, val = tmp_path / "train_src", tmp_path / "val_src"
    synthetic.generate(str(source), patients=6, size=32, seed=0)
    synthetic.generate(str(val), patients=4, size=32, seed=1)
    for image in val.rglob("syn*.png"):  # other patients than the train folder's
        image.rename(image.with_name("val" + image.name[3:]))
    report = ingestion.ingest(source, tmp_path / "out", eval_source=val)
    assert report.split_policy == "given"
    assert sum(report.counts["eval"].values()) == 8
    assert sum(report.counts["train"].values()) == 12
    sources = {r["source"] for r in _read_records(tmp_path / "out/eval/data.tfrecord")}
    assert all(s.startswith("val_src/") for s in sources)


def test_an_eval_source_with_split_folders_or_a_second_eval_split_is_refused(tmp_path):
    source, val = tmp_path / "src", tmp_path / "val"
    synthetic.generate(str(source), patients=4, size=32, seed=0)
    (val / "train" / "0").mkdir(parents=True)
    with pytest.raises(IngestError, match="grade folders 0..4, not split folders"):
        ingestion.ingest(source, tmp_path / "out", eval_source=val)
    with pytest.raises(IngestError, match="does not exist"):
        ingestion.ingest(source, tmp_path / "out", eval_source=tmp_path / "nowhere")
    split_source = tmp_path / "split_src"
    (split_source / "eval" / "0").mkdir(parents=True)
    (split_source / "train" / "0").mkdir(parents=True)
    with pytest.raises(IngestError, match="already has an eval split"):
        ingestion.ingest(split_source, tmp_path / "out", eval_source=source)
    assert not (tmp_path / "out").exists()
