"""Upload, result, report, images and retry, against the real model server."""

import io
import logging
import re

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image

import webapp_images as wi
from koa.processes import free_port
from webapp_testlib import ADMIN, OTHER_CLINICIAN, csrf_token, upload
from webapp import db, serving_gateway
from webapp.models import Prediction, PredictionImage

GRADE_RE = re.compile(r'data-testid="grade" data-grade="(\d)"')
PROB_RE = re.compile(r'data-grade="(\d)" data-probability="([0-9.]+)"')


def _predictions(app):
    with app.app_context():
        return db.get_session().scalars(sa.select(Prediction).order_by(Prediction.id)).all()


def _count(app, model=Prediction):
    with app.app_context():
        return db.get_session().scalar(sa.select(sa.func.count()).select_from(model))


def _result_id(response) -> int:
    return int(response.headers["Location"].rsplit("/", 1)[-1])


def test_upload_page_has_drop_zone_and_script(client, auth):
    auth.login()
    page = client.get("/")
    assert page.status_code == 200
    body = page.get_data(as_text=True)
    assert 'id="drop-zone"' in body and "upload.js" in body
    with client.get("/static/upload.js") as script:
        assert script.status_code == 200


def test_single_upload_grades_like_a_direct_grpc_call(client, auth, app, direct_client):
    auth.login()
    image = wi.gradient_png()
    response = upload(client, [("knee-left.png", image)])
    assert response.status_code == 303
    prediction_id = _result_id(response)

    expected = direct_client.predict(image, explain=True)
    (stored,) = _predictions(app)
    assert stored.id == prediction_id and stored.status == "done"
    assert stored.grade == expected.grade
    assert stored.grade_name == expected.grade_name
    assert stored.probabilities == pytest.approx(expected.probabilities, abs=1e-6)
    assert stored.expected_grade == pytest.approx(expected.expected_grade, abs=1e-5)
    assert stored.confidence == pytest.approx(max(expected.probabilities), abs=1e-6)
    assert (stored.model_name, stored.model_version) == ("koa", 1)
    assert stored.model_pushed_at == "2025-03-14T09:26:53+00:00"
    assert stored.data_version == "d41d8cd98f00b204e9800998ecf8427e.dir"
    assert stored.original_filename == "knee-left.png"

    page = client.get(f"/predictions/{prediction_id}")
    assert page.status_code == 200
    body = page.get_data(as_text=True)
    assert GRADE_RE.search(body).group(1) == str(expected.grade)
    shown = {int(g): float(p) for g, p in PROB_RE.findall(body)}
    assert [shown[g] for g in range(5)] == pytest.approx(expected.probabilities, abs=1e-5)
    assert "does not replace" in body

    # The model got exactly the uploaded gray PNG; the overlay is the server's heatmap.
    assert client.get(f"/predictions/{prediction_id}/image.png").data == image
    heat = client.get(f"/predictions/{prediction_id}/heatmap.png")
    assert heat.status_code == 200 and heat.headers["Cache-Control"] == "private, no-store"
    overlay = np.asarray(Image.open(io.BytesIO(heat.data)))
    assert overlay.shape == expected.heatmap.shape + (4,)
    assert client.get(f"/predictions/{prediction_id}/thumbnail.png").status_code == 200


def test_uploads_of_different_images_get_their_own_grades(client, auth, app):
    auth.login()
    for grade in (0, 2, 4):
        assert upload(client, [(f"g{grade}.png", wi.png_of_grade(grade))]).status_code == 303
    assert [p.grade for p in _predictions(app)] == [0, 2, 4]


def test_json_upload_returns_the_prediction(client, auth, direct_client):
    auth.login()
    image = wi.png_of_grade(3)
    response = upload(client, [("g3.png", image)], json_response=True)
    assert response.status_code == 201
    body = response.get_json()
    expected = direct_client.predict(image)
    assert body["grade"] == expected.grade == 3
    assert body["grade_name"] == "Moderate"
    assert body["probabilities"] == pytest.approx(expected.probabilities, abs=1e-6)
    assert body["model"]["version"] == 1
    assert body["result_url"] == f"/predictions/{body['id']}"


def test_batch_upload_grades_each_file_and_rejects_only_bad_ones(client, auth, app):
    auth.login()
    files = [
        ("a.png", wi.png_of_grade(1)),
        ("b.txt", b"this is not an image at all"),
        ("c.jpg", wi.jpeg_bytes()),
    ]
    response = upload(client, files, json_response=True)
    assert response.status_code == 200
    results = response.get_json()["results"]
    assert results[0]["grade"] == 1
    assert results[1] == {"file": "b.txt", "error": results[1]["error"]}
    assert "unsupported file type" in results[1]["error"]
    assert results[2]["status"] == "done" and results[2]["format"] == "jpeg"
    assert [p.original_filename for p in _predictions(app)] == ["a.png", "c.jpg"]
    html = upload(client, files)
    assert html.status_code == 200
    assert _count(app) == 4


@pytest.mark.parametrize(
    "name, data, problem",
    [
        ("notes.txt", b"plain text", "unsupported file type"),
        ("empty.png", b"", "empty"),
        ("cut.png", wi.truncated(wi.gradient_png(256)), "truncated"),
        ("bomb.png", wi.png_header_bomb(), "decompression bomb"),
        ("cut.dcm", wi.truncated(wi.dicom_bytes(wi.ramp_12bit(200, 200)), 0.7), "DICOM"),
    ],
)
@pytest.mark.parametrize("json_response", [False, True])
def test_invalid_files_get_400_naming_the_problem_and_store_nothing(
    client, auth, app, name, data, problem, json_response
):
    auth.login()
    response = upload(client, [(name, data)], json_response=json_response)
    assert response.status_code == 400
    if json_response:
        assert problem in response.get_json()["error"]
    else:
        assert problem in response.get_data(as_text=True)
    assert _count(app) == 0 and _count(app, PredictionImage) == 0


def test_upload_without_file_or_csrf_is_refused(client, auth, app):
    auth.login()
    assert upload(client, []).status_code == 400
    assert upload(client, [("a.png", wi.gradient_png())], token="forged").status_code == 400
    assert _count(app) == 0


def test_too_large_upload_gets_413_and_stores_nothing(make_app, auth):
    app = make_app(MAX_CONTENT_LENGTH=50_000)
    client = app.test_client()
    client.post(
        "/auth/login",
        data={"username": "clinician1", "password": "clinician-password-1", "csrf_token": csrf_token(client)},
    )
    big = wi.png_bytes(np.random.default_rng(0).integers(0, 255, (400, 400), dtype=np.uint8))
    response = upload(client, [("big.png", big)], json_response=True)
    assert response.status_code == 413
    assert "larger than the limit" in response.get_json()["error"]
    assert upload(client, [("big.png", big)]).status_code == 413
    assert _count(app) == 0


def _sign_in(client, user=("clinician1", "clinician-password-1")):
    response = client.post(
        "/auth/login",
        data={"username": user[0], "password": user[1], "csrf_token": csrf_token(client)},
    )
    assert response.status_code == 302


def test_server_down_gives_503_keeps_upload_and_retry_succeeds(make_app, serving_target):
    app = make_app(KOA_SERVING_TARGET=f"127.0.0.1:{free_port()}", KOA_SERVING_TIMEOUT=5.0)
    client = app.test_client()
    _sign_in(client)
    image = wi.png_of_grade(2)

    response = upload(client, [("kept.png", image)])
    assert response.status_code == 503
    assert "retried" in response.get_data(as_text=True)
    (failed,) = _predictions(app)
    assert failed.status == "failed" and failed.grade is None
    assert "ModelUnavailableError" in failed.error  # kept for the log and the API
    for page in (response.get_data(as_text=True),
                 client.get(f"/predictions/{failed.id}").get_data(as_text=True)):
        assert "ModelUnavailableError" not in page and "StatusCode" not in page
    assert "did not answer" in client.get(f"/predictions/{failed.id}").get_data(as_text=True)
    with app.app_context():
        assert db.get_session().get(PredictionImage, failed.id).image_png == image

    as_json = upload(client, [("kept2.png", image)], json_response=True)
    assert as_json.status_code == 503
    body = as_json.get_json()
    assert body["prediction"]["status"] == "failed"
    assert body["retry_url"] == f"/predictions/{body['prediction']['id']}/retry"

    token = csrf_token(client, "/")
    still_down = client.post(f"/predictions/{failed.id}/retry", data={"csrf_token": token})
    assert still_down.status_code == 503
    history = client.get("/history?status=failed")
    assert f'data-id="{failed.id}"' in history.get_data(as_text=True)

    # The server comes back: the kept upload is graded on retry.
    app.config["KOA_SERVING_TARGET"] = serving_target
    serving_gateway.close_client(app)
    retried = client.post(f"/predictions/{failed.id}/retry", data={"csrf_token": token})
    assert retried.status_code == 303
    done = _predictions(app)[0]
    assert (done.status, done.grade, done.attempts, done.error) == ("done", 2, 3, None)
    again = client.post(f"/predictions/{failed.id}/retry", data={"csrf_token": token})
    assert again.status_code == 409
    assert client.post(f"/predictions/{failed.id}/retry").status_code == 400


def test_slow_server_gives_503(make_app):
    # A deadline far shorter than any inference: the server cannot answer in time.
    app = make_app(KOA_SERVING_TIMEOUT=1e-6)
    client = app.test_client()
    _sign_in(client)
    response = upload(client, [("slow.png", wi.gradient_png())], json_response=True)
    assert response.status_code == 503
    (failed,) = _predictions(app)
    assert failed.status == "failed" and "DEADLINE_EXCEEDED" in failed.error


def test_results_are_private_to_their_owner_and_admins(app, client, auth):
    auth.login()
    prediction_id = _result_id(upload(client, [("mine.png", wi.gradient_png())]))
    paths = [
        f"/predictions/{prediction_id}",
        f"/predictions/{prediction_id}/report",
        f"/predictions/{prediction_id}/image.png",
        f"/predictions/{prediction_id}/heatmap.png",
        f"/predictions/{prediction_id}/thumbnail.png",
    ]
    auth.logout()
    auth.login(OTHER_CLINICIAN)
    for path in paths:
        assert client.get(path).status_code == 403, path
    token = csrf_token(client, "/")
    assert client.post(f"/predictions/{prediction_id}/retry", data={"csrf_token": token}).status_code == 403
    auth.logout()
    auth.login(ADMIN)
    for path in paths:
        assert client.get(path).status_code == 200, path
    assert client.get("/predictions/99999").status_code == 404
    assert client.get("/predictions/99999/image.png").status_code == 404


def test_printable_report(client, auth, app):
    auth.login()
    prediction_id = _result_id(upload(client, [("r.png", wi.png_of_grade(4))]))
    report = client.get(f"/predictions/{prediction_id}/report")
    assert report.status_code == 200
    body = report.get_data(as_text=True)
    assert GRADE_RE.search(body).group(1) == "4"
    assert "does not replace" in body and "report.js" in body
    with client.get("/static/style.css") as css:
        assert "@media print" in css.get_data(as_text=True)


def test_report_of_failed_upload_is_409(make_app):
    app = make_app(KOA_SERVING_TARGET=f"127.0.0.1:{free_port()}", KOA_SERVING_TIMEOUT=2.0)
    client = app.test_client()
    _sign_in(client)
    upload(client, [("x.png", wi.gradient_png())])
    (failed,) = _predictions(app)
    assert client.get(f"/predictions/{failed.id}/report").status_code == 409
    assert client.get(f"/predictions/{failed.id}/heatmap.png").status_code == 404
    page = client.get(f"/predictions/{failed.id}")
    assert page.status_code == 200 and 'data-testid="failed"' in page.get_data(as_text=True)


def test_dicom_upload_never_stores_logs_or_shows_patient_data(client, auth, app, caplog):
    caplog.set_level(logging.DEBUG)
    auth.login()
    data = wi.dicom_bytes(wi.ramp_12bit(), photometric="MONOCHROME1", window=(2048, 4096))
    response = upload(client, [("knee.dcm", data)])
    assert response.status_code == 303
    prediction_id = _result_id(response)
    page = client.get(f"/predictions/{prediction_id}").get_data(as_text=True)
    report = client.get(f"/predictions/{prediction_id}/report").get_data(as_text=True)
    csv_text = client.get("/history.csv").get_data(as_text=True)
    engine = db.engine_of(app)
    with engine.connect() as conn:
        # Every value of every table as text, on SQLite and PostgreSQL alike.
        dump = "\n".join(
            repr(tuple(row))
            for table in sa.inspect(conn).get_table_names()
            for row in conn.execute(sa.text(f'SELECT * FROM "{table}"'))
        )
        blobs = b"".join(
            bytes(b) for row in conn.execute(sa.text("SELECT image_png, heatmap_png FROM prediction_images")) for b in row if b
        ) + b"".join(bytes(r[0]) for r in conn.execute(sa.text("SELECT thumbnail_png FROM predictions")))
    for secret in (wi.PATIENT_NAME, "Doe", "Janet", wi.PATIENT_ID, wi.PATIENT_BIRTH_DATE, wi.INSTITUTION):
        for where, text in (("page", page), ("report", report), ("csv", csv_text), ("db", dump), ("log", caplog.text)):
            assert secret not in text, f"{secret!r} leaked into {where}"
        assert secret.encode() not in blobs
    (stored,) = _predictions(app)
    assert stored.source_format == "dicom" and stored.status == "done"


def test_file_names_are_not_kept_unless_asked(make_app):
    """A PACS export named after the patient leaves no trace of the name by default: the
    format and a short content hash are stored instead."""
    import hashlib

    from webapp import settings

    assert settings.from_environment("/tmp", env={})["KOA_KEEP_FILE_NAMES"] is False
    app = make_app(KOA_KEEP_FILE_NAMES=False)
    client = app.test_client()
    _sign_in(client)
    image = wi.png_of_grade(1)
    response = upload(client, [("SMITH_JOHN_1234567.png", image)], json_response=True)
    assert response.status_code == 201
    stored = f"png-{hashlib.sha256(image).hexdigest()[:10]}"
    assert response.get_json()["file"] == stored
    (prediction,) = _predictions(app)
    assert prediction.original_filename == stored
    for path in ("/history", "/history.csv", f"/predictions/{prediction.id}",
                 f"/predictions/{prediction.id}/report"):
        page = client.get(path).get_data(as_text=True)
        assert "SMITH" not in page and "1234567" not in page, path


def test_pages_name_the_model_by_its_push_date_and_show_local_times(make_app):
    app = make_app(KOA_TIME_ZONE="Europe/Berlin")
    client = app.test_client()
    _sign_in(client)
    body = upload(client, [("k.png", wi.png_of_grade(1))], json_response=True).get_json()
    page = client.get(body["result_url"]).get_data(as_text=True)
    # The fixture card was pushed 2025-03-14T09:26:53Z: 10:26 in Berlin, same day.
    assert "koa model of 14 Mar 2025, v1" in page
    assert re.search(r"\d{1,2} \w{3} \d{4}, \d\d:\d\d CES?T", page)
    assert "T09:26:53" not in page
    assert "koa model of 14 Mar 2025, v1" in client.get("/history").get_data(as_text=True)
    with pytest.raises(Exception, match="KOA_TIME_ZONE"):
        make_app(KOA_TIME_ZONE="Mars/Olympus")
