"""`koa grade`: many radiograph files -> one CSV of KL grades, through the model server's
gRPC API or a SavedModel loaded in this process.

Every file goes through the product's one decode path (`model_input`) before the model
sees it, so a file the web app refuses is refused here with the same reason. A file that
cannot be read, decoded or graded becomes a row that says why; it never stops the batch.
The server path imports no TensorFlow; the SavedModel path loads it.
"""

import csv
import dataclasses
import io
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence

from components import features, image_files, ingest_sources

logger = logging.getLogger(__name__)

DEFAULT_SERVER = "localhost:8500"
DEFAULT_BATCH_SIZE = 16
# Files picked from a folder; a file named on the command line is always tried.
FOLDER_SUFFIXES = frozenset(ingest_sources.IMAGE_SUFFIXES) | {".dcm", ".dicom"}

STATUS_GRADED = "graded"
STATUS_NOT_GRADED = "not graded"
PROBABILITY_COLUMNS = tuple(f"probability_grade_{g}" for g in range(features.NUM_GRADES))
CSV_COLUMNS = ("file", "status", "not_graded_reason", "grade", "grade_name",
               *PROBABILITY_COLUMNS, "expected_grade", "out_of_distribution", "ood_score",
               "ood_reason", "model_name", "model_version")


class GradeError(Exception):
    """Grading cannot start (no model at the address or path); the message says why."""


class InputRejected(Exception):
    """The model refused at least one image of a batch (the message is its reason)."""


class BackendError(Exception):
    """The model could not be called (server gone, model unloaded); no file was graded."""


@dataclasses.dataclass(frozen=True)
class Prediction:
    """The model's answer for one film.

    Attributes:
        grade: KL grade 0..4 the model outputs.
        probabilities: probability of each grade, index == grade (sums to 1).
        expected_grade: sum of grade * probability.
        out_of_distribution: the model flags the film; its grade must not be used.
            False when the model has no such check.
        ood_score: the model's out-of-distribution score (> 1 is flagged), or None.
        ood_reason: why the model flagged the film, when the model says ("" otherwise).
        model_name: the model's name.
        model_version: its version number, or None when unknown.
    """

    grade: int
    probabilities: tuple
    expected_grade: float
    out_of_distribution: bool
    ood_score: Optional[float]
    ood_reason: str
    model_name: str
    model_version: Optional[int]


@dataclasses.dataclass(frozen=True)
class FileResult:
    """One input file: its prediction, or the reason it has none."""

    path: str
    prediction: Optional[Prediction] = None
    reason: str = ""

    @property
    def graded(self) -> bool:
        return self.prediction is not None


def model_input(data: bytes) -> bytes:
    """The bytes the model takes for one file, by the product's one decode path
    (components/image_files.py, as `koa ingest` and the web app; larger than
    ``image_files.DEFAULT_MAX_PIXELS`` is refused).

    Args:
        data: the file's bytes (PNG, JPEG or DICOM).

    Returns:
        Encoded PNG bytes for the serving signature's ``image_bytes``.

    Raises:
        components.image_files.UnreadableImageError (a ValueError): the file cannot be
            graded; the message is the reason.
    """
    return image_files.read_radiograph(data).png


def collect_files(paths: Sequence[str]) -> List[str]:
    """Expands files and folders into the files to grade, in a stable order.

    Folders are walked recursively (hidden entries skipped) for files with an image or
    DICOM suffix; a file named directly is always kept. Repeats are kept once.

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: no file to grade was found.
    """
    found, seen = [], set()
    for given in paths:
        path = Path(given)
        if path.is_dir():
            candidates = sorted(
                p for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in FOLDER_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(path).parts))
        elif path.exists():
            candidates = [path]
        else:
            raise FileNotFoundError(f"{given} does not exist")
        for candidate in candidates:
            key = os.path.realpath(candidate)
            if key not in seen:
                seen.add(key)
                found.append(str(candidate))
    if not found:
        raise ValueError(f"no image files ({', '.join(sorted(FOLDER_SUFFIXES))}) in "
                         f"{', '.join(paths)}")
    return found


class ServerBackend:
    """Grades through a TensorFlow-Serving-compatible server (gRPC Predict, batched).

    Args:
        target: ``host:port`` of the gRPC endpoint.
        model_name: the served model's name.
        timeout: deadline of one Predict call, seconds.

    Raises:
        GradeError: the server does not answer or does not serve the model.
    """

    def __init__(self, target: str, model_name: str = "koa", timeout: float = 60.0):
        from serving import client as serving_client
        self._errors = serving_client
        self._client = serving_client.ServingClient(target, model_name, timeout=timeout)
        try:
            states = self._client.model_status()
        except serving_client.ServingError as e:
            self._client.close()
            raise GradeError(f"cannot grade through {target}: {e}") from e
        if not any(s.state == "AVAILABLE" for s in states):
            self._client.close()
            raise GradeError(f"model '{model_name}' at {target} has no available version "
                             f"({', '.join(f'v{s.version} {s.state}' for s in states)})")
        self.description = f"model '{model_name}' on the server at {target}"

    def predict_many(self, images: List[bytes]) -> List[Prediction]:
        """Grades encoded PNGs in one call.

        Raises:
            InputRejected: the server refused the input (INVALID_ARGUMENT).
            BackendError: any other failure (server down, model gone, bad answer).
        """
        try:
            served = self._client.predict_many(images)
        except self._errors.InvalidInputError as e:
            raise InputRejected(f"the model refused the image: {e}") from e
        except self._errors.ServingError as e:
            raise BackendError(str(e)) from e
        return [Prediction(
            grade=p.grade, probabilities=p.probabilities, expected_grade=p.expected_grade,
            out_of_distribution=p.out_of_distribution, ood_score=p.ood_score,
            ood_reason=p.ood_reason,
            model_name=p.model_name, model_version=p.model_version) for p in served]

    def close(self) -> None:
        self._client.close()


def resolve_saved_model(model_dir: str) -> tuple:
    """The SavedModel to load, its model name and version.

    Args:
        model_dir: a SavedModel folder (``.../koa/3``) or a model base path holding
            numeric version folders (``serving_model/koa``; the highest is used, as the
            server does).

    Returns:
        (version folder, model name, version number or None).

    Raises:
        GradeError: there is no SavedModel there.
    """
    path = Path(model_dir)
    if (path / "saved_model.pb").is_file():
        if path.name.isdigit():
            return str(path), path.resolve().parent.name, int(path.name)
        return str(path), path.resolve().name, None
    versions = sorted((int(p.name) for p in path.glob("*")
                       if p.name.isdigit() and (p / "saved_model.pb").is_file()),
                      reverse=True) if path.is_dir() else []
    if not versions:
        raise GradeError(f"{model_dir} is neither a SavedModel nor a model base path with "
                         "numeric version folders")
    return str(path / str(versions[0])), path.resolve().name, versions[0]


class SavedModelBackend:
    """Grades with the ``serving_default`` signature of a SavedModel, in this process.

    Args:
        model_dir: see :func:`resolve_saved_model`.

    Raises:
        GradeError: no SavedModel there, or it has no serving signature.
    """

    def __init__(self, model_dir: str):
        version_dir, self._name, self._version = resolve_saved_model(model_dir)
        features.select_keras_2()
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        self._tf = tf
        loaded = tf.saved_model.load(version_dir)
        if features.SERVING_SIGNATURE not in loaded.signatures:
            raise GradeError(f"{version_dir} has no '{features.SERVING_SIGNATURE}' signature")
        self._loaded = loaded  # keeps the signature's variables alive
        self._signature = loaded.signatures[features.SERVING_SIGNATURE]
        self.description = f"SavedModel {version_dir}"

    def predict_many(self, images: List[bytes]) -> List[Prediction]:
        """Grades encoded PNGs in one call.

        Raises:
            InputRejected: the graph failed on the batch (e.g. an image it cannot decode).
        """
        tf = self._tf
        try:
            outputs = self._signature(**{
                features.SERVING_INPUT: tf.constant(images, dtype=tf.string)})
        except tf.errors.OpError as e:
            raise InputRejected(f"the model refused the image: {e.message}") from e
        return predictions_from_outputs({k: v.numpy() for k, v in outputs.items()},
                                        len(images), self._name, self._version)

    def close(self) -> None:
        self._signature = self._loaded = None


def predictions_from_outputs(outputs: dict, count: int, model_name: str,
                             model_version: Optional[int]) -> List[Prediction]:
    """Rows of a serving signature's outputs (numpy arrays with a leading batch axis).

    Outputs beyond probabilities, grade and expected grade are optional: models exported
    before the out-of-distribution check lack them.

    Raises:
        GradeError: a required output is missing or has the wrong shape.
    """
    needed = (features.PROBABILITIES_OUTPUT, features.GRADE_OUTPUT,
              features.EXPECTED_GRADE_OUTPUT)
    missing = [key for key in needed if key not in outputs]
    if missing:
        raise GradeError(f"the model returned no {missing}; got {sorted(outputs)}")
    probabilities = outputs[features.PROBABILITIES_OUTPUT]
    if probabilities.shape != (count, features.NUM_GRADES):
        raise GradeError(f"the model returned probabilities of shape {probabilities.shape}, "
                         f"expected {(count, features.NUM_GRADES)}")
    # The server path's decoding of string outputs, so both paths write the same text.
    from serving.client import _text  # pylint: disable=import-outside-toplevel
    flags = outputs.get(features.OOD_FLAG_OUTPUT)
    scores = outputs.get(features.OOD_SCORE_OUTPUT)
    reasons = outputs.get(features.OOD_REASON_OUTPUT)
    return [Prediction(
        grade=int(outputs[features.GRADE_OUTPUT][row]),
        probabilities=tuple(float(p) for p in probabilities[row]),
        expected_grade=float(outputs[features.EXPECTED_GRADE_OUTPUT][row]),
        out_of_distribution=bool(flags[row]) if flags is not None else False,
        ood_score=float(scores[row]) if scores is not None else None,
        ood_reason=_text(reasons[row]) if reasons is not None else "",
        model_name=model_name, model_version=model_version) for row in range(count)]


def open_backend(server: Optional[str], model_dir: Optional[str], model_name: str = "koa",
                 timeout: float = 60.0):
    """The server backend, or the SavedModel one when ``model_dir`` is given."""
    if model_dir:
        return SavedModelBackend(model_dir)
    return ServerBackend(server or DEFAULT_SERVER, model_name, timeout)


def read_for_model(path: str) -> bytes:
    """The model input of one file; raises ValueError whose message is the reason."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"cannot read the file: {e.strerror or e}") from e
    return model_input(data)


def grade_files(paths: Sequence[str], backend, *, batch_size: int = DEFAULT_BATCH_SIZE,
                on_progress: Optional[Callable[[int], None]] = None,
                read: Callable[[str], bytes] = read_for_model) -> List[FileResult]:
    """Grades files in batches; a file that fails gets its reason instead of a grade.

    A batch the model refuses as a whole is retried one file at a time, so one bad file
    costs only its own row. When the backend fails in another way (the server went
    away), that batch and the files after it are listed as not graded with the error.

    Args:
        paths: files to grade.
        backend: :class:`ServerBackend` or :class:`SavedModelBackend`.
        batch_size: files per model call (>= 1).
        on_progress: called with the number of files finished after each batch.
        read: path -> the bytes sent to the model; raises ValueError with the reason
            (default: the file through the product's decode path).

    Returns:
        One result per path, in order.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    results: List[Optional[FileResult]] = [None] * len(paths)
    failure = ""
    for start in range(0, len(paths), batch_size):
        batch = range(start, min(start + batch_size, len(paths)))
        ready = {}
        for index in batch:
            try:
                ready[index] = read(paths[index])
            except ValueError as e:
                results[index] = FileResult(paths[index], reason=str(e))
        if ready and not failure:
            try:
                _grade_ready(paths, ready, backend, results)
            except BackendError as e:  # no later call can succeed either
                failure = f"grading stopped: {e}"
                logger.error("%s", failure)
        for index in ready:
            if results[index] is None:
                results[index] = FileResult(paths[index], reason=failure)
        if on_progress is not None:
            on_progress(len(batch))
    return results


def _grade_ready(paths, ready: dict, backend, results: list) -> None:
    indices = list(ready)
    try:
        predictions = backend.predict_many([ready[i] for i in indices])
    except InputRejected as e:
        if len(indices) == 1:
            results[indices[0]] = FileResult(paths[indices[0]], reason=str(e))
        else:  # find which files the model refuses
            for index in indices:
                _grade_ready(paths, {index: ready[index]}, backend, results)
        return
    for index, prediction in zip(indices, predictions):
        results[index] = FileResult(paths[index], prediction)


def result_row(result: FileResult) -> dict:
    """The CSV row of one file (``CSV_COLUMNS``); empty cells where there is no value."""
    row = dict.fromkeys(CSV_COLUMNS, "")
    row["file"] = result.path
    if not result.graded:
        row.update(status=STATUS_NOT_GRADED, not_graded_reason=result.reason)
        return row
    p = result.prediction
    row.update(status=STATUS_GRADED, grade=p.grade, grade_name=features.GRADE_NAMES[p.grade],
               expected_grade=f"{p.expected_grade:.4f}",
               out_of_distribution="yes" if p.out_of_distribution else "no",
               ood_score="" if p.ood_score is None else f"{p.ood_score:.4f}",
               ood_reason=p.ood_reason, model_name=p.model_name,
               model_version="" if p.model_version is None else p.model_version)
    row.update({column: f"{value:.6f}"
                for column, value in zip(PROBABILITY_COLUMNS, p.probabilities)})
    return row


def write_atomic(path: str, data) -> None:
    """Writes ``data`` (str or bytes) to ``path`` through a temporary file in the same
    folder and one rename, so a crash never leaves half a file; creates the folder."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                   dir=folder)
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def check_writable(path: str) -> None:
    """Fails before any grading when ``path`` could not be written afterwards.

    Raises:
        ValueError: ``path`` is a folder, or its folder cannot be created or written.
    """
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"{path} is a folder; give a file name to write")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create the folder of {path}: {e.strerror or e}") from e
    if not os.access(folder, os.W_OK):
        raise ValueError(f"cannot write in {folder}")


def write_results_csv(path: str, results: Iterable[FileResult], extra: Optional[dict] = None,
                      extra_columns: Sequence[str] = ()) -> None:
    """Writes one row per file, atomically.

    Args:
        path: the CSV to write.
        results: the files' results.
        extra: per file path, values of ``extra_columns`` (e.g. the true grade).
        extra_columns: columns written after ``file``.
    """
    buffer = io.StringIO()
    columns = ["file", *extra_columns, *CSV_COLUMNS[1:]]
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for result in results:
        writer.writerow({**result_row(result), **((extra or {}).get(result.path) or {})})
    write_atomic(path, buffer.getvalue())


class _LineProgress:
    """A one-line "graded i/n" on a terminal's stderr, for when tqdm is missing."""

    def __init__(self, total: int):
        self.total, self.done = total, 0
        self._shown = sys.stderr.isatty()

    def update(self, count: int) -> None:
        self.done += count
        if self._shown:
            sys.stderr.write(f"\rgraded {self.done}/{self.total} files")
            sys.stderr.flush()

    def close(self) -> None:
        if self._shown:
            sys.stderr.write("\n")


def progress_bar(total: int):
    """A progress bar on stderr with ``update(n)`` and ``close()``: tqdm's when installed
    (hidden when stderr is not a terminal), else a plain counter line."""
    try:
        from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    except ImportError:
        return _LineProgress(total)
    return tqdm(total=total, unit="file", desc="grading", file=sys.stderr, disable=None)


def grade_with_progress(paths: Sequence[str], backend,
                        batch_size: int = DEFAULT_BATCH_SIZE) -> List[FileResult]:
    """:func:`grade_files` with a progress bar."""
    bar = progress_bar(len(paths))
    try:
        return grade_files(paths, backend, batch_size=batch_size, on_progress=bar.update)
    finally:
        bar.close()


def summary_line(results: Sequence[FileResult]) -> str:
    """"graded 9 of 10 files (1 not graded; 2 flagged out of distribution)"."""
    graded = [r for r in results if r.graded]
    flagged = sum(r.prediction.out_of_distribution for r in graded)
    return (f"graded {len(graded)} of {len(results)} files ({len(results) - len(graded)} not "
            f"graded; {flagged} flagged out of distribution)")


def run(inputs: Sequence[str], out: str, *, server: Optional[str] = None,
        model_dir: Optional[str] = None, model_name: str = "koa",
        batch_size: int = DEFAULT_BATCH_SIZE, timeout: float = 60.0) -> int:
    """`koa grade`: grades files and folders into the CSV ``out``.

    Returns:
        0 when at least one file was graded, 1 when none was (the CSV lists why).

    Raises:
        FileNotFoundError, ValueError: bad arguments (missing path, no image files).
        GradeError: no model at the server address or model path.
    """
    paths = collect_files(inputs)
    check_writable(out)
    backend = open_backend(server, model_dir, model_name, timeout)
    try:
        logger.info("grading %d files with %s", len(paths), backend.description)
        results = grade_with_progress(paths, backend, batch_size)
    finally:
        backend.close()
    write_results_csv(out, results)
    for result in results:
        if not result.graded:
            logger.warning("not graded: %s: %s", result.path, result.reason)
    print(f"{summary_line(results)} -> {out}")
    return 0 if any(r.graded for r in results) else 1
