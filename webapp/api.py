"""Token-authenticated JSON API for integrators: ``/api/v1/predictions``.

Authentication is ``Authorization: Bearer <token>`` (tokens are made on the
"API tokens" page). No cookies are used, so CSRF protection does not apply here.
"""

import functools

from flask import Blueprint, abort, g, jsonify, request, url_for

from webapp import grading, tokens
from webapp.db import get_session
from webapp.errors import error_response
from webapp.image_errors import ImageError
from webapp.models import STATUS_DONE
from webapp.queries import (
    SearchError,
    get_visible_prediction,
    history_query,
    page_number,
    paginate,
    parse_filter,
)
from webapp.serialize import prediction_json

bp = Blueprint("api", __name__, url_prefix="/api/v1")

MAX_PER_PAGE = 100
DEFAULT_PER_PAGE = 20
_RAW_IMAGE_TYPES = ("image/png", "image/jpeg", "application/dicom", "application/octet-stream")


def token_required(view):
    """Authenticates the bearer token; the user is put in ``g.api_user``.

    Raises (from the wrapped view):
        Unauthorized (401): no token, or an unknown, revoked or disabled one.
    """

    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            abort(401, description="Send an API token: 'Authorization: Bearer <token>'.")
        user = tokens.authenticate(get_session(), token.strip())
        if user is None:
            abort(401, description="The API token is unknown, revoked or its user is disabled.")
        g.api_user = user
        return view(*args, **kwargs)

    return wrapped


def _uploaded_file():
    """Returns (filename, bytes) from a multipart 'image' field or a raw image body."""
    storage = request.files.get("image") or request.files.get("file")
    if storage is not None and storage.filename:
        return storage.filename, storage.read()
    if request.mimetype in _RAW_IMAGE_TYPES:
        return request.headers.get("X-Filename", "upload"), request.get_data()
    return None, None


@bp.route("/predictions", methods=("POST",))
@token_required
def create_prediction():
    """Grades one image: multipart field ``image``, or the raw bytes as the body.

    ``side`` (L or R; required unless the DICOM file records its laterality, which
    then wins) and ``study_reference`` (optional) come as form fields or query
    arguments. ``?explain=true`` also computes the heatmap (slower; ``heatmap_method`` says which).
    Returns 201 with the prediction, 400 for a bad image, side or reference (with
    ``field`` naming which), 503 (upload kept) when the model server is unavailable.
    """
    filename, data = _uploaded_file()
    if data is None:
        return error_response(
            400,
            "No image: send multipart/form-data with an 'image' field, or the raw file "
            "with Content-Type image/png, image/jpeg or application/dicom.",
        )
    explain = request.args.get("explain", "").lower() in ("1", "true", "yes")
    try:
        prediction = grading.grade_upload(
            get_session(),
            g.api_user,
            filename,
            data,
            side=request.values.get("side"),
            study_reference=request.values.get("study_reference"),
            explain=explain,
        )
    except grading.UploadDetailsError as e:
        return error_response(400, str(e), field=e.field)
    except (ImageError, grading.ModelRejectedImageError) as e:
        return error_response(400, str(e))
    body = prediction_json(prediction)
    if prediction.status != STATUS_DONE:
        return error_response(
            503,
            "The model server is unavailable; the upload was kept and can be retried.",
            prediction=body,
        )
    response = jsonify(body)
    response.status_code = 201
    response.headers["Location"] = url_for("api.get_prediction", prediction_id=prediction.id)
    return response


@bp.route("/predictions", methods=("GET",))
@token_required
def list_predictions():
    """History as JSON: ``page``, ``per_page`` (max 100) and the history filters
    (``q`` matching file name, study reference or ``#id``; ``grade``, ``status``,
    ``side``, ``from``, ``to``, ``user`` for admins)."""
    try:
        flt = parse_filter(request.args)
        page = page_number(request.args)
        per_page = page_number(request.args, "per_page") if "per_page" in request.args else DEFAULT_PER_PAGE
    except SearchError as e:
        return error_response(400, str(e))
    if per_page > MAX_PER_PAGE:
        return error_response(400, f"'per_page' must be at most {MAX_PER_PAGE}, got {per_page}")
    result = paginate(get_session(), history_query(g.api_user, flt), page, per_page)
    return jsonify(
        {
            "predictions": [prediction_json(p) for p in result.items],
            "page": result.page,
            "per_page": result.per_page,
            "total": result.total,
            "pages": result.pages,
        }
    )


@bp.route("/predictions/<id:prediction_id>", methods=("GET",))
@token_required
def get_prediction(prediction_id: int):
    """One prediction.

    Raises:
        404 if missing; 403 if another user's (admins see all).
    """
    prediction = get_visible_prediction(get_session(), g.api_user, prediction_id)
    return jsonify(prediction_json(prediction))
