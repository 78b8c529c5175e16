"""The app's single model-server client (one gRPC channel reused by all requests)."""

import threading

from flask import Flask, current_app

from serving.client import ServingClient

_EXTENSION_KEY = "koa_serving"


def init_app(app: Flask) -> None:
    """Prepares a lazily created client; nothing connects until the first use."""
    app.extensions[_EXTENSION_KEY] = {"client": None, "lock": threading.Lock()}


def get_client() -> ServingClient:
    """Returns the app's ServingClient, creating it on first use."""
    state = current_app.extensions[_EXTENSION_KEY]
    with state["lock"]:
        if state["client"] is None:
            config = current_app.config
            state["client"] = ServingClient(
                target=config["KOA_SERVING_TARGET"],
                model_name=config["KOA_MODEL_NAME"],
                timeout=config["KOA_SERVING_TIMEOUT"],
                retries=config["KOA_SERVING_RETRIES"],
            )
        return state["client"]


def close_client(app: Flask) -> None:
    """Closes the app's client (if it was ever created)."""
    state = app.extensions.get(_EXTENSION_KEY)
    if not state:
        return
    with state["lock"]:
        if state["client"] is not None:
            state["client"].close()
            state["client"] = None
