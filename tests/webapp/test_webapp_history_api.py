"""History search, pagination, CSV export, API tokens and the JSON API."""

import csv
import datetime as dt
import io
import re

import pytest
import sqlalchemy as sa

import webapp_images as wi
from koa.processes import free_port
from webapp_testlib import ADMIN, CLINICIAN, OTHER_CLINICIAN, csrf_token, upload
from webapp import db
from webapp.models import ApiToken, Prediction
from webapp.serialize import CSV_COLUMNS

ROW_RE = re.compile(r'<tr data-id="(\d+)"')
TOKEN_RE = re.compile(r'data-testid="new-token">([^<]+)<')


def _ids(response):
    return [int(i) for i in ROW_RE.findall(response.get_data(as_text=True))]


@pytest.fixture
def graded(client, auth):
    """Uploads of grades 0..4 by the clinician (newest last) and one by another user."""
    auth.login()
    for grade in range(5):
        assert upload(client, [(f"knee_grade{grade}.png", wi.png_of_grade(grade))]).status_code == 303
    auth.logout()
    auth.login(OTHER_CLINICIAN)
    assert upload(client, [("other.png", wi.png_of_grade(1))]).status_code == 303
    auth.logout()


def test_history_shows_only_own_predictions_newest_first(client, auth, graded):
    auth.login()
    assert _ids(client.get("/history")) == [5, 4, 3, 2, 1]


def test_admin_history_shows_everyone_and_filters_by_user(client, auth, graded):
    auth.login(ADMIN)
    assert _ids(client.get("/history")) == [6, 5, 4, 3, 2, 1]
    assert _ids(client.get(f"/history?user={OTHER_CLINICIAN[0]}")) == [6]


@pytest.mark.parametrize(
    "query, expected",
    [
        ("q=grade3", [4]),
        ("q=%233", [3]),
        ("q=KNEE_GRADE", [5, 4, 3, 2, 1]),
        ("q=%25", []),
        ("grade=4", [5]),
        ("grade=0", [1]),
        ("status=done", [5, 4, 3, 2, 1]),
        ("status=failed", []),
        ("from=2000-01-01&to=2999-01-01", [5, 4, 3, 2, 1]),
        ("to=2000-01-01", []),
    ],
)
def test_history_search(client, auth, graded, query, expected):
    auth.login()
    assert _ids(client.get(f"/history?{query}")) == expected


@pytest.mark.parametrize(
    "query, parameter",
    [("grade=7", "grade"), ("status=lost", "status"), ("from=yesterday", "from"), ("page=0", "page")],
)
def test_history_rejects_malformed_filters(client, auth, query, parameter):
    auth.login()
    response = client.get(f"/history?{query}", headers={"Accept": "application/json"})
    assert response.status_code == 400
    assert f"'{parameter}'" in response.get_json()["error"]
    # The export has no pages; every other malformed filter is refused there too.
    assert client.get(f"/history.csv?{query}").status_code == (200 if parameter == "page" else 400)


def test_history_is_paginated(make_app):
    app = make_app(HISTORY_PAGE_SIZE=2)
    client = app.test_client()
    client.post(
        "/auth/login",
        data={"username": CLINICIAN[0], "password": CLINICIAN[1], "csrf_token": csrf_token(client)},
    )
    for grade in range(5):
        upload(client, [(f"g{grade}.png", wi.png_of_grade(grade))])
    assert _ids(client.get("/history")) == [5, 4]
    assert _ids(client.get("/history?page=2")) == [3, 2]
    assert _ids(client.get("/history?page=3")) == [1]
    assert _ids(client.get("/history?page=4")) == []
    # Filters survive in the pager links.
    assert 'grade=2' in client.get("/history?grade=2").get_data(as_text=True)


def test_csv_export_has_every_matching_row(client, auth, graded):
    auth.login()
    response = client.get("/history.csv")
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert "attachment" in response.headers["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(response.get_data(as_text=True))))
    assert rows[0] == CSV_COLUMNS
    body = [dict(zip(rows[0], r)) for r in rows[1:]]
    assert [int(r["id"]) for r in body] == [5, 4, 3, 2, 1]
    assert [int(r["grade"]) for r in body] == [4, 3, 2, 1, 0]
    first = body[0]
    probs = [float(first[f"p_{n}"]) for n in ("normal", "doubtful", "mild", "moderate", "severe")]
    assert sum(probs) == pytest.approx(1.0, abs=1e-4)
    assert first["model_version"] == "1" and first["user"] == CLINICIAN[0]
    filtered = client.get("/history.csv?grade=2").get_data(as_text=True)
    assert len(list(csv.reader(io.StringIO(filtered)))) == 2


def test_csv_export_defuses_formula_file_names(client, auth):
    auth.login()
    upload(client, [("=HYPERLINK(1).png", wi.gradient_png())])
    rows = list(csv.reader(io.StringIO(client.get("/history.csv").get_data(as_text=True))))
    assert rows[1][CSV_COLUMNS.index("file")] == "'=HYPERLINK(1).png"


def test_file_names_are_display_only(client, auth, app):
    auth.login()
    upload(client, [("../../etc/passwd\x07.png", wi.gradient_png())])
    with app.app_context():
        (stored,) = db.get_session().scalars(sa.select(Prediction)).all()
    assert stored.original_filename == "passwd.png"


def _make_token(client, auth, user=CLINICIAN, name="integration"):
    auth.login(user)
    response = client.post(
        "/account/tokens", data={"name": name, "csrf_token": csrf_token(client, "/account/tokens")}
    )
    assert response.status_code == 201
    token = TOKEN_RE.search(response.get_data(as_text=True)).group(1)
    auth.logout()
    return token


def test_api_token_is_shown_once_and_stored_hashed(client, auth, app):
    token = _make_token(client, auth)
    assert token.startswith("koa_") and len(token) > 40
    with app.app_context():
        (row,) = db.get_session().scalars(sa.select(ApiToken)).all()
    assert token not in row.token_hash and row.prefix == token[:12]
    auth.login()
    assert token not in client.get("/account/tokens").get_data(as_text=True)


def test_api_post_and_get(client, auth, direct_client):
    token = _make_token(client, auth)
    headers = {"Authorization": f"Bearer {token}"}
    image = wi.png_of_grade(2)
    created = client.post(
        "/api/v1/predictions",
        data={"image": (io.BytesIO(image), "api.png"), "side": "L"},
        headers=headers,
        content_type="multipart/form-data",
    )
    assert created.status_code == 201
    body = created.get_json()
    expected = direct_client.predict(image)
    assert body["grade"] == expected.grade == 2
    assert body["probabilities"] == pytest.approx(expected.probabilities, abs=1e-6)
    assert body["model"]["data_version"] == "d41d8cd98f00b204e9800998ecf8427e.dir"
    assert created.headers["Location"] == f"/api/v1/predictions/{body['id']}"

    raw = client.post(
        "/api/v1/predictions?explain=true&side=right",
        data=wi.png_of_grade(4),
        headers={**headers, "Content-Type": "image/png", "X-Filename": "raw.png"},
    )
    assert raw.status_code == 201 and raw.get_json()["grade"] == 4

    listing = client.get("/api/v1/predictions?per_page=1", headers=headers).get_json()
    assert listing["total"] == 2 and listing["pages"] == 2
    assert [p["file"] for p in listing["predictions"]] == ["raw.png"]
    assert client.get("/api/v1/predictions?grade=2", headers=headers).get_json()["total"] == 1
    one = client.get(f"/api/v1/predictions/{body['id']}", headers=headers)
    assert one.status_code == 200 and one.get_json()["grade"] == 2


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer"}, {"Authorization": "Bearer koa_nope"}, {"Authorization": "Basic abc"}],
)
def test_api_refuses_missing_or_bad_tokens(client, headers):
    response = client.get("/api/v1/predictions", headers=headers)
    assert response.status_code == 401
    assert response.get_json()["status"] == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_revoked_token_and_disabled_user_lose_access(client, auth, app):
    token = _make_token(client, auth)
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/predictions", headers=headers).status_code == 200
    auth.login()
    with app.app_context():
        token_id = db.get_session().scalar(sa.select(ApiToken.id))
    revoke = client.post(
        f"/account/tokens/{token_id}/revoke", data={"csrf_token": csrf_token(client, "/account/tokens")}
    )
    assert revoke.status_code == 303
    auth.logout()
    assert client.get("/api/v1/predictions", headers=headers).status_code == 401
    # Another user cannot revoke someone else's token.
    auth.login(OTHER_CLINICIAN)
    other = client.post(
        f"/account/tokens/{token_id}/revoke", data={"csrf_token": csrf_token(client, "/account/tokens")}
    )
    assert other.status_code == 404


@pytest.mark.parametrize(
    "kwargs, status, problem",
    [
        ({}, 400, "No image"),
        # Bytes, not a stream: the parameters are shared by the SQLite and PostgreSQL runs,
        # and the test client closes a stream it has sent.
        ({"data": {"image": (b"not an image", "x.png")}, "content_type": "multipart/form-data"}, 400, "unsupported file type"),
        ({"data": wi.truncated(wi.gradient_png(256)), "content_type": "image/png"}, 400, "truncated"),
    ],
)
def test_api_rejects_bad_uploads(client, auth, app, kwargs, status, problem):
    token = _make_token(client, auth)
    if isinstance(kwargs.get("data"), dict):  # a fresh stream for each run
        kwargs = dict(kwargs, data={key: (io.BytesIO(body), name)
                                    for key, (body, name) in kwargs["data"].items()})
    response = client.post(
        "/api/v1/predictions", headers={"Authorization": f"Bearer {token}"}, **kwargs
    )
    assert response.status_code == status
    assert problem in response.get_json()["error"]
    with app.app_context():
        assert db.get_session().scalar(sa.select(sa.func.count()).select_from(Prediction)) == 0


def test_api_reports_unavailable_server_with_the_kept_upload(make_app):
    app = make_app(KOA_SERVING_TARGET=f"127.0.0.1:{free_port()}", KOA_SERVING_TIMEOUT=2.0)
    client = app.test_client()
    client.post(
        "/auth/login",
        data={"username": CLINICIAN[0], "password": CLINICIAN[1], "csrf_token": csrf_token(client)},
    )
    created = client.post(
        "/account/tokens", data={"name": "t", "csrf_token": csrf_token(client, "/account/tokens")}
    )
    token = TOKEN_RE.search(created.get_data(as_text=True)).group(1)
    response = client.post(
        "/api/v1/predictions?side=L",
        data=wi.gradient_png(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "image/png"},
    )
    assert response.status_code == 503
    body = response.get_json()
    assert body["prediction"]["status"] == "failed"
    assert body["prediction"]["retry_url"].endswith("/retry")


def test_api_limits_page_size_and_hides_other_users(client, auth, graded):
    token = _make_token(client, auth, user=OTHER_CLINICIAN)
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/predictions?per_page=500", headers=headers).status_code == 400
    assert client.get("/api/v1/predictions", headers=headers).get_json()["total"] == 1
    assert client.get("/api/v1/predictions/1", headers=headers).status_code == 403
    assert client.get("/api/v1/predictions/999", headers=headers).status_code == 404


def test_dates_are_stored_in_utc(client, auth, app):
    auth.login()
    before = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    upload(client, [("t.png", wi.gradient_png())])
    with app.app_context():
        stored = db.get_session().scalar(sa.select(Prediction))
    assert before - dt.timedelta(seconds=1) <= stored.created_at <= before + dt.timedelta(minutes=1)


HUGE = str(2**64 + 5)


def test_numbers_beyond_64_bits_or_not_ascii_are_never_a_server_error(client, auth, graded):
    token = _make_token(client, auth)
    headers = {"Authorization": f"Bearer {token}"}
    auth.login()
    for path in (f"/predictions/{HUGE}", f"/predictions/{HUGE}/report",
                 f"/predictions/{HUGE}/image.png", f"/predictions/{2**63}"):
        assert client.get(path).status_code == 404, path
    assert client.get(f"/api/v1/predictions/{HUGE}", headers=headers).status_code == 404
    for query in (f"page={HUGE}", "page=²", "grade=²", f"page={10**9 + 1}"):
        assert client.get(f"/history?{query}").status_code == 400, query
        assert client.get(f"/api/v1/predictions?{query}", headers=headers).status_code == 400
    assert client.get(f"/api/v1/predictions?per_page={HUGE}", headers=headers).status_code == 400
    # A text search for an id that cannot exist finds nothing.
    found = client.get(f"/history?q=%23{HUGE}")
    assert found.status_code == 200 and _ids(found) == []


@pytest.mark.parametrize("target", ["/history\r\nSet-Cookie: x=1", "/\\evil.example",
                                    "/history\x00", "//evil.example/"])
def test_sign_in_ignores_unsafe_next_targets(client, target):
    from webapp_testlib import csrf_token as token_of

    response = client.post("/auth/login", query_string={"next": target}, data={
        "username": CLINICIAN[0], "password": CLINICIAN[1], "csrf_token": token_of(client)})
    assert response.status_code == 302
    assert response.headers["Location"] in ("/", "http://localhost/")


def test_pages_and_answers_with_patient_data_are_not_stored(client, auth, graded, app):
    token = _make_token(client, auth)
    auth.login()
    with app.app_context():
        prediction_id = db.get_session().scalars(sa.select(Prediction.id)).first()
    for path in (f"/predictions/{prediction_id}", f"/predictions/{prediction_id}/report",
                 "/history", "/history.csv"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert "no-store" in response.headers["Cache-Control"], path
    api = client.get("/api/v1/predictions", headers={"Authorization": f"Bearer {token}"})
    assert "no-store" in api.headers["Cache-Control"]
    assert "no-store" not in client.get("/static/style.css").headers.get("Cache-Control", "")
