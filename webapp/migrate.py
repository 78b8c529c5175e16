"""Applies the versioned Alembic migrations in ``webapp/migrations``.

The schema is never made with ``create_all``: ``koa web`` and ``python -m webapp
upgrade-db`` call :func:`upgrade`, which brings any database to the latest revision.
"""

import logging
import os
from typing import Optional

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

logger = logging.getLogger(__name__)

_MIGRATIONS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "migrations")


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", _MIGRATIONS_DIR)
    return config


def head_revision() -> str:
    """Returns the newest revision id shipped with the code."""
    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def current_revision(engine: sa.Engine) -> Optional[str]:
    """Returns the revision the database is at (None for an empty database)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: sa.Engine, revision: str = "head") -> None:
    """Upgrades the database behind ``engine`` to ``revision`` in one transaction."""
    before = current_revision(engine)
    config = _alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
    after = current_revision(engine)
    if before != after:
        logger.info("database migrated from %s to %s", before or "empty", after)


def downgrade(engine: sa.Engine, revision: str) -> None:
    """Downgrades the database behind ``engine`` to ``revision`` (``base`` empties it)."""
    config = _alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, revision)
