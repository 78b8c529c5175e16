"""Clinician web UI: upload knee radiographs, get a KL grade from the model server.

The web process never imports TensorFlow: it reaches the model only through
:mod:`serving.client` over gRPC.
"""

import os
from typing import Mapping, Optional

from flask import Flask, g, jsonify, request
from flask_login import current_user
from flask_wtf.csrf import CSRFProtect

from webapp import settings as config_module

# Content-Security-Policy: no inline scripts or styles, nothing from other origins.
_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


def _no_store(response):
    """Pages and API answers for a signed-in user carry patient images and grades: no
    browser or proxy may keep a copy (static files are the same for everyone)."""
    if request.endpoint != "static" and (
            getattr(g, "api_user", None) is not None or current_user.is_authenticated):
        response.headers.setdefault("Cache-Control", "private, no-store")
    return response


def _security_headers(response):
    response.headers.setdefault("Content-Security-Policy", _CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    return response


def create_app(config: Optional[Mapping[str, object]] = None) -> Flask:
    """Builds the web app.

    Args:
        config: Flask config keys that take precedence over the environment's settings
            (``koa up`` and the tests pass ``SECRET_KEY``, ``DATABASE_URL`` and the
            serving target here); nothing needs to be put into ``os.environ``.

    Returns:
        The configured Flask app (the database is not touched: migrations are
        applied by ``python -m webapp upgrade-db`` or ``koa web``).

    Raises:
        config.SettingsError: if no ``SECRET_KEY`` is set or a setting is malformed.
    """
    app = Flask(__name__, instance_relative_config=True)
    app.config.update(config_module.from_environment(app.instance_path))
    if config is not None:
        app.config.update(config)
    if not app.config.get("SECRET_KEY"):
        raise config_module.SettingsError(
            "SECRET_KEY is not set: export a long random value, e.g. "
            "SECRET_KEY=$(python -c 'import secrets; print(secrets.token_hex(32))')"
        )
    if app.config["DATABASE_URL"].startswith("sqlite:///" + app.instance_path):
        os.makedirs(app.instance_path, exist_ok=True)

    # Imported here so that importing the package stays cheap and side-effect free.
    from webapp import (
        account,
        admin,
        api,
        auth,
        db,
        display,
        errors,
        history,
        model_card_views,
        predict,
        row_ids,
        serving_gateway,
    )

    # Before any route is added: `<id:...>` in the blueprints' rules needs it.
    app.url_map.converters["id"] = row_ids.RowIdConverter
    db.init_app(app)
    display.init_app(app)
    serving_gateway.init_app(app)
    auth.init_app(app)
    csrf = CSRFProtect(app)
    # The API authenticates with bearer tokens, not cookies, so CSRF cannot apply.
    csrf.exempt(api.bp)
    errors.init_app(app)
    for blueprint in (
        auth.bp,
        predict.bp,
        history.bp,
        model_card_views.bp,
        account.bp,
        admin.bp,
        api.bp,
    ):
        app.register_blueprint(blueprint)
    app.after_request(_security_headers)
    app.after_request(_no_store)

    @app.route("/healthz")
    def healthz():
        """Liveness probe: the web process answers (says nothing of the model server)."""
        return jsonify({"status": "ok"})

    return app
