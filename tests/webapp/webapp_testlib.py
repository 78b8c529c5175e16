"""Helpers of the web-app tests (kept out of conftest.py so tests can import them by a unique name)."""

import io
import json
import os
import re

from components import features

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CARD_FIXTURE = os.path.join(HERE, "data", "model_card.json")

CLINICIAN = ("clinician1", "clinician-password-1")
OTHER_CLINICIAN = ("clinician2", "clinician-password-2")
ADMIN = ("admin1", "admin-password-123")

_CSRF_RE = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')


def csrf_token(client, path: str = "/auth/login") -> str:
    """A valid CSRF token for this client's session, read from a rendered form."""
    response = client.get(path)
    match = _CSRF_RE.search(response.get_data(as_text=True))
    assert match, f"no CSRF token on {path} (status {response.status_code})"
    return match.group(1)


class AuthActions:
    """Signs in and out through the real forms."""

    def __init__(self, client):
        self._client = client

    def login(self, user=CLINICIAN):
        username, password = user
        return self._client.post(
            "/auth/login",
            data={"username": username, "password": password, "csrf_token": csrf_token(self._client)},
        )

    def logout(self):
        return self._client.post("/auth/logout", data={"csrf_token": csrf_token(self._client, "/")})


def upload(client, files, *, json_response=False, token=None, side="R", study_reference=None):
    """Posts files to the upload endpoint.

    Args:
        client: A signed-in test client.
        files: List of (filename, bytes).
        json_response: Ask for JSON like the page's script does.
        token: CSRF token to send (a fresh valid one when None).
        side: The side chosen on the form ("L", "R"; None sends no choice).
        study_reference: The reference typed on the form (None sends none).
    """
    data = {
        "csrf_token": csrf_token(client, "/") if token is None else token,
        "files": [(io.BytesIO(content), name) for name, content in files],
    }
    if side is not None:
        data["side"] = side
    if study_reference is not None:
        data["study_reference"] = study_reference
    headers = {"Accept": "application/json"} if json_response else {}
    return client.post("/predictions", data=data, headers=headers, content_type="multipart/form-data")


def write_model_card(model_base_path: str, version: int, *, sections=None, **lineage) -> dict:
    """Writes the fixture card (with ``version``, and ``lineage`` entries replaced) where
    the pusher would put it. ``sections`` replaces top-level entries; None values drop
    them."""
    with open(CARD_FIXTURE, encoding="utf-8") as f:
        card = json.load(f)
    for key, value in (sections or {}).items():
        if value is None:
            card.pop(key, None)
        else:
            card[key] = value
    card["version"] = version
    card["lineage"].update({"pipeline_run_id": f"koa-test-run-v{version}", **lineage})
    path = features.model_card_path(os.path.join(model_base_path, str(version)))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(card, f)
    return card
