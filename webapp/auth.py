"""Sign-in, sign-out, password change and role checks (Flask-Login sessions)."""

import functools
import logging
import secrets
from urllib.parse import urlsplit

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import LoginManager, current_user, login_required, login_user, logout_user
from werkzeug.security import check_password_hash, generate_password_hash

from webapp import login_throttle, sessions
from webapp.db import get_session
from webapp.forms import LoginForm, PasswordForm
from webapp.models import User

logger = logging.getLogger(__name__)

bp = Blueprint("auth", __name__, url_prefix="/auth")


def init_app(app) -> None:
    """Registers Flask-Login on ``app``."""
    manager = LoginManager()
    manager.login_view = "auth.login"
    manager.login_message = "Please sign in."
    # Invalidate the session if the client's address/agent changes mid-session.
    manager.session_protection = "strong"
    manager.user_loader(_load_user)
    manager.init_app(app)


def _load_user(session_id: str):
    return sessions.load(get_session(), session_id)


def admin_required(view):
    """Decorates a view so only signed-in admins reach it.

    Raises (from the wrapped view):
        Unauthorized redirect: the user is not signed in.
        Forbidden (403): the user is not an admin.
    """

    @functools.wraps(view)
    @login_required
    def wrapped(*args, **kwargs):
        if not current_user.is_admin:
            abort(403, description="This page is for administrators.")
        return view(*args, **kwargs)

    return wrapped


@functools.lru_cache(maxsize=1)
def _decoy_hash() -> str:
    """A hash of a random password, made with the same method as the accounts' hashes."""
    return generate_password_hash(secrets.token_urlsafe(16))


def _safe_next(target: str) -> str:
    """Only same-site relative paths are followed after sign-in (no open redirect, no
    header injection): no scheme or host, no backslash (browsers read "/\\host" as
    "//host"), no control characters."""
    if target and target.isprintable() and "\\" not in target:
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc and target.startswith("/") and not target.startswith("//"):
            return target
    return url_for("predict.upload")


@bp.route("/login", methods=("GET", "POST"))
def login():
    """Shows the sign-in form and signs the user in (rate limited)."""
    form = LoginForm()
    status = 200
    if form.validate_on_submit():
        session = get_session()
        username = form.username.data.strip()
        address = request.remote_addr or "unknown"
        config = current_app.config
        locked = login_throttle.seconds_locked(
            session,
            username,
            address,
            config["KOA_LOGIN_MAX_FAILURES"],
            config["KOA_LOGIN_WINDOW_SECONDS"],
        )
        if locked:
            logger.warning("sign-in refused (rate limit) for %r from %s", username, address)
            minutes = max(1, (locked + 59) // 60)
            abort(
                429,
                description=f"Too many failed sign-in attempts. Try again in {minutes} minute(s).",
            )
        user = session.query(User).filter_by(username=username).one_or_none()
        # The password is hashed for unknown accounts too, so the answer takes as long
        # for them as for real ones (no account enumeration by timing).
        password_ok = (user.check_password(form.password.data) if user is not None
                       else check_password_hash(_decoy_hash(), form.password.data))
        ok = user is not None and user.is_active and password_ok
        login_throttle.record_attempt(session, username, address, ok)
        if ok:
            sessions.start(session, user)
            login_user(user)
            logger.info("user %s signed in", user.id)
            return redirect(_safe_next(request.args.get("next", "")))
        # One message for unknown users and wrong passwords: no account enumeration.
        flash("Unknown username or wrong password.", "error")
        status = 401
    elif request.method == "POST":
        status = 400
    return render_template("auth/login.html", form=form), status


@bp.route("/logout", methods=("POST",))
@login_required
def logout():
    """Signs the user out (POST with CSRF token, so a link cannot do it); the sign-in is
    revoked server-side, so a copy of the cookie stops working too."""
    sessions.revoke(get_session(), current_user)
    logout_user()
    flash("Signed out.", "info")
    return redirect(url_for("auth.login"))


@bp.route("/password", methods=("GET", "POST"))
@login_required
def change_password():
    """Lets a signed-in user change their password."""
    form = PasswordForm()
    status = 200
    if form.validate_on_submit():
        session = get_session()
        user = session.get(User, current_user.id)
        if user.check_password(form.current.data):
            user.set_password(form.new.data)
            # Whoever else holds a session of this account is signed out.
            sessions.revoke_all(session, user.id, keep=current_user.session_token)
            session.commit()
            flash("Password changed.", "info")
            return redirect(url_for("predict.upload"))
        flash("The current password is wrong.", "error")
        status = 400
    elif request.method == "POST":
        status = 400
    return render_template("auth/password.html", form=form), status
