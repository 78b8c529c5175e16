"""Management commands: database migrations and account creation (no default credentials)."""

import io

import pytest
import sqlalchemy as sa

from webapp import cli, create_app, db, migrate


@pytest.fixture
def env(monkeypatch, tmp_path):
    url = f"sqlite:///{tmp_path}/cli.sqlite"
    monkeypatch.setenv("SECRET_KEY", "k" * 40)
    monkeypatch.setenv("DATABASE_URL", url)
    return url


def _users(url):
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT username, role, password_hash FROM users")).all()
    engine.dispose()
    return rows


def test_upgrade_db_is_idempotent_and_reaches_head(env, capsys):
    assert cli.main(["upgrade-db"]) == 0
    assert cli.main(["upgrade-db"]) == 0
    assert f"revision {migrate.head_revision()}" in capsys.readouterr().out
    engine = sa.create_engine(env)
    assert migrate.current_revision(engine) == migrate.head_revision()
    assert set(sa.inspect(engine).get_table_names()) >= {"users", "predictions", "prediction_images"}
    engine.dispose()


def test_migrations_downgrade_and_upgrade_again(env):
    engine = sa.create_engine(env)
    migrate.upgrade(engine)
    migrate.downgrade(engine, "base")
    assert migrate.current_revision(engine) is None
    assert "predictions" not in sa.inspect(engine).get_table_names()
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == migrate.head_revision()
    engine.dispose()


def test_migrations_match_the_models(env):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from webapp.models import Base

    engine = sa.create_engine(env)
    migrate.upgrade(engine)
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert differences == []


def test_app_start_does_not_create_tables(env):
    app = create_app()
    engine = db.engine_of(app)
    assert sa.inspect(engine).get_table_names() == []
    engine.dispose()


def test_create_admin_from_stdin(env, monkeypatch):
    assert cli.main(["upgrade-db"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("a-strong-password-1\n"))
    assert cli.main(["create-admin", "--username", "root", "--password-stdin"]) == 0
    ((username, role, password_hash),) = _users(env)
    assert (username, role) == ("root", "admin")
    assert "a-strong-password-1" not in password_hash
    monkeypatch.setattr("sys.stdin", io.StringIO("another-password-2\n"))
    assert cli.main(["create-user", "--username", "doc", "--password-stdin"]) == 0
    assert ("doc", "clinician") in [(u, r) for u, r, _ in _users(env)]


@pytest.mark.parametrize(
    "argv, stdin, migrated",
    [
        (["create-admin", "--username", "root", "--password-stdin"], "a-strong-password-1\n", False),
        (["create-admin", "--username", "root", "--password-stdin"], "short\n", True),
        (["create-admin", "--username", "root", "--password-stdin"], "\n", True),
        (["create-admin", "--username", "root"], "a-strong-password-1\n", True),
    ],
    ids=["not-migrated", "short-password", "empty-password", "no-terminal"],
)
def test_create_admin_failures_exit_nonzero_and_create_nobody(env, monkeypatch, argv, stdin, migrated):
    if migrated:
        assert cli.main(["upgrade-db"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    assert cli.main(argv) == 2
    if migrated:
        assert _users(env) == []


def test_duplicate_admin_is_refused(env, monkeypatch):
    cli.main(["upgrade-db"])
    for expected in (0, 2):
        monkeypatch.setattr("sys.stdin", io.StringIO("a-strong-password-1\n"))
        assert cli.main(["create-admin", "--username", "root", "--password-stdin"]) == expected


def test_missing_secret_key_is_a_clear_error(monkeypatch, tmp_path, caplog):
    monkeypatch.delenv("SECRET_KEY", raising=False)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/x.sqlite")
    assert cli.main(["upgrade-db"]) == 2
    assert "SECRET_KEY is not set" in caplog.text
