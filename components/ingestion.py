"""Imports a folder (or CSV manifest) of KL-graded knee images into TFRecords.

The output is what the pipeline's ExampleGen reads::

    <out_dir>/train/data.tfrecord      tf.train.Example records (see features.py)
    <out_dir>/eval/data.tfrecord
    <out_dir>/test/data.tfrecord       only if the source had a test split
    <out_dir>/ingest_report.json       counts, exclusions, duplicates, content hash

Every image is decoded once to prove it is readable; unreadable files are
excluded and reported, never dropped silently. Problems that would make the
evaluation untrustworthy (a grade outside 0..4, the same image or patient in
two given splits) stop the import with an ``IngestError``. When the source has
no train/eval split, the eval split is carved by patient, stratified by the
patient's worst grade. Output is built in a temporary sibling folder and
renamed into place, so a failed import leaves nothing behind.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

from PIL import Image

from components.atomic_dir import replace_dir
from components import features

logger = logging.getLogger(__name__)

REPORT_NAME = "ingest_report.json"
RECORD_NAME = "data.tfrecord"
TEST_SPLIT = "test"
REPORT_FORMAT_VERSION = 1

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_DECODABLE_FORMATS = ("PNG", "JPEG")
# Folder (or manifest) split names and the output split they feed.
SPLIT_ALIASES = {
    "train": features.TRAIN_SPLIT,
    "val": features.EVAL_SPLIT,
    "valid": features.EVAL_SPLIT,
    "validation": features.EVAL_SPLIT,
    "eval": features.EVAL_SPLIT,
    "test": TEST_SPLIT,
}
_GRADE_NAMES = tuple(str(g) for g in range(features.NUM_GRADES))
# "<id><L|R>" where the id ends in a digit, e.g. 9001695L or syn00017R.
_KNEE_NAME = re.compile(r"^(?P<patient>[A-Za-z_-]*\d+)(?P<side>[LR])$")
_PROGRESS_EVERY = 1000
_MAX_LISTED = 20


class IngestError(Exception):
    """The source cannot be imported as it is; the message names the problem."""


@dataclasses.dataclass
class IngestReport:
    """What an import read, kept, excluded and wrote.

    Attributes:
        source: The source folder, as passed in.
        manifest: The CSV manifest, as passed in, or None.
        eval_source: The folder given as the eval split, as passed in, or None.
        split_policy: "given" (the source's splits were used) or
            "patient_stratified" (eval was carved by patient here).
        eval_fraction: Fraction of patients per stratum put in eval when carving.
        seed: Seed of the carving and of the record order.
        counts: Images per output split and grade, e.g. counts["eval"]["3"].
        patients: Distinct patients per output split.
        excluded: Files left out, each {"path", "reason"} (path relative to source).
        skipped: Non-image helper files and hidden entries that were not read.
        duplicates: Groups of byte-identical images, each {"sha256", "files",
            "grades", "action"}.
        warnings: Things worth a look that did not stop the import.
        content_hash: sha256 over the sorted "<file sha256> <grade> <split>"
            lines of every imported image: equal hashes mean equal data.
        format_version: Version of this report's layout.
    """

    source: str
    manifest: str | None
    split_policy: str
    eval_fraction: float
    seed: int
    counts: dict[str, dict[str, int]]
    patients: dict[str, int]
    excluded: list[dict[str, str]]
    skipped: list[str]
    duplicates: list[dict]
    warnings: list[str]
    content_hash: str
    eval_source: str | None = None
    format_version: int = REPORT_FORMAT_VERSION

    @property
    def total_images(self) -> int:
        """Number of images written over all splits."""
        return sum(sum(per_grade.values()) for per_grade in self.counts.values())

    def to_json(self) -> str:
        """The report as indented JSON with sorted keys (stable for diffing)."""
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"


@dataclasses.dataclass
class _Item:
    """One candidate image."""

    path: Path
    rel: str  # POSIX path relative to the source root, stored in SOURCE_KEY
    grade: int
    given_split: str | None  # output split name from the source, or None
    patient: str
    side: str
    sha256: str = ""
    split: str = ""


@dataclasses.dataclass
class _Scan:
    items: list[_Item] = dataclasses.field(default_factory=list)
    declared_splits: set[str] = dataclasses.field(default_factory=set)
    excluded: list[dict[str, str]] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)

    def exclude(self, rel: str, reason: str) -> None:
        logger.warning("Excluding %s: %s", rel, reason)
        self.excluded.append({"path": rel, "reason": reason})


def ingest(source: str | os.PathLike, out_dir: str | os.PathLike, *,
           eval_fraction: float = 0.2, seed: int = 42,
           manifest: str | os.PathLike | None = None,
           eval_source: str | os.PathLike | None = None) -> IngestReport:
    """Imports graded knee images from ``source`` into TFRecords in ``out_dir``.

    Inputs, one of:

    * folders ``<source>/<split>/<grade>/<file>`` with split names train,
      val/valid/validation/eval (all written as "eval") and test;
    * folders ``<source>/<grade>/<file>`` without splits;
    * a CSV ``manifest`` with columns ``path,grade`` and optional
      ``patient_id``, ``side`` (L/R/U) and ``split``; paths are relative to
      the CSV's folder or absolute, and must lie inside ``source``.

    Grades are 0..4; files are .png/.jpg/.jpeg. Patient and side come from
    names like ``9001695L.png`` (otherwise patient = file stem, side "U");
    manifest columns take precedence.

    Args:
        source: Dataset root folder. Record SOURCE_KEY values are relative to it.
        out_dir: Output folder; may exist only if empty or a previous import.
        eval_fraction: Fraction of patients (per worst-grade stratum) carved
            into eval when the source gives no eval split; 0 < f < 1.
        seed: Seed for the carved split and the record order.
        manifest: Optional CSV manifest; without it ``source`` is walked.
        eval_source: Optional folder ``<grade>/<file>`` that is the eval split as
            given (e.g. a dataset's own validation split kept beside its train
            folder); every image of ``source`` then goes to train (test stays test).
            Its SOURCE_KEY values are ``<folder name>/<grade>/<file>``.

    Returns:
        The import report, also written to ``<out_dir>/ingest_report.json``.

    Raises:
        IngestError: On an unknown grade or split, an image or patient that
            appears in two given splits, no usable images, an empty split, or
            an ``out_dir`` that would clobber something else. Nothing is
            written in that case.
    """
    source_dir = Path(source)
    out = Path(out_dir)
    if not 0.0 < eval_fraction < 1.0:
        raise IngestError(f"eval_fraction must be between 0 and 1, got {eval_fraction}")
    if not source_dir.is_dir():
        raise IngestError(f"source folder {source_dir} does not exist")
    _check_out_dir(out, source_dir)

    if manifest is None:
        scan = _scan_folders(source_dir)
    else:
        scan = _scan_manifest(source_dir, Path(manifest))
    if eval_source is not None:
        _add_eval_source(scan, Path(eval_source))
    logger.info("Found %d candidate images in %s", len(scan.items), source_dir)
    items = _inspect(scan)
    items, duplicates = _resolve_duplicates(items, scan)
    if not items:
        raise IngestError(f"no usable images in {source_dir}")
    for split in sorted(scan.declared_splits - {i.given_split for i in items}):
        raise IngestError(f"the source's {split} split has no usable images")
    _check_patient_leaks(items)
    policy, warnings = _assign_splits(items, eval_fraction, seed)

    splits = sorted({item.split for item in items})
    report = IngestReport(
        source=str(source),
        manifest=None if manifest is None else str(manifest),
        split_policy=policy,
        eval_fraction=eval_fraction,
        seed=seed,
        counts={s: _grade_counts(i for i in items if i.split == s) for s in splits},
        patients={s: len({i.patient for i in items if i.split == s}) for s in splits},
        excluded=scan.excluded,
        skipped=scan.skipped,
        duplicates=duplicates,
        warnings=warnings,
        content_hash=_content_hash(items),
        eval_source=None if eval_source is None else str(eval_source),
    )
    _write_output(out, items, report, seed)
    logger.info("Imported %d images into %s: %s (%d excluded, content %s)",
                report.total_images, out, report.counts, len(report.excluded),
                report.content_hash[:12])
    return report


def parse_knee_name(stem: str) -> tuple[str, str]:
    """Patient id and side from a file stem: "9001695L" -> ("9001695", "L").

    Stems not of the form ``<id><L|R>`` (id ending in a digit) give
    ``(stem, "U")``.
    """
    match = _KNEE_NAME.match(stem)
    if match is None:
        return stem, "U"
    return match.group("patient"), match.group("side")


def _check_out_dir(out: Path, source_dir: Path) -> None:
    resolved_out, resolved_source = out.resolve(), source_dir.resolve()
    if resolved_out == resolved_source or resolved_source in resolved_out.parents:
        raise IngestError(f"out_dir {out} must not be inside the source {source_dir}")
    if not out.exists():
        return
    if not out.is_dir():
        raise IngestError(f"out_dir {out} exists and is not a folder")
    if any(out.iterdir()) and not (out / REPORT_NAME).is_file():
        raise IngestError(
            f"refusing to overwrite {out}: it is not empty and holds no {REPORT_NAME} "
            "from a previous import")


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def _grade_of_folder(folder: Path, rel: str) -> int:
    if folder.name not in _GRADE_NAMES:
        raise IngestError(
            f"unknown grade folder '{rel}': grade folders must be named 0..4")
    return int(folder.name)


def _scan_folders(source_dir: Path) -> _Scan:
    """Lists candidate images of a ``<split>/<grade>/`` or ``<grade>/`` tree."""
    scan = _Scan()
    split_dirs, grade_dirs = [], []
    for entry in sorted(source_dir.iterdir()):
        if _is_hidden(entry):
            scan.skipped.append(entry.name)
        elif entry.is_dir():
            if entry.name.lower() in SPLIT_ALIASES:
                split_dirs.append(entry)
            elif entry.name.isdigit():
                grade_dirs.append((entry, _grade_of_folder(entry, entry.name)))
            else:
                raise IngestError(
                    f"unexpected folder '{entry.name}' in {source_dir}: expected grade "
                    f"folders 0..4 or split folders ({', '.join(sorted(SPLIT_ALIASES))})")
        else:
            _stray_file(scan, entry, entry.name)
    if split_dirs and grade_dirs:
        raise IngestError(
            f"{source_dir} mixes split folders and grade folders; use one layout")
    for grade_dir, grade in grade_dirs:
        _scan_grade_dir(scan, source_dir, grade_dir, grade, None)
    for split_dir in split_dirs:
        split = SPLIT_ALIASES[split_dir.name.lower()]
        scan.declared_splits.add(split)
        for entry in sorted(split_dir.iterdir()):
            rel = f"{split_dir.name}/{entry.name}"
            if _is_hidden(entry):
                scan.skipped.append(rel)
            elif entry.is_dir():
                grade = _grade_of_folder(entry, rel)
                _scan_grade_dir(scan, source_dir, entry, grade, split)
            else:
                _stray_file(scan, entry, rel)
    return scan


def _add_eval_source(scan: _Scan, eval_dir: Path) -> None:
    """Adds a ``<grade>/`` folder as the given eval split; the rest becomes train."""
    if not eval_dir.is_dir():
        raise IngestError(f"eval source folder {eval_dir} does not exist")
    if features.EVAL_SPLIT in scan.declared_splits or any(
            item.given_split == features.EVAL_SPLIT for item in scan.items):
        raise IngestError(f"the source already has an eval split; {eval_dir} would be a "
                          "second one")
    extra = _scan_folders(eval_dir)
    if extra.declared_splits:
        raise IngestError(f"eval source {eval_dir} must hold grade folders 0..4, not split "
                          "folders")
    prefix = eval_dir.resolve().name
    for item in scan.items:
        item.given_split = item.given_split or features.TRAIN_SPLIT
    for item in extra.items:
        item.rel = f"{prefix}/{item.rel}"
        item.given_split = features.EVAL_SPLIT
    scan.items += extra.items
    scan.excluded += [{**e, "path": f"{prefix}/{e['path']}"} for e in extra.excluded]
    scan.skipped += [f"{prefix}/{name}" for name in extra.skipped]
    scan.declared_splits |= {features.TRAIN_SPLIT, features.EVAL_SPLIT}


def _stray_file(scan: _Scan, path: Path, rel: str) -> None:
    """A file outside any grade folder: images are excluded, helpers skipped."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        scan.exclude(rel, "image outside a grade folder (grade unknown)")
    else:
        scan.skipped.append(rel)


def _scan_grade_dir(scan: _Scan, source_dir: Path, grade_dir: Path, grade: int,
                    split: str | None) -> None:
    for path in sorted(p for p in grade_dir.rglob("*") if not p.is_dir()):
        rel = path.relative_to(source_dir).as_posix()
        if any(part.startswith(".") for part in path.relative_to(grade_dir).parts):
            scan.skipped.append(rel)
        elif path.suffix.lower() not in IMAGE_SUFFIXES:
            scan.exclude(rel, f"not an image file (suffix '{path.suffix}')")
        else:
            patient, side = parse_knee_name(path.stem)
            scan.items.append(_Item(path, rel, grade, split, patient, side))


def _scan_manifest(source_dir: Path, manifest: Path) -> _Scan:
    """Lists candidate images from a CSV with path,grade[,patient_id,side,split]."""
    if not manifest.is_file():
        raise IngestError(f"manifest {manifest} does not exist")
    scan = _Scan()
    root = source_dir.resolve()
    with manifest.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames or ())
        missing = {"path", "grade"} - columns
        if missing:
            raise IngestError(
                f"manifest {manifest} lacks column(s) {', '.join(sorted(missing))}")
        for line, row in enumerate(reader, start=2):
            where = f"{manifest.name} line {line}"
            raw_path = (row.get("path") or "").strip()
            if not raw_path:
                raise IngestError(f"{where}: empty path")
            path = (manifest.parent / raw_path).resolve()
            try:
                rel = path.relative_to(root).as_posix()
            except ValueError as e:
                raise IngestError(
                    f"{where}: {raw_path} is outside the source {source_dir}") from e
            grade = _parse_grade(row.get("grade"), where)
            split = _parse_split(row.get("split"), where)
            patient, side = parse_knee_name(path.stem)
            patient = (row.get("patient_id") or "").strip() or patient
            side = _parse_side(row.get("side"), where) or side
            if not path.is_file():
                scan.exclude(rel, "listed in the manifest but missing")
            elif path.suffix.lower() not in IMAGE_SUFFIXES:
                scan.exclude(rel, f"not an image file (suffix '{path.suffix}')")
            else:
                scan.items.append(_Item(path, rel, grade, split, patient, side))
    if len({item.given_split is None for item in scan.items}) > 1:
        raise IngestError(f"manifest {manifest} gives a split for some rows but not all")
    return scan


def _parse_grade(value: str | None, where: str) -> int:
    text = (value or "").strip()
    if text not in _GRADE_NAMES:
        raise IngestError(f"{where}: unknown grade '{text}' (expected 0..4)")
    return int(text)


def _parse_split(value: str | None, where: str) -> str | None:
    text = (value or "").strip().lower()
    if not text:
        return None
    if text not in SPLIT_ALIASES:
        raise IngestError(
            f"{where}: unknown split '{text}' (expected one of {', '.join(sorted(SPLIT_ALIASES))})")
    return SPLIT_ALIASES[text]


def _parse_side(value: str | None, where: str) -> str | None:
    text = (value or "").strip().upper()
    if not text:
        return None
    if text not in ("L", "R", "U"):
        raise IngestError(f"{where}: unknown side '{text}' (expected L, R or U)")
    return text


def _decode_problem(data: bytes) -> str | None:
    """Why ``data`` is not a usable PNG/JPEG, or None if it decodes fully."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image_format = image.format
            image.load()  # decodes every pixel: catches truncated files
    # Broken files raise many types from deep inside the decoders (OSError,
    # SyntaxError, struct/zlib errors...); any of them means "unreadable".
    except Exception as e:  # noqa: BLE001
        return f"cannot decode image: {type(e).__name__}: {e}"
    if image_format not in _DECODABLE_FORMATS:
        return f"unsupported image format {image_format}"
    return None


def _inspect(scan: _Scan) -> list[_Item]:
    """Hashes and decodes every candidate; returns the readable ones."""
    readable = []
    for count, item in enumerate(scan.items, start=1):
        data = item.path.read_bytes()
        problem = _decode_problem(data)
        if problem is not None:
            scan.exclude(item.rel, problem)
        else:
            item.sha256 = hashlib.sha256(data).hexdigest()
            readable.append(item)
        if count % _PROGRESS_EVERY == 0:
            logger.info("Checked %d/%d images", count, len(scan.items))
    return readable


def _resolve_duplicates(items: list[_Item], scan: _Scan) -> tuple[list[_Item], list[dict]]:
    """Applies the duplicate policy to byte-identical images.

    Identical images in two given splits are a leak (IngestError). Otherwise
    copies with conflicting grades are all excluded, and copies with one grade
    are reduced to the first by path, so no image can be in two splits or
    weigh twice.
    """
    groups: dict[str, list[_Item]] = defaultdict(list)
    for item in items:
        groups[item.sha256].append(item)
    duplicates, leaks, dropped = [], [], set()
    for sha, group in sorted(groups.items()):
        if len(group) < 2:
            continue
        group.sort(key=lambda i: i.rel)
        files = [i.rel for i in group]
        grades = sorted({i.grade for i in group})
        if len({i.given_split for i in group}) > 1:
            leaks.append(" = ".join(f"{i.rel} ({i.given_split})" for i in group))
            continue
        if len(grades) > 1:
            action = f"all excluded: conflicting grades {grades}"
            dropped.update(files)
            for item in group:
                scan.exclude(item.rel, f"byte-identical copies have conflicting grades {grades}")
        else:
            action = f"kept {files[0]}, excluded the other copies"
            dropped.update(files[1:])
            for item in group[1:]:
                scan.exclude(item.rel, f"byte-identical duplicate of {files[0]}")
        duplicates.append({"sha256": sha, "files": files, "grades": grades, "action": action})
    if leaks:
        raise IngestError(
            f"{len(leaks)} image(s) appear byte-identical in two given splits "
            f"(a train/eval leak): {_listing(leaks)}")
    return [i for i in items if i.rel not in dropped], duplicates


def _check_patient_leaks(items: list[_Item]) -> None:
    splits_of: dict[str, set[str]] = defaultdict(set)
    for item in items:
        if item.given_split is not None:
            splits_of[item.patient].add(item.given_split)
    leaks = [f"{p} ({', '.join(sorted(s))})" for p, s in sorted(splits_of.items()) if len(s) > 1]
    if leaks:
        raise IngestError(
            f"{len(leaks)} patient(s) appear in more than one given split "
            f"(a patient-level leak): {_listing(leaks)}")


def _assign_splits(items: list[_Item], eval_fraction: float,
                   seed: int) -> tuple[str, list[str]]:
    """Sets ``item.split``; returns the split policy and any warnings."""
    given = {item.given_split for item in items}
    if features.EVAL_SPLIT in given:
        if features.TRAIN_SPLIT not in given:
            raise IngestError("the source has an eval split but no train split")
        for item in items:
            item.split = item.given_split
        policy = "given"
    else:
        if None not in given and features.TRAIN_SPLIT not in given:
            raise IngestError("the source has no train split to carve eval from")
        pool = [i for i in items if i.given_split != TEST_SPLIT]
        for item in items:
            item.split = item.given_split or features.TRAIN_SPLIT
        for item in _carve_eval(pool, eval_fraction, seed):
            item.split = features.EVAL_SPLIT
        policy = "patient_stratified"

    for split in (features.TRAIN_SPLIT, features.EVAL_SPLIT):
        if not any(item.split == split for item in items):
            raise IngestError(
                f"split '{split}' would have no images (carving needs at least two "
                "patients with the same worst grade)")
    warnings = []
    eval_grades = {i.grade for i in items if i.split == features.EVAL_SPLIT}
    missing = sorted({i.grade for i in items} - eval_grades)
    if missing:
        warnings.append(f"grade(s) {missing} have no image in the eval split")
        logger.warning(warnings[-1])
    return policy, warnings


def _carve_eval(pool: list[_Item], eval_fraction: float, seed: int) -> list[_Item]:
    """Picks eval images by patient, stratified by each patient's worst grade.

    Patients are ordered by a seeded hash of their id, so the choice does not
    depend on listing order and adding patients does not reshuffle the rest.
    Each stratum with two or more patients gives at least one to eval and
    keeps at least one in train.
    """
    by_patient: dict[str, list[_Item]] = defaultdict(list)
    for item in pool:
        by_patient[item.patient].append(item)
    strata: dict[int, list[str]] = defaultdict(list)
    for patient, knees in by_patient.items():
        strata[max(k.grade for k in knees)].append(patient)
    chosen = []
    for grade in sorted(strata):
        patients = sorted(strata[grade], key=lambda p: _seeded_hash(seed, p))
        n = len(patients)
        take = 0 if n < 2 else min(max(math.floor(n * eval_fraction + 0.5), 1), n - 1)
        for patient in patients[:take]:
            chosen.extend(by_patient[patient])
    return chosen


def _seeded_hash(seed: int, text: str) -> str:
    return hashlib.sha256(f"{seed}:{text}".encode()).hexdigest()


def _grade_counts(items) -> dict[str, int]:
    counts = {name: 0 for name in _GRADE_NAMES}
    for item in items:
        counts[str(item.grade)] += 1
    return counts


def _content_hash(items: list[_Item]) -> str:
    lines = sorted(f"{i.sha256} {i.grade} {i.split}\n" for i in items)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _listing(entries: list[str]) -> str:
    shown = "; ".join(entries[:_MAX_LISTED])
    more = len(entries) - _MAX_LISTED
    return shown + (f"; and {more} more" if more > 0 else "")


def _write_output(out: Path, items: list[_Item], report: IngestReport, seed: int) -> None:
    """Writes records and report to a temporary sibling, then renames it to ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the result is a normal folder
    try:
        written = 0
        for split in sorted(report.counts):
            (tmp / split).mkdir()
            in_split = sorted((i for i in items if i.split == split),
                              key=lambda i: _seeded_hash(seed, f"{i.sha256}:{i.rel}"))
            written = _write_records(tmp / split / RECORD_NAME, in_split, written, len(items))
        (tmp / REPORT_NAME).write_text(report.to_json(), encoding="utf-8")
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_records(path: Path, items: list[_Item], written: int, total: int) -> int:
    """Writes ``items`` as tf.train.Example records; returns the running count."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    with tf.io.TFRecordWriter(str(path)) as writer:
        for item in items:
            data = item.path.read_bytes()
            if hashlib.sha256(data).hexdigest() != item.sha256:
                raise IngestError(f"{item.rel} changed while it was being imported")
            example = tf.train.Example(features=tf.train.Features(feature={
                features.IMAGE_KEY: _bytes_feature(tf, data),
                features.LABEL_KEY: tf.train.Feature(
                    int64_list=tf.train.Int64List(value=[item.grade])),
                features.PATIENT_KEY: _bytes_feature(tf, item.patient.encode()),
                features.SIDE_KEY: _bytes_feature(tf, item.side.encode()),
                features.SOURCE_KEY: _bytes_feature(tf, item.rel.encode()),
            }))
            # deterministic=True orders the feature map, so reruns give equal bytes.
            writer.write(example.SerializeToString(deterministic=True))
            written += 1
            if written % _PROGRESS_EVERY == 0:
                logger.info("Wrote %d/%d records", written, total)
    return written


def _bytes_feature(tf, value: bytes):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


