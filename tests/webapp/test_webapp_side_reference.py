"""The knee's side, the study reference and prior films (issue 12, items 6-8)."""

import csv
import io
import re

import pydicom
import pytest
import sqlalchemy as sa

import webapp_images as wi
from webapp_testlib import ADMIN, OTHER_CLINICIAN, csrf_token, upload
from webapp import db, migrate
from webapp.models import Prediction
from webapp.serialize import CSV_COLUMNS

ROW_RE = re.compile(r'<tr data-id="(\d+)"')
PRIOR_RE = re.compile(r'<tr data-prior-id="(\d+)"')
SIDE_RE = re.compile(r'data-testid="side" data-side="([LR]?)"')


def dicom_with_laterality(image_laterality=None, laterality=None) -> bytes:
    """A 12-bit DICOM ramp carrying the given laterality attributes (None leaves one out)."""
    ds = pydicom.dcmread(io.BytesIO(wi.dicom_bytes(wi.ramp_12bit())))
    if image_laterality is not None:
        ds.ImageLaterality = image_laterality
    if laterality is not None:
        ds.Laterality = laterality
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _rows(app):
    with app.app_context():
        return db.get_session().scalars(sa.select(Prediction).order_by(Prediction.id)).all()


def _id(response) -> int:
    assert response.status_code == 303, response.get_data(as_text=True)
    return int(response.headers["Location"].rsplit("/", 1)[-1])


def _history_ids(client, query=""):
    return [int(i) for i in ROW_RE.findall(client.get(f"/history?{query}").get_data(as_text=True))]


def test_the_chosen_side_is_recorded_and_shown_everywhere(client, auth, app):
    auth.login()
    prediction_id = _id(upload(client, [("k.png", wi.png_of_grade(2))], side="L"))
    (row,) = _rows(app)
    assert (row.side, row.side_source, row.side_chosen) == ("L", "user", None)

    page = client.get(f"/predictions/{prediction_id}").get_data(as_text=True)
    assert SIDE_RE.findall(page) == ["L"] and "Left knee" in page and "chosen at upload" in page
    report = client.get(f"/predictions/{prediction_id}/report").get_data(as_text=True)
    assert SIDE_RE.findall(report) == ["L"] and "left knee" in report
    assert 'data-side="L">left<' in client.get("/history").get_data(as_text=True)
    rows = list(csv.DictReader(io.StringIO(client.get("/history.csv").get_data(as_text=True))))
    assert (rows[0]["side"], rows[0]["side_source"], rows[0]["side_chosen"]) == ("L", "user", "")
    body = upload(client, [("j.png", wi.png_of_grade(1))], side="right", json_response=True)
    assert body.status_code == 201 and body.get_json()["side"] == "R"


@pytest.mark.parametrize("side", [None, "", "X", "both"])
def test_a_file_without_laterality_needs_a_valid_side_and_nothing_is_stored(client, auth, app, side):
    auth.login()
    response = upload(client, [("k.png", wi.png_of_grade(2))], side=side, json_response=True)
    assert response.status_code == 400
    body = response.get_json()
    assert body["field"] == "side" and "side" in body["error"] and body["error"].startswith("k.png: ")
    assert _rows(app) == []


@pytest.mark.parametrize(
    "image_laterality, laterality, chosen, recorded",
    [
        ("L", None, None, "L"),
        (None, "R", None, "R"),
        # The image's own attribute is preferred to the series'.
        ("L", "R", None, "L"),
        # An empty image attribute falls through to the series'.
        ("", "R", None, "R"),
        # Unpaired or unknown values say nothing about a knee: the choice counts.
        ("U", None, "R", "R"),
    ],
)
def test_dicom_laterality_gives_the_side(
        client, auth, app, image_laterality, laterality, chosen, recorded):
    auth.login()
    data = dicom_with_laterality(image_laterality, laterality)
    _id(upload(client, [("k.dcm", data)], side=chosen))
    (row,) = _rows(app)
    assert row.side == recorded
    assert row.side_source == ("user" if image_laterality == "U" else "dicom")


def test_a_contradicting_dicom_wins_and_every_view_says_so(client, auth, app):
    auth.login()
    prediction_id = _id(upload(client, [("k.dcm", dicom_with_laterality("L"))], side="R"))
    (row,) = _rows(app)
    assert (row.side, row.side_source, row.side_chosen) == ("L", "dicom", "R")
    for path in (f"/predictions/{prediction_id}", f"/predictions/{prediction_id}/report"):
        page = client.get(path).get_data(as_text=True)
        assert 'data-testid="side-warning"' in page, path
        assert SIDE_RE.findall(page) == ["L"] and "from the DICOM file" in page
    rows = list(csv.DictReader(io.StringIO(client.get("/history.csv").get_data(as_text=True))))
    assert (rows[0]["side"], rows[0]["side_source"], rows[0]["side_chosen"]) == ("L", "dicom", "R")
    as_json = upload(client, [("k.dcm", dicom_with_laterality("L"))], side="R", json_response=True)
    assert (as_json.get_json()["side"], as_json.get_json()["side_chosen"]) == ("L", "R")
    # An agreeing choice is no contradiction.
    agreeing = _id(upload(client, [("k.dcm", dicom_with_laterality("R"))], side="R"))
    assert 'data-testid="side-warning"' not in client.get(f"/predictions/{agreeing}").get_data(as_text=True)


def test_a_film_of_both_knees_is_refused(client, auth, app):
    auth.login()
    response = upload(client, [("k.dcm", dicom_with_laterality("B"))], side="L", json_response=True)
    assert response.status_code == 400
    assert response.get_json()["field"] == "side" and "both knees" in response.get_json()["error"]
    assert _rows(app) == []


@pytest.mark.parametrize(
    "typed, stored",
    [("acc-2024/117", "ACC-2024/117"), ("  ab   12 ", "AB 12"), ("", None), ("x" * 64, "X" * 64)],
)
def test_study_reference_is_normalised_and_shown(client, auth, app, typed, stored):
    auth.login()
    prediction_id = _id(upload(client, [("k.png", wi.png_of_grade(1))], study_reference=typed))
    (row,) = _rows(app)
    assert row.study_reference == stored
    page = client.get(f"/predictions/{prediction_id}").get_data(as_text=True)
    assert ('data-testid="study-reference"' in page) == (stored is not None)
    if stored:
        assert stored in page
        assert stored in client.get(f"/predictions/{prediction_id}/report").get_data(as_text=True)


@pytest.mark.parametrize(
    "typed, problem",
    [("x" * 65, "65 characters"), ("<script>", "letters, digits"), ("=1+1", "letters, digits"),
     ("abc\u00e9", "letters, digits"), ("a\x00b", "letters, digits"), ("-12", "starting with")],
)
def test_a_malformed_study_reference_is_refused_with_the_rule(client, auth, app, typed, problem):
    auth.login()
    response = upload(client, [("k.png", wi.png_of_grade(1))], study_reference=typed, json_response=True)
    assert response.status_code == 400
    body = response.get_json()
    assert body["field"] == "study_reference" and problem in body["error"]
    assert _rows(app) == []
    # The HTML answer shows the rule, never the typed text unescaped.
    html = upload(client, [("k.png", wi.png_of_grade(1))], study_reference=typed)
    assert html.status_code == 400 and "<script>" not in html.get_data(as_text=True)


def test_api_takes_side_and_reference_and_filters_by_side(client, auth):
    auth.login()
    created = client.post(
        "/account/tokens", data={"name": "t", "csrf_token": csrf_token(client, "/account/tokens")})
    token = re.search(r'data-testid="new-token">([^<]+)<', created.get_data(as_text=True)).group(1)
    headers = {"Authorization": f"Bearer {token}"}
    multipart = client.post(
        "/api/v1/predictions", headers=headers, content_type="multipart/form-data",
        data={"image": (io.BytesIO(wi.png_of_grade(1)), "a.png"), "side": "L",
              "study_reference": "cohort-9"})
    assert multipart.status_code == 201
    assert (multipart.get_json()["side"], multipart.get_json()["study_reference"]) == ("L", "COHORT-9")
    raw = client.post("/api/v1/predictions?side=R&study_reference=cohort-9", data=wi.png_of_grade(2),
                      headers={**headers, "Content-Type": "image/png"})
    assert raw.status_code == 201 and raw.get_json()["side_source"] == "user"
    missing = client.post("/api/v1/predictions", data=wi.png_of_grade(2),
                          headers={**headers, "Content-Type": "image/png"})
    assert missing.status_code == 400 and missing.get_json()["field"] == "side"

    def listed(query):
        body = client.get(f"/api/v1/predictions?{query}", headers=headers).get_json()
        return [p["side"] for p in body["predictions"]]

    assert listed("side=L") == ["L"] and listed("side=r") == ["R"]
    assert listed("q=cohort-9") == ["R", "L"]
    bad = client.get("/api/v1/predictions?side=left", headers=headers)
    assert bad.status_code == 400 and "'side'" in bad.get_json()["error"]


def test_history_filters_by_side_and_finds_the_reference(client, auth):
    auth.login()
    left = _id(upload(client, [("a.png", wi.png_of_grade(1))], side="L", study_reference="KL-100"))
    right = _id(upload(client, [("b.png", wi.png_of_grade(1))], side="R", study_reference="KL-200"))
    assert _history_ids(client, "side=L") == [left]
    assert _history_ids(client, "side=R") == [right]
    assert _history_ids(client, "q=kl-2") == [right]
    assert _history_ids(client, "q=KL-") == [right, left]
    assert client.get("/history?side=both").status_code == 400
    assert client.get("/history.csv?side=both").status_code == 400
    # The side filter survives in the export link.
    assert "side=L" in client.get("/history?side=L").get_data(as_text=True)
    rows = list(csv.reader(io.StringIO(client.get("/history.csv?side=R").get_data(as_text=True))))
    assert rows[0] == CSV_COLUMNS and len(rows) == 2
    assert rows[1][CSV_COLUMNS.index("study_reference")] == "KL-200"


@pytest.fixture
def series(client, auth):
    """Films of reference KNEE-7: left grades 1, 2, 3 (oldest first), one right, one of
    another reference, and one left by another clinician; returns their ids by name."""
    auth.login()
    ids = {}
    for name, grade, side, ref in (("l1", 1, "L", "KNEE-7"), ("l2", 2, "L", "knee-7"),
                                   ("r1", 2, "R", "KNEE-7"), ("x1", 2, "L", "KNEE-8"),
                                   ("l3", 3, "L", "KNEE-7")):
        ids[name] = _id(upload(client, [(f"{name}.png", wi.png_of_grade(grade))],
                               side=side, study_reference=ref))
    ids["none"] = _id(upload(client, [("none.png", wi.png_of_grade(1))], side="L"))
    auth.logout()
    auth.login(OTHER_CLINICIAN)
    ids["other"] = _id(upload(client, [("o.png", wi.png_of_grade(4))], side="L",
                              study_reference="KNEE-7"))
    auth.logout()
    return ids


def _priors(client, path):
    page = client.get(path)
    assert page.status_code == 200
    return [int(i) for i in PRIOR_RE.findall(page.get_data(as_text=True))]


def test_prior_films_of_the_same_reference_and_side_newest_first(client, auth, series):
    auth.login()
    # The first row is the film itself, then its earlier films.
    assert _priors(client, f"/predictions/{series['l3']}") == [series["l3"], series["l2"], series["l1"]]
    assert _priors(client, f"/predictions/{series['l2']}") == [series["l2"], series["l1"]]
    assert _priors(client, f"/predictions/{series['l1']}") == []
    assert _priors(client, f"/predictions/{series['r1']}") == []
    page = client.get(f"/predictions/{series['l3']}").get_data(as_text=True)
    assert f"/predictions/{series['l1']}/thumbnail.png" in page
    # Grade and probabilities of each earlier film.
    assert re.search(rf'data-prior-id="{series["l1"]}".*?data-grade="1"', page, re.S)
    assert "No study reference was given" in client.get(f"/predictions/{series['none']}").get_data(as_text=True)
    assert _priors(client, f"/predictions/{series['l3']}/report") == [series["l3"], series["l2"], series["l1"]]


def test_prior_films_show_only_what_the_user_may_see(client, auth, series):
    auth.login(OTHER_CLINICIAN)
    assert _priors(client, f"/predictions/{series['other']}") == []
    # The reference is protected like the films: another clinician's search finds only theirs.
    assert _history_ids(client, "q=KNEE-7") == [series["other"]]
    assert client.get(f"/predictions/{series['l1']}").status_code == 403
    auth.logout()
    auth.login(ADMIN)
    assert _priors(client, f"/predictions/{series['other']}") == [
        series["other"], series["l3"], series["l2"], series["l1"]]


def test_the_migration_adds_and_removes_the_columns(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path}/m.sqlite")
    migrate.upgrade(engine)
    columns = {c["name"] for c in sa.inspect(engine).get_columns("predictions")}
    assert {"side", "side_source", "side_chosen", "study_reference"} <= columns
    migrate.downgrade(engine, "0003_user_sessions")
    columns = {c["name"] for c in sa.inspect(engine).get_columns("predictions")}
    assert not {"side", "side_source", "side_chosen", "study_reference"} & columns
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == migrate.head_revision()
    engine.dispose()
