"""Configuration of the web app, read from the environment (12-factor).

Nothing here runs at import time: :func:`from_environment` is called by the app
factory, so tests and the command line can build apps with different settings.
"""

import os
from typing import Mapping, Optional

# Environment variables the app reads, and the config keys they map to.
ENV_SECRET_KEY = "SECRET_KEY"
ENV_DATABASE_URL = "DATABASE_URL"
ENV_SERVING_TARGET = "KOA_SERVING_TARGET"
ENV_MODEL_NAME = "KOA_MODEL_NAME"
ENV_MODEL_BASE_PATH = "KOA_MODEL_BASE_PATH"
ENV_SERVING_TIMEOUT = "KOA_SERVING_TIMEOUT"
ENV_SERVING_RETRIES = "KOA_SERVING_RETRIES"
ENV_MAX_UPLOAD_MB = "KOA_MAX_UPLOAD_MB"
ENV_MAX_IMAGE_PIXELS = "KOA_MAX_IMAGE_PIXELS"
ENV_INSECURE_COOKIES = "KOA_INSECURE_COOKIES"
ENV_LOGIN_MAX_FAILURES = "KOA_LOGIN_MAX_FAILURES"
ENV_LOGIN_WINDOW_SECONDS = "KOA_LOGIN_WINDOW_SECONDS"
# Upload file names often carry the patient's name or ID (PACS exports): kept only on request.
ENV_KEEP_FILE_NAMES = "KOA_KEEP_FILE_NAMES"
ENV_TIME_ZONE = "KOA_TIME_ZONE"  # IANA name of the clinic's zone for dates on pages

DEFAULT_SERVING_TARGET = "localhost:8500"
DEFAULT_MODEL_NAME = "koa"
DEFAULT_SERVING_TIMEOUT = 10.0
# A clinician waits on the page: retry a brief UNAVAILABLE once, then report it.
DEFAULT_SERVING_RETRIES = 1
# DICOM radiographs are commonly 5-30 MB; anything above this is refused with 413.
DEFAULT_MAX_UPLOAD_MB = 64
# A 4k x 4k detector image is 16 MP; 64 MP leaves room while refusing bombs.
DEFAULT_MAX_IMAGE_PIXELS = 64_000_000
DEFAULT_LOGIN_MAX_FAILURES = 5
DEFAULT_LOGIN_WINDOW_SECONDS = 15 * 60


class SettingsError(RuntimeError):
    """Raised when the environment does not give a usable configuration."""


def _truthy(value: Optional[str]) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _number(env: Mapping[str, str], name: str, default, kind=float, allow_zero=False):
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = kind(raw)
    except ValueError as e:
        raise SettingsError(f"{name}={raw!r} is not a valid {kind.__name__}") from e
    if value < 0 or (value == 0 and not allow_zero):
        raise SettingsError(f"{name}={raw!r} must be positive")
    return value


def from_environment(instance_path: str, env: Optional[Mapping[str, str]] = None) -> dict:
    """Builds the app's config from environment variables.

    Args:
        instance_path: The Flask instance folder; the default SQLite file lives there.
        env: Variables to read; ``os.environ`` when None.

    Returns:
        A dict of Flask config keys.

    Raises:
        SettingsError: if a value is malformed. A missing ``SECRET_KEY`` is checked by
            the factory, since tests supply one through ``test_config`` instead.
    """
    env = os.environ if env is None else env
    insecure = _truthy(env.get(ENV_INSECURE_COOKIES))
    max_upload_mb = _number(env, ENV_MAX_UPLOAD_MB, DEFAULT_MAX_UPLOAD_MB)
    return {
        "SECRET_KEY": env.get(ENV_SECRET_KEY) or None,
        "DATABASE_URL": env.get(ENV_DATABASE_URL)
        or "sqlite:///" + os.path.join(instance_path, "koa_webapp.sqlite"),
        "KOA_SERVING_TARGET": env.get(ENV_SERVING_TARGET) or DEFAULT_SERVING_TARGET,
        "KOA_MODEL_NAME": env.get(ENV_MODEL_NAME) or DEFAULT_MODEL_NAME,
        "KOA_MODEL_BASE_PATH": env.get(ENV_MODEL_BASE_PATH) or None,
        "KOA_SERVING_TIMEOUT": _number(env, ENV_SERVING_TIMEOUT, DEFAULT_SERVING_TIMEOUT),
        "KOA_SERVING_RETRIES": _number(
            env, ENV_SERVING_RETRIES, DEFAULT_SERVING_RETRIES, int, allow_zero=True
        ),
        "MAX_CONTENT_LENGTH": int(max_upload_mb * 1024 * 1024),
        "KOA_MAX_IMAGE_PIXELS": _number(env, ENV_MAX_IMAGE_PIXELS, DEFAULT_MAX_IMAGE_PIXELS, int),
        "KOA_KEEP_FILE_NAMES": _truthy(env.get(ENV_KEEP_FILE_NAMES)),
        "KOA_TIME_ZONE": env.get(ENV_TIME_ZONE) or "UTC",
        "KOA_LOGIN_MAX_FAILURES": _number(
            env, ENV_LOGIN_MAX_FAILURES, DEFAULT_LOGIN_MAX_FAILURES, int
        ),
        "KOA_LOGIN_WINDOW_SECONDS": _number(
            env, ENV_LOGIN_WINDOW_SECONDS, DEFAULT_LOGIN_WINDOW_SECONDS, int
        ),
        # Session cookies are Secure unless the operator explicitly serves plain HTTP
        # (browsers treat http://localhost as secure, so the local demo still works).
        "SESSION_COOKIE_SECURE": not insecure,
        "REMEMBER_COOKIE_SECURE": not insecure,
        "SESSION_COOKIE_HTTPONLY": True,
        "REMEMBER_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "REMEMBER_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_NAME": "koa_session",
        "PERMANENT_SESSION_LIFETIME": 8 * 3600,
        "WTF_CSRF_TIME_LIMIT": 8 * 3600,
        "HISTORY_PAGE_SIZE": 20,
    }
