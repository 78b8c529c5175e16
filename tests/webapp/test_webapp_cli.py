"""Management commands: database migrations and account creation (no default credentials).

The tests on a database (fixture ``env``) run on SQLite and on a real PostgreSQL server
(conftest.py).
"""

import io
import multiprocessing

import pytest
import sqlalchemy as sa

from koa.processes import free_port
from webapp import cli, create_app, db, migrate


@pytest.fixture
def env(monkeypatch, new_database_url):
    url = new_database_url()
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


def test_each_migration_upgrades_and_downgrades_on_its_own(env):
    engine = sa.create_engine(env)
    revisions = migrate.revisions()
    assert revisions[-1] == migrate.head_revision()
    for revision in revisions:
        migrate.upgrade(engine, revision)
        assert migrate.current_revision(engine) == revision
    for previous in reversed([None] + revisions[:-1]):
        migrate.downgrade(engine, previous or "base")
        assert migrate.current_revision(engine) == previous
    assert sa.inspect(engine).get_table_names() == ["alembic_version"]
    engine.dispose()


def _upgrade_when_all_are_ready(url, barrier, results):
    engine = sa.create_engine(url)
    barrier.wait()
    try:
        migrate.upgrade(engine)
        results.put("ok")
    except Exception as e:  # the parent reports it
        results.put(f"{type(e).__name__}: {e}")
    finally:
        engine.dispose()


def test_replicas_starting_together_migrate_once(env):
    # Replicas of the web app started at once each upgrade the same empty database.
    processes = 2
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(processes), context.Queue()
    replicas = [context.Process(target=_upgrade_when_all_are_ready, args=(env, barrier, results))
                for _ in range(processes)]
    for replica in replicas:
        replica.start()
    outcomes = [results.get(timeout=120) for _ in replicas]
    for replica in replicas:
        replica.join(timeout=30)
    assert outcomes == ["ok"] * processes
    engine = sa.create_engine(env)
    assert migrate.current_revision(engine) == migrate.head_revision()
    engine.dispose()


def _insert_a_graded_upload(engine):
    """A user, a prediction and its images, in the columns of the first revision (which
    never changes; later revisions add nullable columns only)."""
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO users (username, password_hash, role, active, created_at) "
            "VALUES ('early', 'x', 'clinician', TRUE, '2025-01-02 03:04:05')"))
        conn.execute(sa.text(
            "INSERT INTO predictions (user_id, created_at, updated_at, status, attempts, "
            "original_filename, source_format, image_width, image_height, thumbnail_png, grade) "
            "SELECT id, '2025-01-02 03:04:05', '2025-01-02 03:04:05', 'done', 1, 'a.png', "
            "'png', 224, 224, :png, 2 FROM users"), {"png": b"\x89PNG"})
        conn.execute(sa.text(
            "INSERT INTO prediction_images (prediction_id, image_png) "
            "SELECT id, :png FROM predictions"), {"png": b"\x89PNG-full"})


def test_downgrading_to_the_first_revision_keeps_the_rows(env):
    engine = db.make_engine(env)
    migrate.upgrade(engine)
    _insert_a_graded_upload(engine)
    migrate.downgrade(engine, migrate.revisions()[0])
    with engine.connect() as conn:
        kept = conn.execute(sa.text(
            "SELECT p.original_filename, i.image_png FROM predictions p "
            "JOIN prediction_images i ON i.prediction_id = p.id")).all()
    engine.dispose()
    assert [(name, bytes(png)) for name, png in kept] == [("a.png", b"\x89PNG-full")]


def test_rows_survive_the_migrations_and_new_rows_get_fresh_ids(env):
    # The app's own engine: on SQLite it enforces foreign keys, under which copying a
    # table (how SQLite alters one) would delete the rows that reference it.
    engine = db.make_engine(env)
    first = migrate.revisions()[0]
    migrate.upgrade(engine, first)
    _insert_a_graded_upload(engine)
    migrate.upgrade(engine)
    app = create_app()
    with app.app_context():
        from webapp.models import Prediction, User
        from webapp.users import create_user

        session = db.get_session()
        (early,) = session.scalars(sa.select(User)).all()
        (prediction,) = session.scalars(sa.select(Prediction)).all()
        assert (early.username, prediction.user_id, prediction.grade) == ("early", early.id, 2)
        assert bytes(prediction.thumbnail_png) == b"\x89PNG"
        assert bytes(prediction.image.image_png) == b"\x89PNG-full"
        later = create_user(session, "later", "a-strong-password-1", "clinician")
        assert later.id > early.id
    db.engine_of(app).dispose()
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


def test_unreachable_database_is_a_clear_error(monkeypatch, caplog):
    pytest.importorskip("psycopg", reason="the PostgreSQL driver is not installed")
    monkeypatch.setenv("SECRET_KEY", "k" * 40)
    # Nothing listens on a port that was free a moment ago.
    monkeypatch.setenv("DATABASE_URL", f"postgresql://koa:pw-{'s' * 20}@127.0.0.1:{free_port()}/koa")
    assert cli.main(["upgrade-db"]) == 2
    assert "cannot use the database of DATABASE_URL" in caplog.text
    assert "s" * 20 not in caplog.text
