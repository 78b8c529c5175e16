"""HTTP error pages and JSON errors, chosen by who is asking."""

import logging

from flask import Flask, jsonify, render_template, request
from werkzeug.exceptions import HTTPException, InternalServerError

logger = logging.getLogger(__name__)

API_PREFIX = "/api/"

_TITLES = {
    400: "The request could not be used",
    401: "Sign-in required",
    403: "Not allowed",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "File too large",
    429: "Too many attempts",
    503: "Model server unavailable",
}


def wants_json() -> bool:
    """True for API calls and for browser scripts that ask for JSON."""
    if request.path.startswith(API_PREFIX):
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json" and request.accept_mimetypes[best] > request.accept_mimetypes[
        "text/html"
    ]


def error_response(status: int, message: str, **extra):
    """Renders an error as JSON ``{"error": ..., "status": ...}`` or as an HTML page."""
    if wants_json():
        body = {"error": message, "status": status}
        body.update(extra)
        return jsonify(body), status
    return (
        render_template(
            "errors/error.html",
            status=status,
            title=_TITLES.get(status, "Error"),
            message=message,
            **extra,
        ),
        status,
    )


def _handle_http(e: HTTPException):
    if e.code == 413:
        limit_mb = (request.max_content_length or 0) / (1024 * 1024)
        message = f"The upload is larger than the limit of {limit_mb:g} MB."
    else:
        message = e.description or _TITLES.get(e.code, e.name)
    response = error_response(e.code or 500, message)
    if e.code == 401 and request.path.startswith(API_PREFIX):
        body, status = response
        body.headers["WWW-Authenticate"] = 'Bearer realm="koa"'
        return body, status
    return response


def _handle_unexpected(e: Exception):
    # Logged with its traceback for the operator; the user gets no internals.
    logger.exception("unhandled error on %s %s", request.method, request.path)
    return error_response(500, InternalServerError.description)


def init_app(app: Flask) -> None:
    """Registers the handlers on ``app``."""
    app.register_error_handler(HTTPException, _handle_http)
    app.register_error_handler(Exception, _handle_unexpected)
