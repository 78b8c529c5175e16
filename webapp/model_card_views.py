"""The model card page: served model status, evaluation, curves and lineage."""

import logging

from flask import Blueprint, current_app, render_template, request
from flask_login import login_required

from components.features import GRADE_NAMES
from serving.client import ServingError
from webapp import charts, model_card, serving_gateway
from webapp.errors import error_response
from webapp.models import heatmap_display_name

logger = logging.getLogger(__name__)

bp = Blueprint("model_card", __name__, url_prefix="/model")

# Curves drawn on the card, grouped by what they measure.
_CURVE_GROUPS = (
    ("Loss", ("loss", "val_loss")),
    ("Accuracy", ("accuracy", "val_accuracy")),
)


def _curve_charts(history: dict) -> list:
    charts_out = []
    drawn = set()
    for title, names in _CURVE_GROUPS:
        chart = charts.line_chart(history, names=names)
        if chart:
            charts_out.append((title, chart))
            drawn.update(names)
    others = [n for n in sorted(history) if n not in drawn]
    if others:
        chart = charts.line_chart(history, names=others)
        if chart:
            charts_out.append(("Other metrics", chart))
    return charts_out


@bp.route("")
@login_required
def index():
    """Status of every loaded version (GetModelStatus) and the card of the served one.

    ``?version=N`` shows another version's card. A model server that cannot be
    reached gives a 503 page; a missing card is shown as such, not as an error.
    """
    version_arg = (request.args.get("version") or "").strip()
    if version_arg and not version_arg.isdigit():
        return error_response(400, f"'version' must be a number, got {version_arg!r}")
    try:
        statuses = serving_gateway.get_client().model_status()
    except ServingError as e:
        logger.warning("model status unavailable: %s", e)
        return error_response(503, f"The model server did not answer the status request ({e}).")
    served = model_card.served_version(statuses)
    version = int(version_arg) if version_arg else served
    card, card_error = None, None
    if version is not None:
        try:
            card = model_card.load_model_card(current_app.config["KOA_MODEL_BASE_PATH"], version)
        except model_card.ModelCardError as e:
            card_error = str(e)
    metrics = (card or {}).get("metrics") or {}
    matrix = metrics.get("confusion_matrix")
    return render_template(
        "model_card/index.html",
        statuses=sorted(statuses, key=lambda s: s.version, reverse=True),
        served=served,
        version=version,
        card=card,
        card_error=card_error,
        base_path_configured=bool(current_app.config["KOA_MODEL_BASE_PATH"]),
        metrics=metrics,
        matrix=charts.confusion_cells(matrix) if matrix else None,
        recall=metrics.get("recall_per_grade"),
        curves=_curve_charts((card or {}).get("training_history") or {}),
        model_name=current_app.config["KOA_MODEL_NAME"],
        grade_names=GRADE_NAMES,
        heatmap_name=heatmap_display_name,
    )
