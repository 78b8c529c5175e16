"""Database engine and per-request session lifetime.

One engine per app; one SQLAlchemy session per request, opened on first use and
closed on teardown (rolled back if the request did not commit).
"""

import sqlalchemy as sa
from flask import Flask, current_app, g
from sqlalchemy.orm import Session, sessionmaker

_EXTENSION_KEY = "koa_db"


def make_engine(database_url: str) -> sa.Engine:
    """Creates an engine; SQLite gets foreign keys, WAL and a busy timeout.

    Args:
        database_url: A SQLAlchemy URL, e.g. ``sqlite:///path`` or
            ``postgresql://user:password@host/koa``. A ``postgresql://`` URL without a
            driver uses psycopg 3, the driver the project installs.

    Raises:
        sqlalchemy.exc.ArgumentError: if the URL cannot be parsed.
    """
    url = sa.make_url(database_url)
    connect_args = {}
    options = {}
    if url.get_backend_name() == "sqlite":
        # Waitress serves requests from several threads; each uses its own connection.
        connect_args = {"check_same_thread": False, "timeout": 30}
    else:
        if url.drivername == "postgresql":
            # SQLAlchemy's default PostgreSQL driver is psycopg2, which is not installed.
            url = url.set(drivername="postgresql+psycopg")
        # A database server restarts; a pooled connection it closed is replaced on checkout
        # instead of failing the next request.
        options["pool_pre_ping"] = True
    engine = sa.create_engine(url, connect_args=connect_args, **options)
    if engine.dialect.name == "sqlite":

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            # In WAL mode NORMAL never corrupts the database; it only skips the fsync
            # per commit (a power cut may lose the last commits, never half of one).
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

    return engine


def init_app(app: Flask) -> None:
    """Attaches an engine and a session factory to ``app``."""
    engine = make_engine(app.config["DATABASE_URL"])
    app.extensions[_EXTENSION_KEY] = sessionmaker(bind=engine, expire_on_commit=False)
    app.teardown_appcontext(_close_session)


def engine_of(app: Flask) -> sa.Engine:
    """Returns the engine attached to ``app``."""
    return app.extensions[_EXTENSION_KEY].kw["bind"]


def get_session() -> Session:
    """Returns this request's session, opening it on first use."""
    if "db_session" not in g:
        g.db_session = current_app.extensions[_EXTENSION_KEY]()
    return g.db_session


def _close_session(_exc=None) -> None:
    session = g.pop("db_session", None)
    if session is not None:
        # close() rolls back anything not committed, so no half-done request persists.
        session.close()
