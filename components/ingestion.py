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

import dataclasses
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

from PIL import Image

from components import features
from components.atomic_dir import replace_dir
from components.ingest_sources import (  # noqa: F401 (IngestError is this module's error too)
    GRADE_NAMES, IngestError, Item, Scan, add_eval_source, listing, scan_folders, scan_manifest)
from components.ingest_splits import assign_splits, check_patient_leaks, seeded_hash

logger = logging.getLogger(__name__)

REPORT_NAME = "ingest_report.json"
RECORD_NAME = "data.tfrecord"
REPORT_FORMAT_VERSION = 1
_DECODABLE_FORMATS = ("PNG", "JPEG")

_PROGRESS_EVERY = 1000


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
        scan = scan_folders(source_dir)
    else:
        scan = scan_manifest(source_dir, Path(manifest))
    if eval_source is not None:
        add_eval_source(scan, Path(eval_source))
    logger.info("Found %d candidate images in %s", len(scan.items), source_dir)
    items = _inspect(scan)
    items, duplicates = _resolve_duplicates(items, scan)
    if not items:
        raise IngestError(f"no usable images in {source_dir}")
    for split in sorted(scan.declared_splits - {i.given_split for i in items}):
        raise IngestError(f"the source's {split} split has no usable images")
    check_patient_leaks(items)
    policy, warnings = assign_splits(items, eval_fraction, seed)

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


def _inspect(scan: Scan) -> list[Item]:
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


def _resolve_duplicates(items: list[Item], scan: Scan) -> tuple[list[Item], list[dict]]:
    """Applies the duplicate policy to byte-identical images.

    Identical images in two given splits are a leak (IngestError). Otherwise
    copies with conflicting grades are all excluded, and copies with one grade
    are reduced to the first by path, so no image can be in two splits or
    weigh twice.
    """
    groups: dict[str, list[Item]] = defaultdict(list)
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
            f"(a train/eval leak): {listing(leaks)}")
    return [i for i in items if i.rel not in dropped], duplicates


def _grade_counts(items) -> dict[str, int]:
    counts = {name: 0 for name in GRADE_NAMES}
    for item in items:
        counts[str(item.grade)] += 1
    return counts


def _content_hash(items: list[Item]) -> str:
    lines = sorted(f"{i.sha256} {i.grade} {i.split}\n" for i in items)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _write_output(out: Path, items: list[Item], report: IngestReport, seed: int) -> None:
    """Writes records and report to a temporary sibling, then renames it to ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the result is a normal folder
    try:
        written = 0
        for split in sorted(report.counts):
            (tmp / split).mkdir()
            in_split = sorted((i for i in items if i.split == split),
                              key=lambda i: seeded_hash(seed, f"{i.sha256}:{i.rel}"))
            written = _write_records(tmp / split / RECORD_NAME, in_split, written, len(items))
        (tmp / REPORT_NAME).write_text(report.to_json(), encoding="utf-8")
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_records(path: Path, items: list[Item], written: int, total: int) -> int:
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
