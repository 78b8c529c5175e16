"""Images the model flags as out-of-distribution are never presented with a grade.

The tiny test model flags strongly coloured images (``wi.colour_png``) and passes
gray ones, exactly through the ``ood_score`` / ``out_of_distribution`` outputs the
trained model returns.
"""

import csv
import io
import re

import pytest

import webapp_images as wi
from webapp_testlib import csrf_token, upload
from webapp import db
from webapp.models import Prediction
from webapp.serialize import CSV_COLUMNS, NOT_GRADED_MESSAGE

TOKEN_RE = re.compile(r'data-testid="new-token">([^<]+)<')
GRADE_ON_PAGE = 'data-testid="grade"'
NOT_GRADED_ON_PAGE = 'data-testid="not-graded"'
GRADE_KEYS = {"grade", "grade_name", "probabilities", "expected_grade", "confidence"}


def _stored(app, prediction_id) -> Prediction:
    with app.app_context():
        return db.get_session().get(Prediction, prediction_id)


def _upload_one(client, name, data) -> int:
    response = upload(client, [(name, data)])
    assert response.status_code == 303
    return int(response.headers["Location"].rsplit("/", 1)[-1])


def test_flagged_upload_shows_no_grade_anywhere(client, auth, app, direct_client):
    auth.login()
    image = wi.colour_png()
    expected = direct_client.predict(image, explain=True)
    assert expected.out_of_distribution and expected.ood_score > 1
    flagged_id = _upload_one(client, "holiday.png", image)
    gray_id = _upload_one(client, "knee.png", wi.png_of_grade(expected.grade))

    stored = _stored(app, flagged_id)
    assert stored.status == "done" and stored.out_of_distribution is True
    assert stored.ood_score == pytest.approx(expected.ood_score, rel=1e-5)

    for path in (f"/predictions/{flagged_id}", f"/predictions/{flagged_id}/report"):
        page = client.get(path)
        assert page.status_code == 200
        body = page.get_data(as_text=True)
        assert NOT_GRADED_ON_PAGE in body and NOT_GRADED_MESSAGE in body
        assert GRADE_ON_PAGE not in body
        assert 'data-testid="probabilities"' not in body
        # Grad-CAM would explain a grade that is not shown.
        assert "heatmap.png" not in body

    history = client.get("/history").get_data(as_text=True)
    rows = dict(re.findall(r'<tr data-id="(\d+)"[^>]*data-graded="(\w+)"', history))
    assert rows == {str(flagged_id): "no", str(gray_id): "yes"}
    # Same raw grade, but only the gray image matches a grade filter.
    filtered = client.get(f"/history?grade={expected.grade}").get_data(as_text=True)
    assert re.findall(r'<tr data-id="(\d+)"', filtered) == [str(gray_id)]

    rows = list(csv.reader(io.StringIO(client.get("/history.csv").get_data(as_text=True))))
    by_id = {r[0]: dict(zip(CSV_COLUMNS, r)) for r in rows[1:]}
    assert by_id[str(flagged_id)]["out_of_distribution"] == "True"
    assert float(by_id[str(flagged_id)]["ood_score"]) > 1
    assert by_id[str(flagged_id)]["grade"] == "" and by_id[str(flagged_id)]["p_normal"] == ""
    assert by_id[str(gray_id)]["out_of_distribution"] == "False"
    assert by_id[str(gray_id)]["grade"] == str(expected.grade)


def test_unflagged_upload_is_graded_as_before(client, auth, app):
    auth.login()
    prediction_id = _upload_one(client, "knee.png", wi.png_of_grade(3))

    stored = _stored(app, prediction_id)
    assert stored.out_of_distribution is False and stored.ood_score == pytest.approx(0.0, abs=1e-6)
    body = client.get(f"/predictions/{prediction_id}").get_data(as_text=True)
    assert 'data-testid="grade" data-grade="3"' in body
    assert NOT_GRADED_ON_PAGE not in body and NOT_GRADED_MESSAGE not in body


def test_batch_page_does_not_show_a_flagged_grade(client, auth):
    auth.login()
    response = upload(client, [("a.png", wi.png_of_grade(1)), ("b.png", wi.colour_png())])
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    assert body.count(NOT_GRADED_MESSAGE) == 1 and "grade 1 Doubtful" in body


def _token(client, auth):
    auth.login()
    page = client.post(
        "/account/tokens", data={"name": "ood", "csrf_token": csrf_token(client, "/account/tokens")}
    )
    assert page.status_code == 201
    auth.logout()
    return TOKEN_RE.search(page.get_data(as_text=True)).group(1)


def _api_post(client, headers, name, data):
    response = client.post(
        "/api/v1/predictions",
        data={"image": (io.BytesIO(data), name), "side": "R"},
        headers=headers,
        content_type="multipart/form-data",
    )
    assert response.status_code == 201
    return response.get_json()


def test_api_says_graded_false_and_withholds_the_grade(client, auth):
    headers = {"Authorization": f"Bearer {_token(client, auth)}"}

    flagged = _api_post(client, headers, "colour.png", wi.colour_png())
    plain = _api_post(client, headers, "knee.png", wi.png_of_grade(2))

    assert flagged["status"] == "done" and flagged["graded"] is False
    assert flagged["out_of_distribution"] is True and flagged["ood_score"] > 1
    # The message, then why (test_webapp_ood_reason checks the words).
    assert flagged["not_graded_reason"].startswith(NOT_GRADED_MESSAGE + ". ")
    assert not GRADE_KEYS & set(flagged)
    assert plain["graded"] is True and plain["out_of_distribution"] is False
    assert plain["ood_score"] == pytest.approx(0.0, abs=1e-6) and plain["grade"] == 2
    assert "not_graded_reason" not in plain

    fetched = client.get(f"/api/v1/predictions/{flagged['id']}", headers=headers).get_json()
    assert fetched["graded"] is False and not GRADE_KEYS & set(fetched)
    listing = client.get("/api/v1/predictions", headers=headers).get_json()
    assert [p["graded"] for p in listing["predictions"]] == [True, False]
