"""Upload, result, printable report, images and retry of predictions (clinician pages)."""

import sqlalchemy as sa
from flask import (
    Blueprint,
    Response,
    current_app,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_login import current_user, login_required

from components.features import GRADE_NAMES
from webapp import grading, model_card
from webapp.db import get_session
from webapp.errors import error_response, wants_json
from webapp.forms import ConfirmForm, UploadForm
from webapp.image_errors import ImageError
from webapp.models import STATUS_DONE, PredictionImage, utcnow
from webapp.queries import get_visible_prediction, prior_films
from webapp.serialize import NOT_GRADED_MESSAGE, prediction_json

bp = Blueprint("predict", __name__)

CAUTION = (
    "This grade is produced by a machine-learning model. It supports, and does not "
    "replace, the clinician's own reading of the radiograph."
)

UNAVAILABLE_MESSAGE = (
    "The model server did not answer. Your upload was kept and can be retried from "
    "the history page."
)


@bp.app_context_processor
def _template_globals():
    return {
        "grade_names": GRADE_NAMES,
        "caution": CAUTION,
        "not_graded_message": NOT_GRADED_MESSAGE,
    }


@bp.route("/")
@login_required
def upload():
    """The upload page (drag and drop, one or many files)."""
    return render_template("predict/upload.html", form=UploadForm())


def _unavailable(prediction):
    return error_response(
        503,
        UNAVAILABLE_MESSAGE,
        prediction=prediction_json(prediction) if wants_json() else prediction,
        retry_url=url_for("predict.retry", prediction_id=prediction.id),
    )


@bp.route("/predictions", methods=("POST",))
@login_required
def create():
    """Grades the uploaded files.

    One file: redirects to its result (or JSON 201 for scripts). Several: a summary.
    A bad file is a 400 naming the problem; a model-server failure a 503 with the
    upload kept for a retry.
    """
    form = UploadForm()
    if not form.validate_on_submit():
        return error_response(400, "The form expired or is incomplete; reload the page.")
    files = [f for f in request.files.getlist("files") if f and f.filename]
    if not files:
        return error_response(400, "No file was uploaded: choose a PNG, JPEG or DICOM image.")
    session = get_session()
    outcomes = []
    fields = {}
    for storage in files:
        name = grading.display_filename(storage.filename)
        try:
            prediction = grading.grade_upload(
                session,
                current_user,
                storage.filename,
                storage.read(),
                side=form.side.data,
                study_reference=form.study_reference.data,
            )
        except grading.UploadDetailsError as e:
            fields[name] = e.field
            outcomes.append((name, None, str(e)))
        except (ImageError, grading.ModelRejectedImageError) as e:
            outcomes.append((name, None, str(e)))
        else:
            outcomes.append((name, prediction, None))
    if len(outcomes) == 1:
        name, prediction, problem = outcomes[0]
        if problem:
            # "field" lets the upload page put the cursor where the correction goes.
            extra = {"field": fields[name]} if name in fields else {}
            return error_response(400, f"{name}: {problem}", **extra)
        if prediction.status != STATUS_DONE:
            return _unavailable(prediction)
        if wants_json():
            return jsonify(prediction_json(prediction)), 201
        return redirect(url_for("predict.result", prediction_id=prediction.id), code=303)
    if all(p is None for _, p, _ in outcomes):
        status = 400
    elif any(p is not None and p.status != STATUS_DONE for _, p, _ in outcomes):
        status = 503
    else:
        status = 200
    if wants_json():
        body = [
            {"file": n, "error": err} if p is None else prediction_json(p)
            for n, p, err in outcomes
        ]
        return jsonify({"results": body}), status
    return render_template("predict/batch.html", outcomes=outcomes), status


def _has_heatmap(session, prediction) -> bool:
    """Whether to show a heatmap: there is one, and it explains a grade that is shown.

    Asks the database without loading the image blobs.
    """
    if prediction.is_flagged:
        return False
    prediction_id = prediction.id
    return bool(
        session.scalar(
            sa.select(PredictionImage.heatmap_png.is_not(None)).where(
                PredictionImage.prediction_id == prediction_id
            )
        )
    )


@bp.route("/predictions/<id:prediction_id>")
@login_required
def result(prediction_id: int):
    """One prediction's result page (or its failure and a retry button), with the
    earlier films of the same study reference and side.

    Raises:
        404 if the prediction does not exist; 403 if it is another user's.
    """
    session = get_session()
    prediction = get_visible_prediction(session, current_user, prediction_id)
    return render_template(
        "predict/result.html",
        prediction=prediction,
        priors=prior_films(session, current_user, prediction),
        has_heatmap=_has_heatmap(session, prediction),
        retry_form=ConfirmForm(),
        synthetic_model=_synthetic_model(prediction),
    )


def _synthetic_model(prediction) -> bool:
    """Whether the model that graded `prediction` was trained on synthetic phantoms."""
    if prediction.model_version is None:
        return False
    return model_card.trained_on_synthetic(model_card.load_model_card_or_none(
        current_app.config["KOA_MODEL_BASE_PATH"], prediction.model_version))


@bp.route("/predictions/<id:prediction_id>/report")
@login_required
def report(prediction_id: int):
    """A printable one-page report of one study.

    Raises:
        404 if missing; 403 if another user's; 409 if it was never graded.
    """
    session = get_session()
    prediction = get_visible_prediction(session, current_user, prediction_id)
    if not prediction.is_done:
        return error_response(409, "This upload has not been graded yet; retry it first.")
    return render_template(
        "predict/report.html",
        prediction=prediction,
        priors=prior_films(session, current_user, prediction),
        has_heatmap=_has_heatmap(get_session(), prediction),
        printed_at=utcnow(),
        synthetic_model=_synthetic_model(prediction),
    )


def _png(data: bytes) -> Response:
    response = Response(data, mimetype="image/png")
    # Radiographs are health data: keep them out of shared and disk caches.
    response.headers["Cache-Control"] = "private, no-store"
    return response


@bp.route("/predictions/<id:prediction_id>/image.png")
@login_required
def image(prediction_id: int):
    """The radiograph exactly as sent to the model.

    Raises:
        404 if missing; 403 if another user's.
    """
    prediction = get_visible_prediction(get_session(), current_user, prediction_id)
    return _png(prediction.image.image_png)


@bp.route("/predictions/<id:prediction_id>/heatmap.png")
@login_required
def heatmap(prediction_id: int):
    """The heatmap overlay (the method the model served: ``Prediction.heatmap_method``).

    Raises:
        404 if missing or if the model gave no heatmap; 403 if another user's.
    """
    prediction = get_visible_prediction(get_session(), current_user, prediction_id)
    if not prediction.image.heatmap_png:
        return error_response(404, "This prediction has no heatmap.")
    return _png(prediction.image.heatmap_png)


@bp.route("/predictions/<id:prediction_id>/thumbnail.png")
@login_required
def thumbnail(prediction_id: int):
    """The small preview shown in history.

    Raises:
        404 if missing; 403 if another user's.
    """
    prediction = get_visible_prediction(get_session(), current_user, prediction_id)
    return _png(prediction.thumbnail_png)


@bp.route("/predictions/<id:prediction_id>/retry", methods=("POST",))
@login_required
def retry(prediction_id: int):
    """Sends a failed upload to the model server again.

    Raises:
        404 if missing; 403 if another user's; 409 if it is already graded.
    """
    form = ConfirmForm()
    if not form.validate_on_submit():
        return error_response(400, "The form expired; reload the page.")
    session = get_session()
    prediction = get_visible_prediction(session, current_user, prediction_id)
    if prediction.is_done:
        return error_response(409, "This upload is already graded.")
    try:
        grading.retry(session, prediction)
    except grading.ModelRejectedImageError as e:
        return error_response(400, str(e))
    if not prediction.is_done:
        return _unavailable(prediction)
    if wants_json():
        return jsonify(prediction_json(prediction)), 200
    return redirect(url_for("predict.result", prediction_id=prediction.id), code=303)
