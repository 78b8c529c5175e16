"""Sign-in, roles, CSRF, rate limiting, password change and security headers."""

import datetime as dt

import pytest
import sqlalchemy as sa

from webapp_testlib import ADMIN, CLINICIAN, csrf_token
from webapp import settings as config_module
from webapp import create_app, db
from webapp.models import LoginAttempt, User


def test_pages_require_sign_in(client):
    for path in ("/", "/history", "/model", "/account/tokens", "/predictions/1", "/admin/users"):
        response = client.get(path)
        assert response.status_code == 302, path
        assert response.headers["Location"].startswith("/auth/login")


def test_login_and_logout(client, auth):
    response = auth.login()
    assert response.status_code == 302
    assert response.headers["Location"] == "/"
    assert client.get("/").status_code == 200
    assert auth.logout().status_code == 302
    assert client.get("/").status_code == 302


def test_login_follows_only_local_next(client):
    token = csrf_token(client)
    data = {"username": CLINICIAN[0], "password": CLINICIAN[1], "csrf_token": token}
    response = client.post("/auth/login?next=//evil.example/x", data=data)
    assert response.headers["Location"] == "/"
    client.post("/auth/logout", data={"csrf_token": csrf_token(client, "/")})
    data["csrf_token"] = csrf_token(client)
    response = client.post("/auth/login?next=/history", data=data)
    assert response.headers["Location"] == "/history"


@pytest.mark.parametrize(
    "username, password",
    [(CLINICIAN[0], "wrong-password-xx"), ("nobody", "whatever-password"), (CLINICIAN[0].upper(), CLINICIAN[1])],
)
def test_bad_credentials_are_refused(client, app, username, password):
    response = client.post(
        "/auth/login",
        data={"username": username, "password": password, "csrf_token": csrf_token(client)},
    )
    assert response.status_code == 401
    assert client.get("/").status_code == 302
    with app.app_context():
        attempts = db.get_session().scalars(sa.select(LoginAttempt)).all()
        assert [(a.username, a.success) for a in attempts] == [(username, False)]


def test_login_without_csrf_token_is_refused(client):
    response = client.post("/auth/login", data={"username": CLINICIAN[0], "password": CLINICIAN[1]})
    assert response.status_code == 400
    assert client.get("/").status_code == 302


def test_logout_needs_post_with_csrf(client, auth):
    auth.login()
    assert client.get("/auth/logout").status_code == 405
    assert client.post("/auth/logout").status_code == 400
    assert client.get("/").status_code == 200


def test_login_is_rate_limited_then_unlocks_after_the_window(make_app):
    app = make_app(KOA_LOGIN_MAX_FAILURES=3, KOA_LOGIN_WINDOW_SECONDS=60)
    client = app.test_client()

    def attempt(password):
        return client.post(
            "/auth/login",
            data={"username": CLINICIAN[0], "password": password, "csrf_token": csrf_token(client)},
        )

    assert [attempt("wrong-password-xx").status_code for _ in range(3)] == [401, 401, 401]
    # Locked: even the right password is not checked.
    locked = attempt(CLINICIAN[1])
    assert locked.status_code == 429
    assert client.get("/").status_code == 302
    with app.app_context():
        session = db.get_session()
        # Age the failures past the window instead of sleeping.
        for row in session.scalars(sa.select(LoginAttempt)):
            row.created_at -= dt.timedelta(seconds=61)
        session.commit()
    assert attempt(CLINICIAN[1]).status_code == 302


def test_disabled_user_cannot_sign_in(app, client):
    with app.app_context():
        session = db.get_session()
        session.scalar(sa.select(User).where(User.username == CLINICIAN[0])).active = False
        session.commit()
    response = client.post(
        "/auth/login",
        data={"username": CLINICIAN[0], "password": CLINICIAN[1], "csrf_token": csrf_token(client)},
    )
    assert response.status_code == 401


def test_passwords_are_stored_hashed(app):
    with app.app_context():
        user = db.get_session().scalar(sa.select(User).where(User.username == CLINICIAN[0]))
        assert CLINICIAN[1] not in user.password_hash
        assert user.check_password(CLINICIAN[1])
        assert not user.check_password("something-else-1")


def test_change_password(client, auth):
    auth.login()
    token = csrf_token(client, "/auth/password")
    bad = client.post(
        "/auth/password",
        data={"current": "not-my-password", "new": "n" * 14, "repeat": "n" * 14, "csrf_token": token},
    )
    assert bad.status_code == 400
    short = client.post(
        "/auth/password",
        data={"current": CLINICIAN[1], "new": "short", "repeat": "short", "csrf_token": token},
    )
    assert short.status_code == 400
    ok = client.post(
        "/auth/password",
        data={"current": CLINICIAN[1], "new": "n" * 14, "repeat": "n" * 14, "csrf_token": token},
    )
    assert ok.status_code == 302
    auth.logout()
    assert auth.login((CLINICIAN[0], "n" * 14)).status_code == 302


def test_clinician_cannot_reach_admin_pages(client, auth):
    auth.login()
    assert client.get("/admin/users").status_code == 403


def test_admin_creates_and_disables_users(client, auth, app):
    auth.login(ADMIN)
    token = csrf_token(client, "/admin/users")
    created = client.post(
        "/admin/users",
        data={"username": "newdoc", "password": "p" * 12, "role": "clinician", "csrf_token": token},
    )
    assert created.status_code == 303
    duplicate = client.post(
        "/admin/users",
        data={"username": "newdoc", "password": "p" * 12, "role": "clinician", "csrf_token": token},
    )
    assert duplicate.status_code == 409
    invalid = client.post(
        "/admin/users",
        data={"username": "bad name!", "password": "p" * 12, "role": "overlord", "csrf_token": token},
    )
    assert invalid.status_code == 400
    with app.app_context():
        session = db.get_session()
        user = session.scalar(sa.select(User).where(User.username == "newdoc"))
        admin_id = session.scalar(sa.select(User.id).where(User.username == ADMIN[0]))
    assert user.role == "clinician" and user.active
    assert client.post(f"/admin/users/{user.id}/toggle", data={"csrf_token": token}).status_code == 303
    assert client.post(f"/admin/users/{admin_id}/toggle", data={"csrf_token": token}).status_code == 409
    assert client.post("/admin/users/9999/toggle", data={"csrf_token": token}).status_code == 404
    with app.app_context():
        assert db.get_session().get(User, user.id).active is False


def test_security_headers_and_cookie_flags(client, auth):
    response = auth.login()
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=Lax" in cookie
    page = client.get("/")
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["X-Content-Type-Options"] == "nosniff"


def test_secret_key_is_required_outside_tests(monkeypatch, tmp_path):
    monkeypatch.delenv("SECRET_KEY", raising=False)
    with pytest.raises(config_module.SettingsError, match="SECRET_KEY"):
        create_app({"DATABASE_URL": f"sqlite:///{tmp_path}/x.sqlite"})


def test_config_comes_from_the_environment(tmp_path):
    env = {
        "SECRET_KEY": "s" * 40,
        "DATABASE_URL": "postgresql://db.internal/koa",
        "KOA_SERVING_TARGET": "models:9000",
        "KOA_MODEL_NAME": "knee",
        "KOA_MODEL_BASE_PATH": "/models/knee",
        "KOA_MAX_UPLOAD_MB": "2",
        "KOA_INSECURE_COOKIES": "1",
    }
    config = config_module.from_environment(str(tmp_path), env)
    assert config["DATABASE_URL"] == "postgresql://db.internal/koa"
    assert config["KOA_SERVING_TARGET"] == "models:9000"
    assert config["KOA_MODEL_NAME"] == "knee"
    assert config["MAX_CONTENT_LENGTH"] == 2 * 1024 * 1024
    assert config["SESSION_COOKIE_SECURE"] is False
    defaults = config_module.from_environment(str(tmp_path), {})
    assert defaults["DATABASE_URL"] == f"sqlite:///{tmp_path}/koa_webapp.sqlite"
    assert defaults["SESSION_COOKIE_SECURE"] is True
    assert defaults["SECRET_KEY"] is None
    with pytest.raises(config_module.SettingsError, match="KOA_SERVING_TIMEOUT"):
        config_module.from_environment(str(tmp_path), {"KOA_SERVING_TIMEOUT": "soon"})


def test_unknown_and_disabled_accounts_cost_a_password_hash_like_real_ones(
        client, app, monkeypatch):
    """Sign-in time must not tell which usernames exist: every attempt hashes the
    password once, whatever the account."""
    from webapp import auth as auth_module
    from webapp import models

    calls = []
    real = auth_module.check_password_hash
    counting = lambda stored, password: calls.append(1) or real(stored, password)  # noqa: E731
    monkeypatch.setattr(auth_module, "check_password_hash", counting)
    monkeypatch.setattr(models, "check_password_hash", counting)
    for username, password in (("nobody-here", "whatever-password"),
                               (CLINICIAN[0], "wrong-password-1")):
        calls.clear()
        response = client.post("/auth/login", data={
            "username": username, "password": password, "csrf_token": csrf_token(client)})
        assert response.status_code == 401
        assert len(calls) == 1, username


def _copy_session(source, target):
    """What an attacker with the cookie does: replay it from another client."""
    cookie = source.get_cookie("koa_session")
    target.set_cookie("koa_session", cookie.value, domain=cookie.domain or "localhost")


def _sign_in(client, user=CLINICIAN):
    response = client.post("/auth/login", data={
        "username": user[0], "password": user[1], "csrf_token": csrf_token(client)})
    assert response.status_code == 302


def test_signing_out_ends_the_session_for_a_copied_cookie_too(app):
    browser, thief = app.test_client(), app.test_client()
    _sign_in(browser)
    _copy_session(browser, thief)
    assert thief.get("/history").status_code == 200
    browser.post("/auth/logout", data={"csrf_token": csrf_token(browser, "/")})
    assert browser.get("/history").status_code == 302
    assert thief.get("/history").status_code == 302


def test_a_password_change_signs_out_the_accounts_other_sessions(app):
    laptop, phone = app.test_client(), app.test_client()
    _sign_in(laptop)
    _sign_in(phone)
    response = laptop.post("/auth/password", data={
        "current": CLINICIAN[1], "new": "a-new-password-42", "repeat": "a-new-password-42",
        "csrf_token": csrf_token(laptop, "/auth/password")})
    assert response.status_code == 302
    assert laptop.get("/history").status_code == 200
    assert phone.get("/history").status_code == 302


def test_disabling_an_account_ends_its_sessions(app):
    clinician, admin = app.test_client(), app.test_client()
    _sign_in(clinician)
    _sign_in(admin, ADMIN)
    assert clinician.get("/history").status_code == 200
    with app.app_context():
        user_id = db.get_session().scalar(sa.select(User.id).where(User.username == CLINICIAN[0]))
    response = admin.post(f"/admin/users/{user_id}/toggle",
                          data={"csrf_token": csrf_token(admin, "/admin/users")})
    assert response.status_code == 303
    assert clinician.get("/history").status_code == 302
