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
            "facts": {key: (feature[key].int64_list.value or
                            [v.decode() for v in feature[key].bytes_list.value])[0]
                      for key in features.IMAGE_FACT_KEYS},
        })
    return records


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


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


def test_records_carry_the_model_input_and_the_image_facts(tmp_path):
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
        original = (source / rel).read_bytes()
        if rel.endswith(".png"):
            assert record["image"] == original  # a PNG is its own model input
        else:  # a JPEG becomes a lossless PNG of its decoded pixels
            assert record["image"].startswith(b"\x89PNG")
            np.testing.assert_array_equal(_pixels(record["image"]), _pixels(original))
        assert record["grade"] == int(rel.split("/")[1])
        assert record["facts"] == {
            "image_format": "png" if rel.endswith(".png") else "jpeg", "image_height": 16,
            "image_width": 16, "bit_depth": 8, "channels": 1, "exif_orientation": 1,
            "modality": "unknown"}
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
    with pytest.raises(IngestError, match="identical in two given splits") as err:
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
                                "reason": "identical duplicate of 2/10L.png"}]
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


def _manifest_source(root: Path, patients: int = 10) -> tuple[Path, list[str]]:
    """Images a<n>.png (grade n % 5) of patients P<n>, and the manifest rows naming them."""
    rows = ["path,grade,patient_id"]
    for n in range(patients):
        _png(root / "img" / f"a{n}.png", n)
        rows.append(f"img/a{n}.png,{n % 5},P{n}")
    return root, rows


def test_a_manifest_row_repeated_is_one_image(tmp_path):
    source, rows = _manifest_source(tmp_path / "src")
    rows += ["img/a3.png,3,P3", "./img/../img/a7.png,2,P7"]  # lines 12 and 13
    (source / "labels.csv").write_text("\n".join(rows) + "\n")
    report = ingestion.ingest(source, tmp_path / "out", manifest=source / "labels.csv")
    records = []
    for split in report.counts:
        records += _read_records(tmp_path / "out" / split / "data.tfrecord")
    # Every listed file is in exactly one record, as the report counts it.
    assert sorted(r["source"] for r in records) == sorted(f"img/a{n}.png" for n in range(10))
    assert report.total_images == 10
    assert report.excluded == [] and report.duplicates == []
    assert report.repeated_rows == [
        {"path": "img/a3.png", "lines": [5, 12], "action": "counted once (line 5)"},
        {"path": "img/a7.png", "lines": [9, 13], "action": "counted once (line 9)"}]


def test_a_manifest_row_repeated_with_another_grade_excludes_the_file(tmp_path):
    source, rows = _manifest_source(tmp_path / "src")
    rows.append("img/a3.png,4,P3")
    (source / "labels.csv").write_text("\n".join(rows) + "\n")
    report = ingestion.ingest(source, tmp_path / "out", manifest=source / "labels.csv")
    assert report.excluded == [{
        "path": "img/a3.png",
        "reason": "listed on manifest lines 5, 12 with different grade, split, patient or side"}]
    assert report.total_images == 9 and report.repeated_rows == []


def test_a_manifest_not_in_utf8_is_an_error_naming_file_and_line(tmp_path):
    source, rows = _manifest_source(tmp_path / "src")
    rows[3] = "img/a2.png,2,Müller"  # line 4, written in Latin-1 below
    (source / "labels.csv").write_bytes(("\n".join(rows) + "\n").encode("latin-1"))
    with pytest.raises(IngestError, match=r"labels.csv line 4: not UTF-8 text \(byte 0xfc\)"):
        ingestion.ingest(source, tmp_path / "out", manifest=source / "labels.csv")
    # A UTF-8 byte-order mark (spreadsheet exports) is fine.
    (source / "labels.csv").write_bytes(("\n".join(rows) + "\n").encode("utf-8-sig"))
    report = ingestion.ingest(source, tmp_path / "out", manifest=source / "labels.csv")
    assert report.patients["train"] + report.patients["eval"] == 10


def test_exif_rotated_jpeg_is_ingested_upright(tmp_path):
    source = _given_split_tree(tmp_path / "src")
    upright = np.zeros((16, 32), dtype=np.uint8)
    upright[:, 16:] = 220  # right half bright
    exif = Image.Exif()
    exif[0x0112] = 6  # shown after a 90 degree clockwise turn
    Image.fromarray(np.ascontiguousarray(np.rot90(upright))).save(
        source / "train/0/777L.jpg", "JPEG", quality=95, exif=exif.tobytes())
    ingestion.ingest(source, tmp_path / "out")
    record = next(r for r in _read_records(tmp_path / "out/train/data.tfrecord")
                  if r["source"] == "train/0/777L.jpg")
    pixels = _pixels(record["image"]).astype(int)
    assert pixels.shape == (16, 32)
    assert pixels[:, :12].max() < 30 and pixels[:, 20:].min() > 190
    assert (record["facts"]["exif_orientation"], record["facts"]["image_height"],
            record["facts"]["image_width"]) == (6, 16, 32)


def test_dicom_files_are_ingested_at_full_precision_with_their_laterality(tmp_path):
    from dicom_testlib import dicom_bytes, ramp

    source = tmp_path / "src"
    raw = ramp(12, rows=8, cols=512)

    def film(seed: int) -> np.ndarray:  # films of equal pixels would be duplicates
        pixels = raw.copy()
        pixels[0, 0] = seed
        return pixels

    for split, patients in (("train", (1, 2)), ("val", (3,))):
        for n in patients:
            for side in "LR":
                folder = source / split / str(n % 5)
                folder.mkdir(parents=True, exist_ok=True)
                # PACS-style name: a UID without an image suffix; the file says the side.
                (folder / f"1.2.826.0.{n}.{ord(side)}").write_bytes(dicom_bytes(
                    film(10 * n + (side == "R")), Modality="DX", ImageLaterality=side))
    # The name says L, the file says R.
    (source / "train/1/99L.dcm").write_bytes(dicom_bytes(film(99), Modality="CR",
                                                         ImageLaterality="R"))
    report = ingestion.ingest(source, tmp_path / "out")
    records = _read_records(tmp_path / "out/train/data.tfrecord")
    assert report.total_images == 7 and report.excluded == []
    by_source = {r["source"]: r for r in records}
    assert by_source["train/1/1.2.826.0.1.76"]["side"] == "L"
    assert by_source["train/1/1.2.826.0.1.82"]["side"] == "R"
    assert by_source["train/1/99L.dcm"]["side"] == "R"  # the file's laterality wins
    pixels = _pixels(by_source["train/1/99L.dcm"]["image"])
    assert pixels.dtype == np.uint16 and len(np.unique(pixels)) == len(np.unique(film(99)))
    assert by_source["train/2/1.2.826.0.2.76"]["facts"] == {
        "image_format": "dicom", "image_height": 8, "image_width": 512, "bit_depth": 12,
        "channels": 1, "exif_orientation": 1, "modality": "DX"}
    # Patient ids from UID file names cannot keep a patient's knees together: said so.
    assert any("patient_id in a manifest" in w for w in report.warnings)
    for record in records:
        assert PATIENT_SECRET not in record["image"]


PATIENT_SECRET = b"PID-SECRET-1"


def test_a_manifest_side_contradicting_the_dicom_laterality_excludes_it(tmp_path):
    from dicom_testlib import dicom_bytes, ramp

    source, rows = _manifest_source(tmp_path / "src")
    (source / "img/knee.dcm").write_bytes(dicom_bytes(ramp(), ImageLaterality="R"))
    rows[0] += ",side"
    rows += ["img/knee.dcm,1,P99,L"]
    (source / "labels.csv").write_text("\n".join(rows) + "\n")
    report = ingestion.ingest(source, tmp_path / "out", manifest=source / "labels.csv")
    assert report.excluded == [{
        "path": "img/knee.dcm",
        "reason": "the manifest's side L contradicts the DICOM laterality R"}]


def _split_anomalies(out: Path, tmp_path: Path) -> list[str]:
    """The lines the pipeline's AnomalyGate prints for ``out``, from TFDV and the schema."""
    import tensorflow as tf
    import tensorflow_data_validation as tfdv
    from tensorflow_data_validation.statistics import stats_impl
    from tfx_bsl.coders import example_coder

    from components.anomaly_gate import describe_anomalies

    schema = tfdv.load_schema_text(str(_REPO / "pipeline" / "schema.pbtxt"))
    anomalies_dir = tmp_path / "anomalies"
    splits = sorted(p.name for p in out.iterdir() if p.is_dir())
    for split in splits:
        # In memory, as StatisticsGen computes them, without starting a Beam pipeline.
        records = [r.numpy() for r in tf.data.TFRecordDataset(str(out / split / ingestion.RECORD_NAME))]
        batch = example_coder.ExamplesToRecordBatchDecoder().DecodeBatch(records)
        anomalies = tfdv.validate_statistics(stats_impl.generate_statistics_in_memory(batch), schema)
        (anomalies_dir / f"Split-{split}").mkdir(parents=True)
        (anomalies_dir / f"Split-{split}" / "SchemaDiff.pb").write_bytes(
            anomalies.SerializeToString())
    return describe_anomalies(str(anomalies_dir), splits)


def test_the_schema_stops_new_kinds_of_film_naming_feature_and_split(tmp_path):
    from dicom_testlib import dicom_bytes, ramp

    source = tmp_path / "src"
    rng = np.random.default_rng(0)

    def film(size=(128, 128), dtype=np.uint8, top=255):
        return rng.integers(0, top + 1, size).astype(dtype)

    for n in range(10):  # what the schema describes: 8-bit grey upright PNGs
        for split, offset in (("train", 100), ("val", 200)):
            path = source / split / str(n % 5) / f"{offset + n}L.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(film()).save(path)
    val = source / "val"
    Image.fromarray(film(dtype=np.uint16, top=4095)).save(val / "0/301L.png")  # 12 bits in 16
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(film()).save(val / "1/302L.jpg", "JPEG", exif=exif.tobytes())
    Image.fromarray(film((32, 32))).save(val / "2/303L.png")  # a thumbnail
    Image.fromarray(film((128, 128, 3))).save(val / "3/304L.png")  # colour
    (val / "4/305L.dcm").write_bytes(dicom_bytes(ramp(12, 128, 128), Modality="MR"))

    ingestion.ingest(source, tmp_path / "out")
    problems = _split_anomalies(tmp_path / "out", tmp_path)
    flagged = {line.split(":")[0] for line in problems}
    assert flagged == {f"split 'eval', feature '{key}'" for key in (
        "bit_depth", "exif_orientation", "image_format", "image_height", "image_width",
        "channels", "modality")}, problems
