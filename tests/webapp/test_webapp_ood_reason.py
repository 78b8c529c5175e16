"""Why the model flagged an image: stored with the grading (migration 0005) and shown in
plain words on the result and report pages, History, the batch page, the CSV export and
the JSON API, while the grade stays withheld.

The tiny test model flags strongly coloured images with reason ``colour`` through the
same ``ood_reason`` output as the trained model. Runs on SQLite and PostgreSQL.
"""

import csv
import html
import io
import os
import re

import pytest
import sqlalchemy as sa

import webapp_images as wi
from webapp_testlib import ADMIN, CLINICIAN, REPO, AuthActions, csrf_token, upload
from components import features
from webapp import db, migrate, ood_reasons
from webapp.models import Prediction
from webapp.serialize import NOT_GRADED_MESSAGE

TOKEN_RE = re.compile(r'data-testid="new-token">([^<]+)<')
REASON_RE = re.compile(r'data-testid="ood-reason" data-code="([^"]*)">([^<]*)<')
GRADE_ON_PAGE = 'data-testid="grade"'
GRADE_KEYS = {"grade", "grade_name", "probabilities", "expected_grade", "confidence"}
COLOUR_TEXT = ood_reasons.describe(features.REASON_COLOUR)[0].text
REVISION_BEFORE = "0004_side_and_study_reference"


def _upload_one(client, name, data) -> int:
    response = upload(client, [(name, data)])
    assert response.status_code == 303, response.get_data(as_text=True)
    return int(response.headers["Location"].rsplit("/", 1)[-1])


def _stored(app, prediction_id) -> Prediction:
    with app.app_context():
        return db.get_session().get(Prediction, prediction_id)


def _reasons_on(client, path):
    page = client.get(path)
    assert page.status_code == 200
    body = page.get_data(as_text=True)
    return body, [(code, html.unescape(text)) for code, text in REASON_RE.findall(body)]


def _api_headers(client, auth, user=CLINICIAN):
    auth.login(user)
    page = client.post(
        "/account/tokens",
        data={"name": "reasons", "csrf_token": csrf_token(client, "/account/tokens")})
    assert page.status_code == 201
    auth.logout()
    return {"Authorization": f"Bearer {TOKEN_RE.search(page.get_data(as_text=True)).group(1)}"}


def test_every_code_of_the_model_has_its_own_words():
    described = ood_reasons.describe(",".join(features.OOD_REASONS))
    assert [r.code for r in described] == list(features.OOD_REASONS)
    assert all(r.known for r in described)
    assert len({r.text for r in described}) == len({r.label for r in described}) == len(described)
    # One sentence each: capitalised, a single full stop at the end.
    assert all(r.text[0].isupper() and r.text.endswith(".") and r.text.count(". ") == 0
               for r in described)


def test_the_docs_quote_the_words_the_app_shows():
    with open(os.path.join(REPO, "docs", "webapp.md"), encoding="utf-8") as f:
        table = dict(re.findall(r"^\| `(\w+)` \| (.+) \|$", f.read(), re.M))
    assert {code: table.get(code) for code in features.OOD_REASONS} == {
        r.code: r.text for r in ood_reasons.describe(",".join(features.OOD_REASONS))}


@pytest.mark.parametrize("stored, expected", [
    (None, []),
    ("", []),
    ("rotated,inverted", ["rotated", "inverted"]),
    (" inverted , ,inverted", ["inverted"]),
])
def test_stored_codes_are_read_in_order_without_blanks_or_repeats(stored, expected):
    assert ood_reasons.codes(stored) == expected
    assert [r.code for r in ood_reasons.describe(stored)] == expected


def test_a_code_from_a_newer_model_is_named_not_dropped():
    (reason,) = ood_reasons.describe("metal_implant")
    assert not reason.known and "metal_implant" in reason.text and "metal_implant" in reason.label
    assert ood_reasons.unknown_codes("inverted,metal_implant") == ["metal_implant"]


def test_a_flagged_upload_stores_and_shows_the_reason(client, auth, app, direct_client):
    auth.login()
    image = wi.colour_png()
    served = direct_client.predict(image)
    assert served.out_of_distribution and served.ood_reason == features.REASON_COLOUR
    flagged_id = _upload_one(client, "holiday.png", image)
    gray_id = _upload_one(client, "knee.png", wi.png_of_grade(1))

    assert _stored(app, flagged_id).ood_reason == features.REASON_COLOUR
    # Nothing failed: no reason is recorded.
    assert _stored(app, gray_id).ood_reason is None

    for path in (f"/predictions/{flagged_id}", f"/predictions/{flagged_id}/report"):
        body, reasons = _reasons_on(client, path)
        assert reasons == [(features.REASON_COLOUR, COLOUR_TEXT)]
        # Still withheld, exactly as for any flagged image.
        assert NOT_GRADED_MESSAGE in body and GRADE_ON_PAGE not in body
        assert 'data-testid="probabilities"' not in body
    body, reasons = _reasons_on(client, f"/predictions/{gray_id}")
    assert reasons == [] and GRADE_ON_PAGE in body

    history = client.get("/history").get_data(as_text=True)
    assert "Not graded: colour picture" in history
    rows = {r["id"]: r for r in csv.DictReader(io.StringIO(
        client.get("/history.csv").get_data(as_text=True)))}
    assert rows[str(flagged_id)]["ood_reason"] == features.REASON_COLOUR
    assert rows[str(flagged_id)]["grade"] == ""
    assert rows[str(gray_id)]["ood_reason"] == ""


def test_the_batch_page_names_the_reason(client, auth):
    auth.login()
    response = upload(client, [("a.png", wi.png_of_grade(2)), ("b.png", wi.colour_png())])
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    assert f"{NOT_GRADED_MESSAGE} (colour picture)" in body and "grade 2 Mild" in body


def test_the_api_gives_codes_and_sentences(client, auth):
    headers = _api_headers(client, auth)

    def post(name, data):
        response = client.post(
            "/api/v1/predictions", data={"image": (io.BytesIO(data), name), "side": "L"},
            headers=headers, content_type="multipart/form-data")
        assert response.status_code == 201
        return response.get_json()

    flagged = post("colour.png", wi.colour_png())
    plain = post("knee.png", wi.png_of_grade(3))
    assert flagged["graded"] is False and not GRADE_KEYS & set(flagged)
    assert flagged["ood_reasons"] == [{"code": features.REASON_COLOUR, "text": COLOUR_TEXT}]
    # The upload page shows this text for a flagged file.
    assert flagged["not_graded_reason"] == f"{NOT_GRADED_MESSAGE}. {COLOUR_TEXT}"
    assert plain["graded"] is True and plain["ood_reasons"] == []
    fetched = client.get(f"/api/v1/predictions/{flagged['id']}", headers=headers).get_json()
    assert fetched["ood_reasons"] == flagged["ood_reasons"]


def test_several_reasons_are_each_shown_in_the_model_order(client, auth, app):
    # The tiny model only knows colour; the trained one can fail several checks at once.
    auth.login()
    prediction_id = _upload_one(client, "film.png", wi.colour_png())
    with app.app_context():
        session = db.get_session()
        session.get(Prediction, prediction_id).ood_reason = "inverted,rotated,metal_implant"
        session.commit()
    expected = [(r.code, r.text) for r in ood_reasons.describe("inverted,rotated,metal_implant")]
    for path in (f"/predictions/{prediction_id}", f"/predictions/{prediction_id}/report"):
        body, reasons = _reasons_on(client, path)
        assert reasons == expected and GRADE_ON_PAGE not in body
    history = html.unescape(client.get("/history").get_data(as_text=True))
    assert ("Not graded: film looks inverted; rotated or upside down; failed check "
            "'metal_implant'") in history


def _insert_rows_of_revision_0004(engine):
    """A user with a flagged and a graded prediction, in the columns of revision 0004."""
    probabilities = "[0.1, 0.2, 0.4, 0.2, 0.1]"
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO users (username, password_hash, role, active, created_at) "
            "VALUES ('early', 'x', 'clinician', TRUE, '2026-01-02 03:04:05')"))
        for name, flagged in (("flagged.png", "TRUE"), ("graded.png", "FALSE")):
            conn.execute(sa.text(
                "INSERT INTO predictions (user_id, created_at, updated_at, status, attempts, "
                "original_filename, source_format, image_width, image_height, thumbnail_png, "
                "grade, grade_name, probabilities, expected_grade, confidence, model_name, "
                "model_version, out_of_distribution, ood_score, side, side_source) "
                "SELECT id, '2026-01-02 03:04:05', '2026-01-02 03:04:05', 'done', 1, "
                f":name, 'png', 224, 224, :png, 2, 'Mild', '{probabilities}', 2.0, 0.4, "
                f"'koa', 1, {flagged}, :score, 'R', 'user' FROM users"),
                {"name": name, "png": wi.png_of_grade(2), "score": 3.5 if flagged == "TRUE" else 0.1})
        conn.execute(sa.text(
            "INSERT INTO prediction_images (prediction_id, image_png) "
            "SELECT id, thumbnail_png FROM predictions"))


def _columns(engine):
    return {c["name"] for c in sa.inspect(engine).get_columns("predictions")}


def test_the_migration_keeps_old_rows_and_they_still_render(make_app, new_database_url):
    url = new_database_url()
    engine = db.make_engine(url)
    migrate.upgrade(engine, REVISION_BEFORE)
    _insert_rows_of_revision_0004(engine)
    assert "ood_reason" not in _columns(engine)

    app = make_app(DATABASE_URL=url)  # upgrades to the head revision
    assert migrate.current_revision(engine) == migrate.head_revision()
    assert "ood_reason" in _columns(engine)
    with app.app_context():
        rows = db.get_session().scalars(sa.select(Prediction).order_by(Prediction.id)).all()
        flagged_id, graded_id = [p.id for p in rows]
        assert [(p.original_filename, p.ood_reason) for p in rows] == [
            ("flagged.png", None), ("graded.png", None)]

    client = app.test_client()
    auth = AuthActions(client)
    headers = _api_headers(client, auth, ADMIN)
    auth.login(ADMIN)
    for path in (f"/predictions/{flagged_id}", f"/predictions/{flagged_id}/report"):
        body, reasons = _reasons_on(client, path)
        assert reasons == [] and NOT_GRADED_MESSAGE in body and GRADE_ON_PAGE not in body
    for path in (f"/predictions/{graded_id}", f"/predictions/{graded_id}/report"):
        body, reasons = _reasons_on(client, path)
        assert reasons == [] and 'data-testid="grade" data-grade="2"' in body
    history = client.get("/history").get_data(as_text=True)
    assert "Not graded: not like the knee radiographs the model was trained on" in history
    assert client.get("/history.csv").status_code == 200
    old = client.get(f"/api/v1/predictions/{flagged_id}", headers=headers).get_json()
    assert old["graded"] is False and old["ood_reasons"] == []
    assert old["not_graded_reason"] == NOT_GRADED_MESSAGE

    # And back: the column goes, the rows and their images stay.
    with app.app_context():
        session = db.get_session()
        session.get(Prediction, flagged_id).ood_reason = features.REASON_INVERTED
        session.commit()
    db.engine_of(app).dispose()
    migrate.downgrade(engine, REVISION_BEFORE)
    assert "ood_reason" not in _columns(engine)
    with engine.connect() as conn:
        kept = conn.execute(sa.text(
            "SELECT p.original_filename FROM predictions p "
            "JOIN prediction_images i ON i.prediction_id = p.id ORDER BY p.id")).scalars().all()
    assert kept == ["flagged.png", "graded.png"]
    engine.dispose()

