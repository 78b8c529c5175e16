"""`koa evaluate`: a labelled external set (a clinic's own films) through the model, scored
with the metric code of the pipeline's Evaluator and report.

The set is read by `koa ingest`'s own scanners (``<grade>/`` folders, optionally under
split folders, or a CSV manifest ``path,grade``); every film is graded exactly as
`koa grade` grades it (koa/grade.py), through the model server or a SavedModel. Confusion
matrix, accuracy, QWK, MAE and per-grade recall come from ``components.metrics`` and the
expected calibration error from ``components.calibration`` (both load TensorFlow, so
scoring does even when grading went through the server). The confusion matrix counts the
model's served ``grade``.
"""

import dataclasses
import io
import logging
import math
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from components import atomic_dir, features, ingest_sources
from koa import grade as grading

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
CONFUSION_CSV = "confusion_matrix.csv"
CONFUSION_PNG = "confusion_matrix.png"
PREDICTIONS_FILE = "predictions.csv"
TRUE_GRADE_COLUMN = "true_grade"
DEFAULT_OUT_DIR = os.path.join("build", "evaluation")


@dataclasses.dataclass
class LabelledSet:
    """The films of an external set and their true grades.

    Attributes:
        grades: true KL grade per file path, in the scanners' order.
        excluded: files not evaluated, as {"path", "reason"} (missing, not an image,
            repeated with another grade).
        repeats: manifest rows naming a file already listed with the same grade.
    """

    grades: Dict[str, int]
    excluded: List[Dict[str, str]]
    repeats: int = 0


def load_labelled_set(data: str, root: Optional[str] = None) -> LabelledSet:
    """Reads a ``<grade>/`` folder tree or a ``path,grade`` CSV manifest.

    Args:
        data: the folder, or the manifest (a file).
        root: the folder manifest paths are relative to and must lie in (default: the
            manifest's folder). Ignored for a folder.

    Returns:
        The set; a file listed twice with one grade counts once, with two grades it is
        excluded.

    Raises:
        FileNotFoundError: ``data`` does not exist.
        components.ingest_sources.IngestError: the layout or manifest is not valid.
    """
    path = Path(data)
    if path.is_dir():
        scan = ingest_sources.scan_folders(path)
    elif path.is_file():
        scan = ingest_sources.scan_manifest(Path(root) if root else path.parent, path)
    else:
        raise FileNotFoundError(f"{data} does not exist")
    # Scanners that report repeated manifest rows themselves list them here.
    labelled = LabelledSet(grades={}, excluded=list(scan.excluded),
                           repeats=len(getattr(scan, "repeated_rows", ())))
    conflicting = set()
    for item in scan.items:
        key = str(item.path)
        if key not in labelled.grades:
            labelled.grades[key] = item.grade
        elif labelled.grades[key] == item.grade:
            labelled.repeats += 1
        else:
            conflicting.add(key)
    for key in sorted(conflicting):
        rows = [item for item in scan.items if str(item.path) == key]
        reason = "listed with grades " + " and ".join(map(str, sorted({i.grade for i in rows})))
        logger.warning("Excluding %s: %s", rows[0].rel, reason)
        labelled.excluded.append({"path": rows[0].rel, "reason": reason})
        del labelled.grades[key]
    return labelled


def _number(value: float) -> Optional[float]:
    """JSON has no NaN: a metric that is undefined (no examples of a grade) is null."""
    return None if value is None or math.isnan(value) else float(value)


def grade_metrics(labels: Sequence[int], grades: Sequence[int],
                  probabilities: np.ndarray) -> dict:
    """The Evaluator's figures for graded films.

    Args:
        labels: true KL grades, int [N].
        grades: the model's grades, int [N].
        probabilities: the model's grade probabilities, float [N, 5].

    Returns:
        {"examples", "accuracy", "qwk", "mae", "ece", "recall_grade_0".."recall_grade_4",
         "confusion_matrix" [5][5] (rows true grade, columns model grade)}; figures that
        are undefined (no examples, a grade absent) are None.
    """
    # The pipeline's metric modules load TensorFlow: only once there is something to score.
    from components import calibration, metrics  # pylint: disable=import-outside-toplevel
    matrix = metrics.confusion_matrix(labels, grades)
    total = int(matrix.sum())
    result = {
        "examples": total,
        "accuracy": _number(np.trace(matrix) / total) if total else None,
        "qwk": _number(metrics.quadratic_weighted_kappa(matrix)),
        "mae": _number(metrics.mean_absolute_error(matrix)),
        "ece": (_number(calibration.expected_calibration_error(probabilities, labels))
                if total else None),
    }
    for grade, recall in enumerate(metrics.recall_per_grade(matrix)):
        result[f"recall_grade_{grade}"] = _number(recall)
    result["confusion_matrix"] = matrix.tolist()
    return result


def confusion_csv(matrix: Sequence[Sequence[int]]) -> str:
    """The matrix as CSV text: one row per true grade, one column per model grade."""
    names = [f"{g} {name}" for g, name in enumerate(features.GRADE_NAMES)]
    lines = [",".join(["true \\ predicted", *names])]
    lines += [",".join([names[g], *(str(int(v)) for v in row)]) for g, row in enumerate(matrix)]
    return "\n".join(lines) + "\n"


_CELL_W, _CELL_H = 96, 60
_LEFT, _TOP, _MARGIN = 130, 96, 16
_DARK = np.array([8, 69, 148])  # cells shade from white to this blue by row share


def confusion_png(matrix: Sequence[Sequence[int]], title: str) -> bytes:
    """The matrix drawn as a PNG: counts in cells shaded by their share of the true-grade
    row (so each cell on the diagonal shows that grade's recall)."""
    counts = np.asarray(matrix, dtype=np.int64)
    n = counts.shape[0]
    width = _LEFT + n * _CELL_W + _MARGIN
    height = _TOP + n * _CELL_H + _MARGIN + 28
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=14)
    bold = ImageFont.load_default(size=18)
    draw.text((_MARGIN, _MARGIN), title, fill="black", font=bold)
    draw.text((_LEFT + n * _CELL_W / 2, _TOP - 46), "model grade", fill="black",
              font=font, anchor="mm")
    draw.text((_LEFT - 10, _TOP - 18), "true grade", fill="black", font=font, anchor="rm")
    rows = counts.sum(axis=1)
    for g, name in enumerate(features.GRADE_NAMES):
        x = _LEFT + g * _CELL_W + _CELL_W / 2
        draw.text((x, _TOP - 18), f"{g} {name}", fill="black", font=font, anchor="mm")
        y = _TOP + g * _CELL_H + _CELL_H / 2
        draw.text((_LEFT - 10, y), f"{g} {name}", fill="black", font=font, anchor="rm")
    for t in range(n):
        for p in range(n):
            share = counts[t, p] / rows[t] if rows[t] else 0.0
            colour = tuple(int(c) for c in np.rint(255 + share * (_DARK - 255)))
            box = (_LEFT + p * _CELL_W, _TOP + t * _CELL_H,
                   _LEFT + (p + 1) * _CELL_W, _TOP + (t + 1) * _CELL_H)
            draw.rectangle(box, fill=colour, outline=(190, 190, 190))
            draw.text(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), str(counts[t, p]),
                      fill="white" if share > 0.5 else "black", font=bold, anchor="mm")
    draw.text((_MARGIN, height - _MARGIN - 10),
              "shade: share of the true grade's row", fill=(90, 90, 90), font=font)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def summary_lines(report: dict) -> List[str]:
    """A few lines for the terminal."""
    files = report["files"]
    lines = [f"evaluated {files['graded']} of {files['listed']} films "
             f"({files['not_graded']} not graded, {files['excluded']} excluded, "
             f"{files['out_of_distribution']} flagged out of distribution) with "
             f"{', '.join(report['models']) or 'no model answer'}"]
    m = report["all"]
    if m["examples"]:
        lines.append(f"accuracy {m['accuracy']:.3f}  QWK {_fmt(m['qwk'])}  MAE "
                     f"{_fmt(m['mae'])}  ECE {_fmt(m['ece'])}")
        lines.append("recall per grade: " + ", ".join(
            f"{g} {name} {_fmt(m[f'recall_grade_{g}'])}"
            for g, name in enumerate(features.GRADE_NAMES)))
    return lines


def _fmt(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _metrics_of(results: Sequence[grading.FileResult], truth: Dict[str, int]) -> dict:
    labels = [truth[r.path] for r in results]
    grades = [r.prediction.grade for r in results]
    probabilities = np.array([r.prediction.probabilities for r in results],
                             dtype=np.float64).reshape(-1, features.NUM_GRADES)
    return grade_metrics(labels, grades, probabilities)


def evaluate(labelled: LabelledSet, results: Sequence[grading.FileResult]) -> dict:
    """The metrics JSON of graded films.

    Returns:
        {"files": counts, "models": ["name vN"], "all": metrics of every graded film,
         "in_distribution": metrics of the films the model did not flag,
         "not_graded": [{"path", "reason"}], "excluded": [{"path", "reason"}]}
        (metrics as :func:`grade_metrics`).
    """
    graded = [r for r in results if r.graded]
    accepted = [r for r in graded if not r.prediction.out_of_distribution]
    models = sorted({f"{r.prediction.model_name} v{r.prediction.model_version}"
                     if r.prediction.model_version is not None else r.prediction.model_name
                     for r in graded})
    return {
        "files": {"listed": len(labelled.grades) + len(labelled.excluded),
                  "graded": len(graded), "not_graded": len(results) - len(graded),
                  "excluded": len(labelled.excluded), "repeated_rows": labelled.repeats,
                  "out_of_distribution": len(graded) - len(accepted)},
        "models": models,
        "all": _metrics_of(graded, labelled.grades),
        "in_distribution": _metrics_of(accepted, labelled.grades),
        "not_graded": [{"path": r.path, "reason": r.reason} for r in results if not r.graded],
        "excluded": labelled.excluded,
    }


def run(data: str, out_dir: Optional[str] = None, *, server: Optional[str] = None,
        model_dir: Optional[str] = None, model_name: str = "koa", root: Optional[str] = None,
        batch_size: int = grading.DEFAULT_BATCH_SIZE, timeout: float = 60.0) -> int:
    """`koa evaluate`: grades a labelled set and writes metrics.json, confusion_matrix.csv,
    confusion_matrix.png and predictions.csv (one row per film, with its true grade) to
    ``out_dir`` (default ``DEFAULT_OUT_DIR``), each file atomically.

    Returns:
        0 when at least one film was graded, 1 when none was.

    Raises:
        FileNotFoundError, ValueError, IngestError: bad arguments or layout.
        koa.grade.GradeError: no model at the server address or model path.
    """
    out_dir = out_dir or DEFAULT_OUT_DIR
    labelled = load_labelled_set(data, root)
    if not labelled.grades:
        raise ValueError(f"{data} lists no image to evaluate")
    grading.check_writable(os.path.join(out_dir, METRICS_FILE))
    backend = grading.open_backend(server, model_dir, model_name, timeout)
    try:
        logger.info("evaluating %d films with %s", len(labelled.grades), backend.description)
        results = grading.grade_with_progress(list(labelled.grades), backend, batch_size)
    finally:
        backend.close()
    report = evaluate(labelled, results)
    matrix = report["all"]["confusion_matrix"]
    grading.write_results_csv(
        os.path.join(out_dir, PREDICTIONS_FILE), results, extra_columns=[TRUE_GRADE_COLUMN],
        extra={path: {TRUE_GRADE_COLUMN: g} for path, g in labelled.grades.items()})
    grading.write_atomic(os.path.join(out_dir, CONFUSION_CSV), confusion_csv(matrix))
    grading.write_atomic(os.path.join(out_dir, CONFUSION_PNG), confusion_png(
        matrix, f"{Path(data).name}: {report['all']['examples']} films, "
                f"{', '.join(report['models']) or 'no model answer'}"))
    atomic_dir.write_json(os.path.join(out_dir, METRICS_FILE), report)
    for entry in report["not_graded"]:
        logger.warning("not graded: %s: %s", entry["path"], entry["reason"])
    print("\n".join(summary_lines(report) + [f"wrote {METRICS_FILE}, {CONFUSION_CSV}, "
                                             f"{CONFUSION_PNG}, {PREDICTIONS_FILE} to {out_dir}"]))
    return 0 if report["all"]["examples"] else 1
