"""Imports a folder (or CSV manifest) of KL-graded knee images into TFRecords.

The output is what the pipeline's ExampleGen reads::

    <out_dir>/train/data.tfrecord      tf.train.Example records (see features.py)
    <out_dir>/eval/data.tfrecord
    <out_dir>/test/data.tfrecord       only if the source had a test split
    <out_dir>/ingest_report.json       counts, exclusions, duplicates, content hash

Every image goes through the one conversion the web app and `koa grade` use
(components/image_files.py): PNG kept as it is, JPEG and DICOM converted to PNG,
EXIF orientation applied. Records carry the model's input bytes and the source
file's facts (format, size, bit depth, channels, EXIF orientation, modality), which
pipeline/schema.pbtxt constrains. Unreadable files are excluded with the reason,
never dropped silently. Problems that would make the evaluation untrustworthy (a
grade outside 0..4, the same image or patient in two given splits) stop the import
with an ``IngestError``. When the source has no train/eval split, the eval split is
carved by patient, stratified by the patient's worst grade. Output is built in a
temporary sibling folder and renamed into place, so a failed import leaves nothing
behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

from components import features, image_files
from components.atomic_dir import replace_dir
from components.ingest_sources import (  # noqa: F401 (IngestError is this module's error too)
    GRADE_NAMES, SIDE_FROM_MANIFEST, IngestError, Item, Scan, add_eval_source, listing,
    scan_folders, scan_manifest)
from components.ingest_splits import assign_splits, check_patient_leaks, seeded_hash

logger = logging.getLogger(__name__)

REPORT_NAME = "ingest_report.json"
RECORD_NAME = "data.tfrecord"
# 2: repeated_rows; sha256 and content_hash are of the record's image bytes.
REPORT_FORMAT_VERSION = 2

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
        duplicates: Groups of identical images (equal converted image bytes), each
            {"sha256", "files", "grades", "action"}.
        warnings: Things worth a look that did not stop the import.
        content_hash: sha256 over the sorted "<image sha256> <grade> <split>"
            lines of every imported image, the sha256 being of the record's image
            bytes (a PNG file's own bytes): equal hashes mean equal data.
        repeated_rows: Manifest rows naming a file an earlier row named with the
            same label, each {"path", "lines", "action"}: the file is one image.
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
    repeated_rows: list[dict] = dataclasses.field(default_factory=list)
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

    Grades are 0..4; files are PNG, JPEG or DICOM (.png/.jpg/.jpeg/.dcm/.dicom,
    or any name with a DICOM preamble). Patient and side come from names like
    ``9001695L.png`` (otherwise patient = file stem, side "U"); a DICOM's
    laterality overrides the name's side; manifest columns take precedence (a
    manifest side contradicting the DICOM laterality excludes the image).

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
    dicom_warning = _dicom_patient_warning(items)
    if not items:
        raise IngestError(f"no usable images in {source_dir}")
    for split in sorted(scan.declared_splits - {i.given_split for i in items}):
        raise IngestError(f"the source's {split} split has no usable images")
    check_patient_leaks(items)
    policy, warnings = assign_splits(items, eval_fraction, seed)
    if dicom_warning:
        warnings.insert(0, dicom_warning)

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
        repeated_rows=scan.repeated_rows,
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


def image_facts(radiograph: image_files.Radiograph) -> dict[str, int | str]:
    """The record's image-fact features (features.IMAGE_FACT_KEYS) of a radiograph."""
    return {
        features.IMAGE_FORMAT_KEY: radiograph.image_format,
        features.IMAGE_HEIGHT_KEY: radiograph.height,
        features.IMAGE_WIDTH_KEY: radiograph.width,
        features.BIT_DEPTH_KEY: radiograph.bit_depth,
        features.CHANNELS_KEY: radiograph.channels,
        features.EXIF_ORIENTATION_KEY: radiograph.exif_orientation,
        features.MODALITY_KEY: radiograph.modality,
    }


def _inspect(scan: Scan) -> list[Item]:
    """Converts every candidate; returns the readable ones with hash, facts and side."""
    readable = []
    for count, item in enumerate(scan.items, start=1):
        try:
            radiograph = image_files.read_radiograph(item.path.read_bytes())
        except image_files.UnreadableImageError as e:
            scan.exclude(item.rel, f"cannot decode image: {e}")
        else:
            problem = _apply_laterality(item, radiograph.laterality)
            if problem is not None:
                scan.exclude(item.rel, problem)
            else:
                item.sha256 = hashlib.sha256(radiograph.png).hexdigest()
                item.facts = image_facts(radiograph)
                readable.append(item)
        if count % _PROGRESS_EVERY == 0:
            logger.info("Checked %d/%d images", count, len(scan.items))
    return readable


def _apply_laterality(item: Item, laterality: str) -> str | None:
    """Takes the side from a DICOM's laterality; the reason to exclude on a contradiction.

    The laterality is written by the modality at acquisition, so it beats a file
    name; a manifest's side is a curator's statement, so a contradiction leaves
    the label in doubt.
    """
    if laterality not in ("L", "R") or laterality == item.side:
        return None
    if item.side_source == SIDE_FROM_MANIFEST:
        return (f"the manifest's side {item.side} contradicts the DICOM laterality "
                f"{laterality}")
    if item.side != "U":
        logger.warning("%s: DICOM laterality %s replaces side %s from the file name",
                       item.rel, laterality, item.side)
    item.side = laterality
    return None


def _dicom_patient_warning(items: list[Item]) -> str | None:
    """DICOM files named by UID give one 'patient' per file: both knees could split."""
    from_names = [i for i in items if i.facts[features.IMAGE_FORMAT_KEY] == "dicom"
                  and i.patient == i.path.stem]
    if not from_names:
        return None
    message = (f"{len(from_names)} DICOM file(s) take their patient id from the file name "
               "(e.g. " + from_names[0].rel + "); give patient_id in a manifest so both "
               "knees of a patient stay in one split")
    logger.warning(message)
    return message


def _resolve_duplicates(items: list[Item], scan: Scan) -> tuple[list[Item], list[dict]]:
    """Applies the duplicate policy to identical images (equal converted bytes).

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
                scan.exclude(item.rel, f"identical copies have conflicting grades {grades}")
        else:
            action = f"kept {files[0]}, excluded the other copies"
            dropped.update(files[1:])
            for item in group[1:]:
                scan.exclude(item.rel, f"identical duplicate of {files[0]}")
        duplicates.append({"sha256": sha, "files": files, "grades": grades, "action": action})
    if leaks:
        raise IngestError(
            f"{len(leaks)} image(s) appear identical in two given splits "
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
            try:
                radiograph = image_files.read_radiograph(item.path.read_bytes())
            except image_files.UnreadableImageError as e:
                raise IngestError(f"{item.rel} changed while it was being imported") from e
            if hashlib.sha256(radiograph.png).hexdigest() != item.sha256:
                raise IngestError(f"{item.rel} changed while it was being imported")
            writer.write(serialized_example(
                radiograph, grade=item.grade, patient=item.patient, side=item.side,
                source=item.rel))
            written += 1
            if written % _PROGRESS_EVERY == 0:
                logger.info("Wrote %d/%d records", written, total)
    return written


def serialized_example(radiograph: image_files.Radiograph, *, grade: int, patient: str,
                       side: str, source: str) -> bytes:
    """One record as ingestion writes it: a serialized tf.train.Example.

    Features (components/features.py): IMAGE_KEY (the radiograph's PNG bytes),
    LABEL_KEY (int64 grade), PATIENT_KEY, SIDE_KEY, SOURCE_KEY (bytes) and the
    image facts of `image_facts` (int64 or bytes).
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    def bytes_feature(value: bytes):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    feature = {
        features.IMAGE_KEY: bytes_feature(radiograph.png),
        features.LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[grade])),
        features.PATIENT_KEY: bytes_feature(patient.encode()),
        features.SIDE_KEY: bytes_feature(side.encode()),
        features.SOURCE_KEY: bytes_feature(source.encode()),
    }
    for key, value in image_facts(radiograph).items():
        feature[key] = (bytes_feature(value.encode()) if isinstance(value, str) else
                        tf.train.Feature(int64_list=tf.train.Int64List(value=[value])))
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    # deterministic=True orders the feature map, so reruns give equal bytes.
    return example.SerializeToString(deterministic=True)
