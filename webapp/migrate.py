"""Applies the versioned Alembic migrations in ``webapp/migrations``.

The schema is never made with ``create_all``: ``koa web`` and ``python -m webapp
upgrade-db`` call :func:`upgrade`, which brings any database to the latest revision.
"""

import logging
import os
from typing import List, Optional

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

logger = logging.getLogger(__name__)

_MIGRATIONS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "migrations")
# PostgreSQL advisory-lock key of schema migrations (any constant 64-bit number).
_MIGRATION_LOCK_KEY = 0x6B6F615F6D6967  # "koa_mig"


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", _MIGRATIONS_DIR)
    return config


def head_revision() -> str:
    """Returns the newest revision id shipped with the code."""
    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def revisions() -> List[str]:
    """Returns every revision id shipped with the code, oldest first."""
    script = ScriptDirectory.from_config(_alembic_config())
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]


def current_revision(engine: sa.Engine) -> Optional[str]:
    """Returns the revision the database is at (None for an empty database)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def _lock_for_migration(conn: sa.Connection) -> None:
    """Makes ``conn``'s transaction the only one migrating this database until it ends.

    Replicas that start together all run :func:`upgrade`; without this, two of them read
    the same old revision and the second fails creating what the first created. The
    waiting one then reads the revision the first one committed and has nothing to do.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
    elif conn.dialect.name == "sqlite":
        # pysqlite starts no transaction before DDL, so without this each statement of a
        # migration would commit on its own; IMMEDIATE takes the write lock up front.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


class MigrationError(RuntimeError):
    """A migration would leave the database inconsistent; it was rolled back."""


def _run(engine: sa.Engine, alembic_command, revision: str) -> None:
    config = _alembic_config()
    with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            # SQLite alters a table by copying it and dropping the original; with foreign
            # keys enforced that drop deletes every row referencing it (ON DELETE CASCADE).
            # The pragma cannot change inside a transaction, so it is set before one.
            enforced = conn.exec_driver_sql("PRAGMA foreign_keys").scalar()
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.commit()
        try:
            with conn.begin():
                _lock_for_migration(conn)
                before = MigrationContext.configure(conn).get_current_revision()
                config.attributes["connection"] = conn
                alembic_command(config, revision)
                after = MigrationContext.configure(conn).get_current_revision()
                if sqlite:
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
                    if broken:
                        raise MigrationError(
                            f"migrating to {revision} would break {len(broken)} foreign "
                            f"key(s), first in table {broken[0][0]}; rolled back")
        finally:
            if sqlite:
                conn.exec_driver_sql(f"PRAGMA foreign_keys={'ON' if enforced else 'OFF'}")
                conn.commit()
    if before != after:
        logger.info("database migrated from %s to %s", before or "empty", after or "empty")


def upgrade(engine: sa.Engine, revision: str = "head") -> None:
    """Upgrades the database behind ``engine`` to ``revision`` in one transaction.

    Concurrent calls on one database (several processes starting at once) take turns.

    Raises:
        MigrationError: on SQLite, if the result would violate a foreign key.
        sqlalchemy.exc.SQLAlchemyError: if the database refuses a step (nothing applied).
    """
    _run(engine, command.upgrade, revision)


def downgrade(engine: sa.Engine, revision: str) -> None:
    """Downgrades the database behind ``engine`` to ``revision`` (``base`` empties it).

    One transaction, like :func:`upgrade`, with the same errors.
    """
    _run(engine, command.downgrade, revision)
