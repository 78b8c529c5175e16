"""The model card page (status from the real server, card from model_card.json) and its charts."""

import json
import math
import os
import re

import pytest

import webapp_images as wi
from components import features
from koa.processes import free_port
from webapp_testlib import CARD_FIXTURE, AuthActions, upload, write_model_card
from webapp import charts, model_card

CELL_RE = re.compile(r'data-row="(\d)" data-col="(\d)">(\d+)<')
METRIC_RE = re.compile(r'data-metric="(\w+)">([0-9.]+)<')
LINEAGE_RE = re.compile(r'data-lineage="(\w+)">([^<]+)<')


def _card():
    with open(CARD_FIXTURE, encoding="utf-8") as f:
        return json.load(f)


def test_model_card_of_the_served_version(client, auth):
    auth.login()
    response = client.get("/model")
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    card = _card()
    assert 'data-version="1" data-state="AVAILABLE"' in body
    metrics = dict(METRIC_RE.findall(body))
    assert float(metrics["accuracy"]) == pytest.approx(card["metrics"]["accuracy"], abs=1e-3)
    assert float(metrics["qwk"]) == pytest.approx(card["metrics"]["qwk"], abs=1e-3)
    assert float(metrics["mae"]) == pytest.approx(card["metrics"]["mae"], abs=1e-3)
    assert float(metrics["ece"]) == pytest.approx(card["metrics"]["ece"], abs=1e-3)
    # How the grade is computed: TTA and the grade offsets, from the card.
    assert 'data-decision="tta">film and its mirror image, averaged<' in body
    assert re.search(r'data-decision="offsets">0: \+0\.00, 1: \+0\.40, 2: -0\.10, 3: \+0\.20, '
                     r'4: -1\.40 .*reaches 0\.45<', body)
    cells = {(int(r), int(c)): int(v) for r, c, v in CELL_RE.findall(body)}
    matrix = card["metrics"]["confusion_matrix"]
    assert cells == {(r, c): matrix[r][c] for r in range(5) for c in range(5)}
    assert body.count('data-testid="curve"') == 2
    lineage = dict(LINEAGE_RE.findall(body))
    assert lineage["dvc_data_md5"] == card["lineage"]["dvc_data_md5"]
    assert lineage["git_commit"] == card["lineage"]["git_commit"]
    # The conftest stamps the run id per version: proves the served version's card was read.
    assert lineage["pipeline_run_id"] == "koa-test-run-v1"


def test_version_without_card_and_malformed_version(client, auth):
    auth.login()
    response = client.get("/model?version=42")
    assert response.status_code == 200
    assert 'data-testid="no-card"' in response.get_data(as_text=True)
    assert client.get("/model?version=abc").status_code == 400


def test_malformed_card_is_reported_not_crashed(make_app, tmp_path):
    cards = tmp_path / "cards"
    (cards / "1" / "assets.extra").mkdir(parents=True)
    (cards / "1" / "assets.extra" / "model_card.json").write_text("{not json")
    app = make_app(KOA_MODEL_BASE_PATH=str(cards))
    client = app.test_client()
    AuthActions(client).login()
    response = client.get("/model")
    assert response.status_code == 200
    assert "could not be read" in response.get_data(as_text=True)


def test_model_card_without_base_path(make_app):
    app = make_app(KOA_MODEL_BASE_PATH=None)
    client = app.test_client()
    AuthActions(client).login()
    body = client.get("/model").get_data(as_text=True)
    assert "KOA_MODEL_BASE_PATH is not configured" in body


def test_model_card_when_server_is_down(make_app):
    app = make_app(KOA_SERVING_TARGET=f"127.0.0.1:{free_port()}", KOA_SERVING_TIMEOUT=2.0)
    client = app.test_client()
    AuthActions(client).login()
    response = client.get("/model", headers={"Accept": "application/json"})
    assert response.status_code == 503
    assert "did not answer" in response.get_json()["error"]


def test_load_model_card_checks_schema(tmp_path):
    assert model_card.load_model_card(str(tmp_path), 3) is None
    assert model_card.load_model_card(None, 3) is None
    target = tmp_path / "3" / "assets.extra"
    target.mkdir(parents=True)
    path = target / "model_card.json"
    path.write_text(json.dumps({"metrics": {"confusion_matrix": [[1, 2], [3]]}}))
    with pytest.raises(model_card.ModelCardError, match="square"):
        model_card.load_model_card(str(tmp_path), 3)
    card = _card()
    path.write_text(json.dumps(card))
    # A rewritten file is re-read (the cache keys on mtime and size).
    os.utime(path, ns=(1, 1))
    assert model_card.load_model_card(str(tmp_path), 3)["metrics"]["accuracy"] == 0.6125
    assert model_card.data_version(card) == card["lineage"]["dvc_data_md5"]
    assert model_card.data_version({"lineage": {"data_hash": "abc"}}) == "abc"
    assert model_card.data_version(None) is None


def test_served_version_is_newest_available():
    from serving.client import ModelVersionStatus

    statuses = [
        ModelVersionStatus(1, "AVAILABLE", ""),
        ModelVersionStatus(3, "LOADING", ""),
        ModelVersionStatus(2, "AVAILABLE", ""),
    ]
    assert model_card.served_version(statuses) == 2
    assert model_card.served_version([ModelVersionStatus(4, "END", "x")]) is None


def test_confusion_cells_are_row_normalised():
    cells = charts.confusion_cells([[3, 1], [0, 0]])
    assert [(c.count, c.row_share) for c in cells[0]] == [(3, 0.75), (1, 0.25)]
    assert [c.row_share for c in cells[1]] == [0.0, 0.0]


def test_line_chart_geometry():
    chart = charts.line_chart({"loss": [1.0, 0.5, 0.25], "val_loss": [1.2, float("nan"), 0.4]})
    assert chart is not None and len(chart.curves) == 2
    loss = next(c for c in chart.curves if c.name == "loss")
    points = [tuple(map(float, p.split(","))) for p in loss.points.split()]
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    assert xs[0] == chart.left and xs[-1] == pytest.approx(chart.left + chart.plot_width)
    # Higher values are drawn higher (smaller y), all inside the plot.
    assert ys[0] < ys[1] < ys[2]
    assert all(chart.top <= y <= chart.top + chart.plot_height for y in ys)
    val = next(c for c in chart.curves if c.name == "val_loss")
    assert len(val.points.split()) == 2 and val.last_value == 0.4
    assert [t.label for t in chart.x_ticks] == ["1", "2", "3"]
    tick_values = [float(t.label) for t in chart.y_ticks]
    assert tick_values[0] <= 0.25 and tick_values[-1] >= 1.2
    assert charts.line_chart({}) is None
    assert charts.line_chart({"loss": [math.inf]}) is None


def test_a_model_trained_on_synthetic_phantoms_says_so_everywhere(make_app, tmp_path):
    write_model_card(str(tmp_path), 1, synthetic=True)
    app = make_app(KOA_MODEL_BASE_PATH=str(tmp_path))
    client = app.test_client()
    AuthActions(client).login()
    body = upload(client, [("k.png", wi.png_of_grade(2))], json_response=True).get_json()
    for page in (body["result_url"], body["result_url"] + "/report", "/model"):
        html = client.get(page).get_data(as_text=True)
        assert 'data-testid="synthetic-warning"' in html, page
        assert "synthetic knee phantoms" in html
    assert "held-out synthetic phantoms" in client.get("/model").get_data(as_text=True)


def test_a_model_trained_on_radiographs_carries_no_synthetic_warning(client, auth):
    auth.login()
    body = upload(client, [("k.png", wi.png_of_grade(2))], json_response=True).get_json()
    for page in (body["result_url"], body["result_url"] + "/report", "/model"):
        assert "synthetic-warning" not in client.get(page).get_data(as_text=True)


def test_confusion_matrix_columns_carry_whole_grade_names(client, auth):
    auth.login()
    html = client.get("/model").get_data(as_text=True)
    for grade, name in enumerate(features.GRADE_NAMES):
        label = re.search(rf'data-column-label="{grade}">(.*?)</text>', html).group(1)
        assert re.sub(r"<[^>]+>", " ", label).split() == [str(grade), name]
