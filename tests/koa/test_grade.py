"""`koa grade`: files and folders -> one CSV row per file, through the model server or a
SavedModel, with unreadable files listed and the batch never stopped."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from components import features
from koa import grade
from koa.processes import free_port

REPO = Path(__file__).resolve().parents[2]

# Runs `koa grade` as a user does and says whether TensorFlow was imported on the way.
_CLI = """
import json, sys
from koa import cli
code = cli.main(sys.argv[1:])
print(json.dumps({"code": code, "tensorflow": "tensorflow" in sys.modules}))
"""


def _koa_grade(*args, cwd):
    result = subprocess.run([sys.executable, "-c", _CLI, "grade", *map(str, args)], cwd=cwd,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    lines = result.stdout.strip().splitlines()
    outcome = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {
        "code": result.returncode, "tensorflow": None}
    return outcome, result


def _rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture()
def batch(synthetic_films, tmp_path):
    """Synthetic films plus three broken files in one folder tree; returns the folder."""
    folder = tmp_path / "films"
    for film in sorted(synthetic_films.rglob("*.png")):
        target = folder / film.parent.name / film.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(film.read_bytes())
    (folder / "0" / "notes.png").write_text("not an image")
    (folder / "1" / "empty.jpg").write_bytes(b"")
    whole = next(folder.rglob("syn*.png")).read_bytes()
    (folder / "2" / "cut.png").write_bytes(whole[: len(whole) // 3])
    (folder / "README.txt").write_text("not picked from a folder")
    return folder


_BROKEN = {"notes.png": "unsupported file type", "empty.jpg": "empty",
           "cut.png": "truncated or corrupt"}


def _direct_outputs(version_dir, pngs):
    """The SavedModel's serving signature called directly, without the CLI."""
    import tensorflow as tf

    model = tf.saved_model.load(str(version_dir))
    outputs = model.signatures[features.SERVING_SIGNATURE](
        image_bytes=tf.constant(pngs, dtype=tf.string))
    return {key: value.numpy() for key, value in outputs.items()}


def test_server_path_grades_every_film_as_the_savedmodel_and_lists_broken_files(
        batch, grade_server, tiny_model_base, tmp_path):
    out = tmp_path / "out" / "results.csv"
    outcome, result = _koa_grade(batch.name, "--out", out, "--server", grade_server,
                                 "--batch-size", 4, cwd=tmp_path)
    assert outcome["code"] == 0, result.stderr[-3000:]
    # The server path talks gRPC only: no TensorFlow in the grading process.
    assert outcome["tensorflow"] is False
    rows = _rows(out)
    films = sorted(str(p.relative_to(tmp_path)) for p in batch.rglob("*.png")
                   if p.name.startswith("syn"))
    assert sorted(r["file"] for r in rows) == sorted(
        films + [str(p.relative_to(tmp_path)) for p in batch.rglob("*")
                 if p.name in _BROKEN])
    assert [r["file"] for r in rows] == sorted(r["file"] for r in rows)

    broken = {Path(r["file"]).name: r for r in rows if r["status"] == grade.STATUS_NOT_GRADED}
    assert set(broken) == set(_BROKEN)
    for name, reason in _BROKEN.items():
        assert reason in broken[name]["not_graded_reason"]
        assert broken[name]["grade"] == ""

    graded = [r for r in rows if r["status"] == grade.STATUS_GRADED]
    expected = _direct_outputs(tiny_model_base / "1", [
        grade.model_input((tmp_path / r["file"]).read_bytes()) for r in graded])
    assert [int(r["grade"]) for r in graded] == expected[features.GRADE_OUTPUT].tolist()
    np.testing.assert_allclose(
        [[float(r[c]) for c in grade.PROBABILITY_COLUMNS] for r in graded],
        expected[features.PROBABILITIES_OUTPUT], atol=1e-5)
    np.testing.assert_allclose([float(r["expected_grade"]) for r in graded],
                               expected[features.EXPECTED_GRADE_OUTPUT], atol=1e-4)
    for row in graded:
        assert row["grade_name"] == features.GRADE_NAMES[int(row["grade"])]
        assert (row["model_name"], row["model_version"]) == ("koa", "1")
        assert row["out_of_distribution"] == "no"  # gray films; the tiny model flags colour
    assert f"graded {len(graded)} of {len(rows)} files" in result.stdout
    assert [p.name for p in out.parent.iterdir()] == ["results.csv"]  # no temporary left


def test_savedmodel_path_writes_the_same_rows_as_the_server(batch, grade_server,
                                                            tiny_model_base, tmp_path):
    by_server, by_model = tmp_path / "server.csv", tmp_path / "model.csv"
    assert grade.run([str(batch)], str(by_server), server=grade_server) == 0
    assert grade.run([str(batch)], str(by_model), model_dir=str(tiny_model_base)) == 0
    server_rows, model_rows = _rows(by_server), _rows(by_model)
    numeric = set(grade.PROBABILITY_COLUMNS) | {"expected_grade", "ood_score"}
    assert len(server_rows) == len(model_rows) == 9
    for a, b in zip(server_rows, model_rows):
        assert {k: v for k, v in a.items() if k not in numeric} == {
            k: v for k, v in b.items() if k not in numeric}
        for column in numeric - {"ood_score"}:
            if a[column]:
                assert float(a[column]) == pytest.approx(float(b[column]), abs=1e-5)


def test_files_the_model_refuses_cost_only_their_own_rows(batch, grade_server,
                                                         tiny_model_base):
    # Raw bytes straight to the model (no decode check first): the model itself refuses
    # the broken ones inside a batch, and the batch is retried file by file.
    paths = sorted(str(p) for p in batch.rglob("*.png"))

    def raw(path):
        return Path(path).read_bytes()

    for backend in (grade.ServerBackend(grade_server),
                    grade.SavedModelBackend(str(tiny_model_base / "1"))):
        try:
            results = grade.grade_files(paths, backend, batch_size=len(paths), read=raw)
        finally:
            backend.close()
        refused = {Path(r.path).name for r in results if not r.graded}
        assert refused == {"notes.png", "cut.png"}
        assert all("the model refused the image" in r.reason
                   for r in results if not r.graded)
        assert sum(r.graded for r in results) == len(paths) - 2


def test_nothing_gradable_exits_1_with_every_reason_in_the_csv(tmp_path, grade_server):
    (tmp_path / "a.png").write_text("text")
    (tmp_path / "b.dcm").write_bytes(b"\0" * 200)
    out = tmp_path / "results.csv"
    outcome, result = _koa_grade(tmp_path / "a.png", tmp_path / "b.dcm", "--out", out,
                                 "--server", grade_server, cwd=tmp_path)
    assert outcome["code"] == 1, result.stderr[-3000:]
    rows = _rows(out)
    assert [r["status"] for r in rows] == [grade.STATUS_NOT_GRADED] * 2
    assert all(r["not_graded_reason"] for r in rows)


@pytest.mark.parametrize("arguments, message", [
    (["missing.png"], "missing.png does not exist"),
    (["empty_dir"], "no image files"),
    (["film.png", "--model", "no_model_here"], "neither a SavedModel"),
    (["film.png", "--server", "UNUSED_PORT"], "cannot grade through"),
])
def test_bad_arguments_exit_2_and_leave_the_old_csv_alone(arguments, message, tmp_path,
                                                           synthetic_films):
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "no_model_here").mkdir()
    (tmp_path / "film.png").write_bytes(next(synthetic_films.rglob("*.png")).read_bytes())
    out = tmp_path / "results.csv"
    out.write_text("earlier results\n")
    arguments = [a.replace("UNUSED_PORT", f"127.0.0.1:{free_port()}") for a in arguments]
    outcome, result = _koa_grade(*arguments, "--out", out, cwd=tmp_path)
    assert outcome["code"] == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert out.read_text() == "earlier results\n"
    assert not list(tmp_path.glob(".results.csv.*"))


def test_folders_give_image_and_dicom_files_once_each(tmp_path):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    for name in ("a/x.PNG", "a/deep/y.dcm", "a/z.jpeg", "a/notes.txt", "a/.hidden.png"):
        (tmp_path / name).write_bytes(b"")
    found = grade.collect_files([str(tmp_path / "a"), str(tmp_path / "a" / "x.PNG"),
                                 str(tmp_path / "a" / "notes.txt")])
    assert [Path(p).relative_to(tmp_path).as_posix() for p in found] == [
        "a/deep/y.dcm", "a/x.PNG", "a/z.jpeg", "a/notes.txt"]


def test_outputs_without_the_optional_checks_give_empty_cells():
    outputs = {features.PROBABILITIES_OUTPUT: np.array([[0.1, 0.2, 0.3, 0.3, 0.1]]),
               features.GRADE_OUTPUT: np.array([2]),
               features.EXPECTED_GRADE_OUTPUT: np.array([2.1])}
    [prediction] = grade.predictions_from_outputs(outputs, 1, "old", 3)
    row = grade.result_row(grade.FileResult("f.png", prediction))
    assert (row["grade"], row["grade_name"], row["ood_score"], row["ood_reason"]) == (
        2, "Mild", "", "")
    assert row["out_of_distribution"] == "no"
    with pytest.raises(grade.GradeError, match="probabilities of shape"):
        grade.predictions_from_outputs(outputs, 2, "old", 3)


def test_the_models_reason_reaches_the_row():
    outputs = {features.PROBABILITIES_OUTPUT: np.array([[0.1, 0.2, 0.3, 0.3, 0.1]] * 2),
               features.GRADE_OUTPUT: np.array([2, 3]),
               features.EXPECTED_GRADE_OUTPUT: np.array([2.1, 2.1]),
               features.OOD_SCORE_OUTPUT: np.array([0.2, 3.0]),
               features.OOD_FLAG_OUTPUT: np.array([False, True]),
               features.OOD_REASON_OUTPUT: np.array([b"", b"inverted,rotated"], dtype=object)}
    rows = [grade.result_row(grade.FileResult("f.png", p))
            for p in grade.predictions_from_outputs(outputs, 2, "koa", 4)]
    assert [(r["out_of_distribution"], r["ood_reason"]) for r in rows] == [
        ("no", ""), ("yes", "inverted,rotated")]
    assert rows[1]["ood_score"] == "3.0000" and rows[1]["model_version"] == 4
