"""The searchable, paginated history of predictions and its CSV export."""

import csv
import io

from flask import Blueprint, Response, current_app, render_template, request
from flask_login import current_user, login_required

from webapp.db import get_session
from webapp.errors import error_response
from webapp.forms import ConfirmForm
from webapp.queries import SearchError, history_query, page_number, paginate, parse_filter
from webapp.serialize import CSV_COLUMNS, prediction_csv_rows

bp = Blueprint("history", __name__)

# Rows fetched per round trip while streaming a CSV export.
_CSV_BATCH = 500


@bp.route("/history")
@login_required
def index():
    """History page: filters (text matching file name, study reference or #id; grade,
    status, side, dates, user for admins) and pages."""
    try:
        flt = parse_filter(request.args)
        page = page_number(request.args)
    except SearchError as e:
        return error_response(400, str(e))
    result = paginate(
        get_session(),
        history_query(current_user, flt),
        page,
        current_app.config["HISTORY_PAGE_SIZE"],
    )
    return render_template(
        "history/index.html", page=result, flt=flt, args=flt.as_args(), retry_form=ConfirmForm()
    )


@bp.route("/history.csv")
@login_required
def export_csv():
    """The filtered history as CSV (every matching row, not just one page)."""
    try:
        flt = parse_filter(request.args)
    except SearchError as e:
        return error_response(400, str(e))
    session = get_session()
    query = history_query(current_user, flt).execution_options(yield_per=_CSV_BATCH)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    writer.writerows(prediction_csv_rows(session.scalars(query)))
    response = Response(buffer.getvalue(), mimetype="text/csv")
    response.headers["Content-Disposition"] = 'attachment; filename="koa_history.csv"'
    response.headers["Cache-Control"] = "private, no-store"
    return response
