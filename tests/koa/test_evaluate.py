"""`koa evaluate`: a labelled set through the model -> the Evaluator's metrics, checked
against a confusion matrix planned in advance and against independent implementations."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn import metrics as sk

from components import features
from koa import evaluate, grade

REPO = Path(__file__).resolve().parents[2]

# (true grade, grade the tiny model gives): it grades a uniform film of brightness v as
# floor(5 v), so a film of brightness (g + 0.5) / 5 is graded g.
PLAN = [(0, 0), (0, 0), (0, 1), (1, 1), (1, 2), (1, 1), (2, 2), (2, 2), (2, 3),
        (3, 3), (3, 2), (4, 4), (4, 3), (4, 4)]


def _film(path: Path, graded_as: int, size: int = 48) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    value = int(round((graded_as + 0.5) / features.NUM_GRADES * 255))
    Image.new("L", (size, size), value).save(path)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """``<grade>/`` folders holding the PLAN's films and one broken file."""
    root = tmp_path_factory.mktemp("labelled") / "clinic"
    for index, (true, graded_as) in enumerate(PLAN):
        _film(root / str(true) / f"knee{index:02d}L.png", graded_as)
    (root / "1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return root


def _planned_matrix(pairs):
    matrix = np.zeros((features.NUM_GRADES, features.NUM_GRADES), dtype=int)
    for true, predicted in pairs:
        matrix[true, predicted] += 1
    return matrix


def _ece(probabilities, labels, bins=10):
    """Expected calibration error written out bin by bin, for comparison."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    total = 0.0
    for b in range(bins):
        upper = (b + 1) / bins
        inside = (confidence >= b / bins) & ((confidence < upper) if b < bins - 1
                                             else (confidence <= 1.0))
        if inside.any():
            total += inside.sum() * abs(correct[inside].mean() - confidence[inside].mean())
    return total / labels.size


def test_folder_set_through_the_server_gives_the_planned_matrix_and_its_metrics(
        labelled, grade_server, tmp_path):
    out = tmp_path / "evaluation"
    assert evaluate.run(str(labelled), str(out), server=grade_server, batch_size=5) == 0

    report = json.loads((out / evaluate.METRICS_FILE).read_text())
    planned = _planned_matrix(PLAN)
    assert report["all"]["confusion_matrix"] == planned.tolist()
    assert report["files"] == {"listed": len(PLAN) + 1, "graded": len(PLAN), "not_graded": 1,
                               "excluded": 0, "repeated_rows": 0, "out_of_distribution": 0}
    assert report["models"] == ["koa v1"]
    assert [Path(e["path"]).name for e in report["not_graded"]] == ["broken.png"]

    with open(out / evaluate.PREDICTIONS_FILE, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == grade.STATUS_GRADED]
    labels = np.array([int(r[evaluate.TRUE_GRADE_COLUMN]) for r in rows])
    predicted = np.array([int(r["grade"]) for r in rows])
    probabilities = np.array([[float(r[c]) for c in grade.PROBABILITY_COLUMNS] for r in rows])
    figures = report["all"]
    assert figures["examples"] == len(PLAN)
    assert figures["accuracy"] == pytest.approx(np.trace(planned) / planned.sum())
    assert figures["accuracy"] == pytest.approx(sk.accuracy_score(labels, predicted))
    assert figures["qwk"] == pytest.approx(
        sk.cohen_kappa_score(labels, predicted, weights="quadratic"))
    assert figures["mae"] == pytest.approx(sk.mean_absolute_error(labels, predicted))
    recalls = sk.recall_score(labels, predicted, average=None, labels=range(5))
    for g in range(features.NUM_GRADES):
        assert figures[f"recall_grade_{g}"] == pytest.approx(planned[g, g] / planned[g].sum())
        assert figures[f"recall_grade_{g}"] == pytest.approx(recalls[g])
    # Probabilities in the CSV carry 6 decimals.
    assert figures["ece"] == pytest.approx(_ece(probabilities, labels), abs=1e-5)

    with open(out / evaluate.CONFUSION_CSV, newline="") as f:
        table = list(csv.reader(f))
    assert table[0][1:] == [f"{g} {n}" for g, n in enumerate(features.GRADE_NAMES)]
    assert [[int(v) for v in row[1:]] for row in table[1:]] == planned.tolist()
    plot = Image.open(out / evaluate.CONFUSION_PNG)
    assert plot.format == "PNG" and min(plot.size) > 300
    assert sorted(p.name for p in out.iterdir()) == sorted([
        evaluate.METRICS_FILE, evaluate.CONFUSION_CSV, evaluate.CONFUSION_PNG,
        evaluate.PREDICTIONS_FILE])


def test_manifest_set_through_the_savedmodel_matches_the_server(
        labelled, grade_server, tiny_model_base, tmp_path):
    films = sorted(labelled.glob("*/knee*.png"))
    manifest = labelled / "manifest.csv"
    lines = ["path,grade"] + [f"{p.parent.name}/{p.name},{p.parent.name}" for p in films]
    lines.append(lines[1])  # the same film again, same grade: still one film
    lines.append(f"{films[-1].parent.name}/{films[-1].name},0")  # a second, other grade
    lines.append("3/not_there.png,3")
    manifest.write_text("\n".join(lines) + "\n")

    by_model, by_server = tmp_path / "model", tmp_path / "server"
    assert evaluate.run(str(manifest), str(by_model), model_dir=str(tiny_model_base)) == 0
    assert evaluate.run(str(manifest), str(by_server), server=grade_server) == 0
    report = json.loads((by_model / evaluate.METRICS_FILE).read_text())
    served = json.loads((by_server / evaluate.METRICS_FILE).read_text())

    assert report["files"]["repeated_rows"] == 1
    reasons = {Path(e["path"]).name: e["reason"] for e in report["excluded"]}
    assert set(reasons) == {films[-1].name, "not_there.png"}
    assert "grade" in reasons[films[-1].name]  # listed twice with different grades
    assert reasons["not_there.png"] == "listed in the manifest but missing"
    kept = [pair for pair, film in zip(PLAN, films) if film != films[-1]]
    assert report["all"]["confusion_matrix"] == _planned_matrix(kept).tolist()
    assert served["all"]["confusion_matrix"] == report["all"]["confusion_matrix"]
    for key, value in report["all"].items():
        if key != "confusion_matrix":
            assert served["all"][key] == pytest.approx(value, abs=1e-6), key


def test_films_the_model_flags_are_counted_and_left_out_of_the_in_distribution_figures(
        tiny_model_base, tmp_path):
    root = tmp_path / "set"
    _film(root / "2" / "gray.png", 2)
    colour = root / "2" / "colour.png"
    Image.new("RGB", (48, 48), (250, 10, 10)).save(colour)  # the tiny model flags colour
    out = tmp_path / "out"
    assert evaluate.run(str(root), str(out), model_dir=str(tiny_model_base)) == 0
    report = json.loads((out / evaluate.METRICS_FILE).read_text())
    assert report["files"]["out_of_distribution"] == 1
    assert report["all"]["examples"] == 2
    assert report["in_distribution"]["examples"] == 1
    assert report["in_distribution"]["confusion_matrix"][2][2] == 1


def _koa_evaluate(*args, cwd):
    return subprocess.run([sys.executable, "-m", "koa.cli", "evaluate", *map(str, args)],
                          cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_a_set_with_nothing_gradable_exits_1_and_still_writes_why(tmp_path, grade_server):
    (tmp_path / "set" / "3").mkdir(parents=True)
    (tmp_path / "set" / "3" / "a.png").write_text("text")
    out = tmp_path / "out"
    assert evaluate.run(str(tmp_path / "set"), str(out), server=grade_server) == 1
    report = json.loads((out / evaluate.METRICS_FILE).read_text())
    assert report["all"]["examples"] == 0 and report["all"]["accuracy"] is None
    assert "unsupported file type" in report["not_graded"][0]["reason"]


def test_a_layout_ingest_refuses_is_refused_with_its_message(tmp_path):
    (tmp_path / "set" / "7").mkdir(parents=True)
    result = _koa_evaluate("--data", "set", "--model", "nowhere", cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown grade folder '7'" in result.stderr
    assert "Traceback" not in result.stderr
