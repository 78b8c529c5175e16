"""Reads what an import is made of: the source's folders or CSV manifest, and an optional
eval folder, into candidate images with grade, patient, side and given split.

Layouts: ``<source>/<split>/<grade>/<file>``, ``<source>/<grade>/<file>``, or a CSV manifest
``path,grade[,patient_id,side,split]``. Nothing is decoded here (components/ingestion.py
converts every image); only a file without an image suffix is peeked at for the DICOM
preamble, since PACS exports often name files by UID without a suffix.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import io
import logging
import re
from pathlib import Path

from components import features, image_files

logger = logging.getLogger("components.ingestion")

TEST_SPLIT = "test"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
# Where the side of an Item came from: a manifest column, or the file name (or nothing).
SIDE_FROM_MANIFEST = "manifest"
SIDE_FROM_NAME = "name"
# Folder (or manifest) split names and the output split they feed.
SPLIT_ALIASES = {
    "train": features.TRAIN_SPLIT,
    "val": features.EVAL_SPLIT,
    "valid": features.EVAL_SPLIT,
    "validation": features.EVAL_SPLIT,
    "eval": features.EVAL_SPLIT,
    "test": TEST_SPLIT,
}
GRADE_NAMES = tuple(str(g) for g in range(features.NUM_GRADES))
# "<id><L|R>" where the id ends in a digit, e.g. 9001695L or syn00017R.
_KNEE_NAME = re.compile(r"^(?P<patient>[A-Za-z_-]*\d+)(?P<side>[LR])$")
_MAX_LISTED = 20


class IngestError(Exception):
    """The source cannot be imported as it is; the message names the problem."""


@dataclasses.dataclass
class Item:
    """One candidate image."""

    path: Path
    rel: str  # POSIX path relative to the source root, stored in SOURCE_KEY
    grade: int
    given_split: str | None  # output split name from the source, or None
    patient: str
    side: str
    side_source: str = SIDE_FROM_NAME
    sha256: str = ""  # of the converted image bytes written to the record
    split: str = ""
    facts: dict = dataclasses.field(default_factory=dict)  # IMAGE_FACT_KEYS -> value


@dataclasses.dataclass
class Scan:
    items: list[Item] = dataclasses.field(default_factory=list)
    declared_splits: set[str] = dataclasses.field(default_factory=set)
    excluded: list[dict[str, str]] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    # Manifest rows naming a file an earlier row already named: {"path", "lines", "action"}.
    repeated_rows: list[dict] = dataclasses.field(default_factory=list)

    def exclude(self, rel: str, reason: str) -> None:
        logger.warning("Excluding %s: %s", rel, reason)
        self.excluded.append({"path": rel, "reason": reason})


def parse_knee_name(stem: str) -> tuple[str, str]:
    """Patient id and side from a file stem: "9001695L" -> ("9001695", "L").

    Stems not of the form ``<id><L|R>`` (id ending in a digit) give
    ``(stem, "U")``.
    """
    match = _KNEE_NAME.match(stem)
    if match is None:
        return stem, "U"
    return match.group("patient"), match.group("side")


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def _grade_of_folder(folder: Path, rel: str) -> int:
    if folder.name not in GRADE_NAMES:
        raise IngestError(
            f"unknown grade folder '{rel}': grade folders must be named 0..4")
    return int(folder.name)


def scan_folders(source_dir: Path) -> Scan:
    """Lists candidate images of a ``<split>/<grade>/`` or ``<grade>/`` tree."""
    scan = Scan()
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


def add_eval_source(scan: Scan, eval_dir: Path) -> None:
    """Adds a ``<grade>/`` folder as the given eval split; the rest becomes train."""
    if not eval_dir.is_dir():
        raise IngestError(f"eval source folder {eval_dir} does not exist")
    if features.EVAL_SPLIT in scan.declared_splits or any(
            item.given_split == features.EVAL_SPLIT for item in scan.items):
        raise IngestError(f"the source already has an eval split; {eval_dir} would be a "
                          "second one")
    extra = scan_folders(eval_dir)
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


def is_image_file(path: Path) -> bool:
    """An image suffix, or (any other name) a DICOM Part 10 preamble."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    end = image_files.DICOM_MAGIC_OFFSET + len(image_files.DICOM_MAGIC)
    try:
        with path.open("rb") as handle:
            head = handle.read(end)
    except OSError:
        return False
    return head[image_files.DICOM_MAGIC_OFFSET:end] == image_files.DICOM_MAGIC


def _stray_file(scan: Scan, path: Path, rel: str) -> None:
    """A file outside any grade folder: images are excluded, helpers skipped."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        scan.exclude(rel, "image outside a grade folder (grade unknown)")
    else:
        scan.skipped.append(rel)


def _scan_grade_dir(scan: Scan, source_dir: Path, grade_dir: Path, grade: int,
                    split: str | None) -> None:
    for path in sorted(p for p in grade_dir.rglob("*") if not p.is_dir()):
        rel = path.relative_to(source_dir).as_posix()
        if any(part.startswith(".") for part in path.relative_to(grade_dir).parts):
            scan.skipped.append(rel)
        elif not is_image_file(path):
            scan.exclude(rel, f"not an image file (suffix '{path.suffix}')")
        else:
            patient, side = parse_knee_name(path.stem)
            scan.items.append(Item(path, rel, grade, split, patient, side))


def scan_manifest(source_dir: Path, manifest: Path) -> Scan:
    """Lists candidate images from a CSV with path,grade[,patient_id,side,split].

    A file named on several rows is one image: repeats that agree are listed in
    ``Scan.repeated_rows``; repeats that disagree (grade, split, patient or side)
    exclude the file, since its label is in doubt.

    Raises:
        IngestError: naming the manifest and line, for text that is not UTF-8, a
            missing column, an empty path, a path outside ``source_dir``, or an
            unknown grade, split or side.
    """
    if not manifest.is_file():
        raise IngestError(f"manifest {manifest} does not exist")
    scan = Scan()
    root = source_dir.resolve()
    reader = csv.DictReader(io.StringIO(_read_utf8(manifest), newline=""))
    columns = set(reader.fieldnames or ())
    missing = {"path", "grade"} - columns
    if missing:
        raise IngestError(
            f"manifest {manifest} lacks column(s) {', '.join(sorted(missing))}")
    first_row: dict[str, tuple[int, tuple]] = {}  # rel -> (line, label) of its first row
    conflicting: dict[str, list[int]] = {}
    for row in reader:
        # The reader's line number is the row's last physical line (quoted fields may
        # span several); rows are almost always one line.
        where = f"{manifest.name} line {reader.line_num}"
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
        given_side = _parse_side(row.get("side"), where)
        label = (grade, split, patient, given_side or side)
        if rel in first_row:
            first_line, first_label = first_row[rel]
            if label != first_label:
                conflicting.setdefault(rel, [first_line]).append(reader.line_num)
            else:
                scan.repeated_rows.append({
                    "path": rel, "lines": [first_line, reader.line_num],
                    "action": f"counted once (line {first_line})"})
                logger.warning("%s repeats line %d (%s): counted once", where, first_line, rel)
            continue
        first_row[rel] = (reader.line_num, label)
        if not path.is_file():
            scan.exclude(rel, "listed in the manifest but missing")
        elif not is_image_file(path):
            scan.exclude(rel, f"not an image file (suffix '{path.suffix}')")
        else:
            item = Item(path, rel, grade, split, patient, given_side or side)
            if given_side:
                item.side_source = SIDE_FROM_MANIFEST
            scan.items.append(item)
    for rel, lines in conflicting.items():
        scan.items = [item for item in scan.items if item.rel != rel]
        scan.excluded = [e for e in scan.excluded if e["path"] != rel]
        scan.exclude(rel, f"listed on manifest lines {', '.join(map(str, lines))} with "
                          "different grade, split, patient or side")
    if len({item.given_split is None for item in scan.items}) > 1:
        raise IngestError(f"manifest {manifest} gives a split for some rows but not all")
    return scan


def _read_utf8(manifest: Path) -> str:
    """The manifest's text (a UTF-8 byte-order mark is allowed and dropped)."""
    data = manifest.read_bytes().removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise IngestError(
            f"{manifest.name} line {line}: not UTF-8 text (byte 0x{data[e.start]:02x}); "
            "save the manifest as UTF-8") from e


def _parse_grade(value: str | None, where: str) -> int:
    text = (value or "").strip()
    if text not in GRADE_NAMES:
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


def listing(entries: list[str]) -> str:
    shown = "; ".join(entries[:_MAX_LISTED])
    more = len(entries) - _MAX_LISTED
    return shown + (f"; and {more} more" if more > 0 else "")
