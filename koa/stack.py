"""`koa up`: the whole local system — model server and web UI over the pushed models.

Starts `python -m serving` on `serving_model/koa` and the web UI (waitress) pointed at
it, waits until both answer, creates the first admin with a one-time random password
when the database has no account, prints the URL and how to log in, and stops both
children when interrupted.
"""

import logging
import os
import secrets
import signal
import sys
import time
import urllib.request
from typing import Dict, List

from koa import processes
from pipeline import configs

logger = logging.getLogger(__name__)

WEB_DIR = os.path.join("build", "webapp")


class StackError(processes.StartError):
    """The system could not be brought up; the message says which part and why."""


def _secret_key(path: str) -> str:
    # Stable across restarts (sessions survive), never committed, readable by the owner only.
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    key = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key)
    return key


def _web_settings(project_dir: str, grpc_port: int) -> Dict[str, str]:
    """The web app's settings for this system. Their environment-variable names equal
    the Flask config keys (webapp/settings.py), so one mapping configures the web process
    (as its environment) and the app built here for the first admin (as its config)."""
    web_dir = os.path.abspath(os.path.join(project_dir, WEB_DIR))
    os.makedirs(web_dir, exist_ok=True)
    return {
        "SECRET_KEY": os.environ.get("SECRET_KEY") or _secret_key(os.path.join(web_dir, "secret_key")),
        "DATABASE_URL": os.environ.get("DATABASE_URL")
        or f"sqlite:///{os.path.join(web_dir, 'koa.db')}",
        "KOA_SERVING_TARGET": f"localhost:{grpc_port}",
        "KOA_MODEL_NAME": configs.MODEL_NAME,
        "KOA_MODEL_BASE_PATH": os.path.abspath(
            os.path.join(project_dir, configs.SERVING_MODEL_DIR, configs.MODEL_NAME)),
    }


def _first_admin(settings: Dict[str, str]) -> str:
    """Creates user 'admin' with a random password if there is no account; returns a hint."""
    from webapp import create_app
    from webapp.cli import count_users, create_account, upgrade_database

    app = create_app(settings)
    upgrade_database(app)
    if count_users(app):
        return "log in with an existing account (python -m webapp create-user to add one)"
    password = secrets.token_urlsafe(12)
    create_account(app, "admin", password, "admin")
    return f"log in as 'admin' with the one-time password {password} (change it after login)"


def up(project_dir: str = ".", grpc_port: int = 8500, rest_port: int = 8501,
       web_port: int = 5000, timeout: float = 180.0) -> int:
    """Runs model server and web UI until interrupted. Returns the exit status."""
    base_path = os.path.abspath(os.path.join(project_dir, configs.SERVING_MODEL_DIR,
                                             configs.MODEL_NAME))
    if not os.path.isdir(base_path) or not any(n.isdigit() for n in os.listdir(base_path)):
        raise StackError(f"no pushed model in {base_path}: run `make demo` or `dvc repro` first")

    children: List[processes.ChildProcess] = []

    def stop(*_):
        for child in reversed(children):
            child.terminate()
        for child in children:
            child.stop(timeout=30)

    # Ctrl-C and `kill` both stop everything (SIGINT may arrive ignored when started
    # in the background, hence set explicitly).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: (stop(), sys.exit(0)))
    try:
        logger.info("starting the model server on gRPC :%d, REST :%d", grpc_port, rest_port)
        server = processes.ChildProcess("model server", [
            sys.executable, "-m", "serving", f"--port={grpc_port}",
            f"--rest_api_port={rest_port}", f"--model_name={configs.MODEL_NAME}",
            f"--model_base_path={base_path}",
            # Only this machine's web UI talks to the model server.
            "--bind_address=127.0.0.1"])
        children.append(server)
        status_url = f"http://localhost:{rest_port}/v1/models/{configs.MODEL_NAME}"
        server.wait_until(lambda: b'"AVAILABLE"' in urllib.request.urlopen(
            status_url, timeout=2).read(), timeout, interval=0.5)

        settings = _web_settings(project_dir, grpc_port)
        login_hint = _first_admin(settings)
        logger.info("starting the web UI on :%d", web_port)
        # Plain HTTP on loopback for the local demo; behind TLS in production.
        env = {"KOA_INSECURE_COOKIES": "1", **os.environ, **settings}
        web = processes.ChildProcess("web UI", [
            sys.executable, "-m", "webapp", "serve", "--port", str(web_port)], env=env)
        children.append(web)
        url = f"http://localhost:{web_port}/"
        web.wait_until(lambda: urllib.request.urlopen(url + "auth/login", timeout=2).status == 200,
                       timeout, interval=0.5)
        logger.info("KOA grading is up: %s — %s. Model server: gRPC localhost:%d, "
                    "REST %s. Ctrl-C stops everything.", url, login_hint, grpc_port, status_url)
        while all(child.proc.poll() is None for child in children):
            time.sleep(1)
        failed = next(c for c in children if c.proc.poll() is not None)
        logger.error("the %s exited (status %s); stopping the rest", failed.what,
                     failed.proc.returncode)
        return 1
    except KeyboardInterrupt:
        logger.info("stopping")
        return 0
    finally:
        stop()
