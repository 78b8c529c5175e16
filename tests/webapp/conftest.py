"""Fixtures of the web-app tests.

The model server is the project's real one (``python -m serving``), started once
per session on a small real SavedModel (``tests/models/tiny_model.py``, built in a
subprocess so this process never imports TensorFlow). Each test gets a fresh
app on a fresh database migrated with Alembic, a test client, and an ``auth``
helper that signs in through the real login form, CSRF token included.

The database is SQLite, and for the modules in ``POSTGRES_MODULES`` also a real
PostgreSQL server (``postgres.py``: Debian's binaries, started once per session in a
temporary directory); those tests run once per database, ids ``[sqlite]`` and
``[postgresql]``. Without the server binaries the PostgreSQL runs skip with the reason.
"""

import itertools
import os
import subprocess
import sys

import pytest

import postgres

from components import features
from koa.processes import ChildProcess, free_port

from webapp import create_app, db, migrate
from webapp.users import create_user
from webapp_testlib import (
    write_model_card,
    ADMIN,
    CLINICIAN,
    OTHER_CLINICIAN,
    REPO,
    AuthActions,
)



_SERVER_START_SECONDS = 180

DATABASES = ("sqlite", "postgresql")
# Test modules run on both databases: the migrations, and the modules that write and query
# every table (uploads, history filters and paging, the API, sign-in sessions, rate
# limiting, user administration). The rest only render pages from what these store.
POSTGRES_MODULES = {
    "test_webapp_cli",
    "test_webapp_auth",
    "test_webapp_history_api",
    "test_webapp_predict",
    "test_webapp_side_reference",
    "test_webapp_ood_reason",
    "test_webapp_heatmap_method",
}


def pytest_generate_tests(metafunc):
    if "database_kind" in metafunc.fixturenames and metafunc.module.__name__ in POSTGRES_MODULES:
        metafunc.parametrize("database_kind", DATABASES, indirect=True)


@pytest.fixture
def database_kind(request) -> str:
    """The database this test runs on: "postgresql" where parametrised, else "sqlite"."""
    return getattr(request, "param", "sqlite")


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server for this session; skips the test when none can be started."""
    reason = postgres.unavailable_reason()
    if reason:
        pytest.skip(reason)
    server = postgres.PostgresServer(postgres.find_bin_dir())
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def new_database_url(database_kind, request, tmp_path):
    """A factory of URLs of new, empty databases of this test's kind."""
    if database_kind == "sqlite":
        numbers = itertools.count()
        yield lambda: f"sqlite:///{tmp_path}/webapp-{next(numbers)}.sqlite"
        return
    server = request.getfixturevalue("postgres_server")
    made = []

    def factory() -> str:
        made.append(server.create_database())
        return made[-1]

    yield factory
    for url in made:
        server.drop_database(url)


def _subprocess_env() -> dict:
    env = dict(os.environ)
    env.update(features.KERAS_ENV)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture(scope="session")
def model_base_path(tmp_path_factory):
    """A model base path holding version 1 of the tiny model and its model card."""
    base = tmp_path_factory.mktemp("serving_model") / "koa"
    base.mkdir()
    subprocess.run(
        [sys.executable, os.path.join(REPO, "tests", "models", "tiny_model.py"), str(base), "1"],
        check=True,
        env=_subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=300,
    )
    write_model_card(str(base), 1)
    return str(base)


@pytest.fixture(scope="session")
def serving_target(model_base_path, tmp_path_factory):
    """Starts the project's model server on the tiny model; yields ``host:port``."""
    from serving.client import ServingClient

    port, rest_port = free_port(), free_port()
    log_path = tmp_path_factory.mktemp("serving_log") / "server.log"
    process = ChildProcess("model server", [
        sys.executable, "-m", "serving", f"--port={port}", f"--rest_api_port={rest_port}",
        "--model_name=koa", f"--model_base_path={model_base_path}"],
        env=_subprocess_env(), log_path=str(log_path), cwd=REPO)
    target = f"127.0.0.1:{port}"
    try:
        with ServingClient(target, "koa", timeout=2.0, retries=0) as client:
            process.wait_until(
                lambda: any(s.state == "AVAILABLE" for s in client.model_status()),
                _SERVER_START_SECONDS)
        yield target
    finally:
        process.stop(timeout=20)


@pytest.fixture
def make_app(new_database_url, serving_target, model_base_path):
    """Builds a migrated app; keyword arguments override its config."""
    built = []

    def factory(**overrides):
        config = {
            "TESTING": True,
            "SECRET_KEY": "test-secret-key-" + "x" * 32,
            "DATABASE_URL": new_database_url(),
            "KOA_SERVING_TARGET": serving_target,
            "KOA_MODEL_NAME": "koa",
            "KOA_MODEL_BASE_PATH": model_base_path,
            "KOA_SERVING_TIMEOUT": 20.0,
            "KOA_SERVING_RETRIES": 0,
            # The tests read file names back; the product's default does not keep them
            # (test_webapp_predict checks that default).
            "KOA_KEEP_FILE_NAMES": True,
        }
        config.update(overrides)
        app = create_app(config)
        migrate.upgrade(db.engine_of(app))
        with app.app_context():
            session = db.get_session()
            for (name, password), role in (
                (CLINICIAN, "clinician"),
                (OTHER_CLINICIAN, "clinician"),
                (ADMIN, "admin"),
            ):
                create_user(session, name, password, role)
        built.append(app)
        return app

    yield factory
    from webapp import serving_gateway

    for app in built:
        serving_gateway.close_client(app)
        db.engine_of(app).dispose()


@pytest.fixture
def app(make_app):
    """The app with default test settings."""
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def auth(client):
    return AuthActions(client)


@pytest.fixture
def direct_client(serving_target):
    """A ServingClient on the same server, to compare the web's answers with."""
    from serving.client import ServingClient

    with ServingClient(serving_target, "koa", timeout=20.0, retries=0) as client:
        yield client
