"""The heatmap overlay is named for the class activation map the model served: the model
card's ``heatmap.method``, recorded with each prediction (migration 0006), not a fixed
"Grad-CAM". Runs on SQLite and PostgreSQL."""

import html
import logging
import re

import pytest
import sqlalchemy as sa

import webapp_images as wi
from webapp_testlib import AuthActions, csrf_token, upload, write_model_card
from components import features
from webapp import db, migrate
from webapp.models import Prediction

CAPTION_RE = re.compile(r'data-testid="heatmap-method">([^<]*)<')
REVISION_BEFORE = "0005_ood_reason"


def _app_with_card(make_app, tmp_path, heatmap):
    """An app whose served version's card says ``heatmap`` (None: the card lacks it)."""
    write_model_card(str(tmp_path), 1, sections={"heatmap": heatmap})
    return make_app(KOA_MODEL_BASE_PATH=str(tmp_path))


def _grade(app):
    client = app.test_client()
    AuthActions(client).login()
    response = upload(client, [("k.png", wi.png_of_grade(2))], json_response=True)
    assert response.status_code == 201, response.get_data(as_text=True)
    return client, response.get_json()


def _stored(app, prediction_id) -> Prediction:
    with app.app_context():
        return db.get_session().get(Prediction, prediction_id)


@pytest.mark.parametrize("method", sorted(features.HEATMAP_METHOD_NAMES))
def test_result_and_report_name_the_method_the_card_gives(make_app, tmp_path, method):
    app = _app_with_card(make_app, tmp_path, {"method": method, "layer": "out_relu"})
    client, body = _grade(app)
    name = features.HEATMAP_METHOD_NAMES[method]
    assert body["heatmap_method"] == method
    assert _stored(app, body["id"]).heatmap_method == method

    result = client.get(body["result_url"]).get_data(as_text=True)
    assert CAPTION_RE.search(result).group(1) == (
        f"{name}: where the model looked for this grade; not a finding.")
    assert f"Show {name} overlay" in result and f'alt="{name} heatmap"' in result
    report = client.get(body["result_url"] + "/report").get_data(as_text=True)
    assert f"{name}: regions that drove the grade." in report
    # No other method's name is claimed anywhere on either page.
    for other in set(features.HEATMAP_METHOD_NAMES.values()) - {name}:
        assert other + ":" not in result + report and f"Show {other} " not in result


def test_a_card_that_does_not_say_gives_a_neutral_name(make_app, tmp_path):
    app = _app_with_card(make_app, tmp_path, None)
    client, body = _grade(app)
    assert body["heatmap_method"] is None
    result = client.get(body["result_url"]).get_data(as_text=True)
    assert CAPTION_RE.search(result).group(1).startswith("Heatmap: where the model looked")
    assert client.get(body["result_url"] + "/heatmap.png").status_code == 200


def test_a_method_without_a_display_name_is_recorded_as_given_and_logged(
        make_app, tmp_path, caplog):
    app = _app_with_card(make_app, tmp_path, {"method": "scorecam", "layer": "out_relu"})
    with caplog.at_level(logging.WARNING, logger="webapp.model_card"):
        client, body = _grade(app)
    assert body["heatmap_method"] == "scorecam"
    assert "no name for: 'scorecam'" in caplog.text
    result = client.get(body["result_url"]).get_data(as_text=True)
    assert CAPTION_RE.search(result).group(1).startswith("scorecam: where the model looked")


def test_a_method_too_long_to_record_makes_the_card_unreadable_not_the_grade(
        make_app, tmp_path):
    app = _app_with_card(make_app, tmp_path, {"method": "m" * 40, "layer": "out_relu"})
    client, body = _grade(app)
    # The grade stands; nothing from the malformed card is recorded.
    assert body["graded"] is True and body["heatmap_method"] is None
    assert body["model"]["pushed_at"] is None
    page = html.unescape(client.get("/model").get_data(as_text=True))
    assert "'heatmap.method' must be a string of at most 16 characters" in page


def test_without_a_heatmap_no_method_is_recorded(client, auth):
    auth.login()
    page = client.post("/account/tokens",
                       data={"name": "t", "csrf_token": csrf_token(client, "/account/tokens")})
    token = re.search(r'data-testid="new-token">([^<]+)<', page.get_data(as_text=True)).group(1)
    # The JSON API computes the heatmap only when asked (?explain=true).
    for explain, expected in ((False, None), (True, "layercam")):
        response = client.post(
            "/api/v1/predictions", headers={"Authorization": f"Bearer {token}"},
            data=wi.png_of_grade(1), content_type="image/png",
            query_string={"side": "L", **({"explain": "true"} if explain else {})})
        assert response.status_code == 201, response.get_data(as_text=True)
        assert response.get_json()["heatmap_method"] == expected


def test_the_model_card_page_names_the_served_map_and_its_layer(make_app, tmp_path):
    app = _app_with_card(make_app, tmp_path, {"method": "gradcam", "layer": "out_relu"})
    client = app.test_client()
    AuthActions(client).login()
    page = client.get("/model").get_data(as_text=True)
    assert re.search(r'data-decision="heatmap">Grad-CAM on layer <code>out_relu</code>', page)


def test_the_migration_keeps_rows_both_ways_and_old_rows_say_heatmap(
        make_app, new_database_url):
    url = new_database_url()
    app = make_app(DATABASE_URL=url)
    client, body = _grade(app)
    assert _stored(app, body["id"]).heatmap_method == "layercam"
    db.engine_of(app).dispose()

    engine = db.make_engine(url)
    migrate.downgrade(engine, REVISION_BEFORE)
    columns = {c["name"] for c in sa.inspect(engine).get_columns("predictions")}
    assert "heatmap_method" not in columns
    with engine.connect() as conn:
        assert conn.execute(sa.text(
            "SELECT count(*) FROM predictions p JOIN prediction_images i "
            "ON i.prediction_id = p.id WHERE i.heatmap_png IS NOT NULL")).scalar() == 1
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == migrate.head_revision()
    engine.dispose()

    client = app.test_client()
    AuthActions(client).login()
    result = client.get(body["result_url"]).get_data(as_text=True)
    assert CAPTION_RE.search(result).group(1).startswith("Heatmap: where the model looked")
