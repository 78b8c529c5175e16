"""Command line of the web app: serve it, migrate its database, create accounts.

Entry points:
    ``serve_main(argv)``  - what ``koa web`` runs: migrate, then serve with waitress.
    ``main(argv)``        - ``python -m webapp {serve,upgrade-db,create-admin,create-user}``.
"""

import argparse
import getpass
import logging
import sys
from typing import Optional, Sequence

import sqlalchemy as sa
from flask import Flask

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000
DEFAULT_THREADS = 8


class CommandError(RuntimeError):
    """A command cannot do what was asked; the message says why."""


def upgrade_database(app: Flask) -> str:
    """Applies pending migrations to the app's database; returns the revision reached."""
    from webapp import db, migrate

    engine = db.engine_of(app)
    migrate.upgrade(engine)
    return migrate.current_revision(engine)


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        if not sys.stdin.isatty():
            raise CommandError(
                "no terminal to ask for the password: pass --password-stdin and pipe it in"
            )
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat password: ") != password:
            raise CommandError("the two passwords differ")
    if not password:
        raise CommandError("the password is empty")
    return password


def create_account(app: Flask, username: str, password: str, role: str):
    """Creates an account in the app's (migrated) database.

    Raises:
        CommandError: if the database is not migrated, the name is taken or the
            password/role is not acceptable.
    """
    from webapp import db, migrate
    from webapp.users import UserExistsError, create_user

    if migrate.current_revision(db.engine_of(app)) != migrate.head_revision():
        raise CommandError("the database is not up to date: run 'upgrade-db' first")
    with app.app_context():
        try:
            return create_user(db.get_session(), username, password, role)
        except (UserExistsError, ValueError) as e:
            raise CommandError(str(e)) from e


def count_users(app: Flask) -> int:
    """Number of accounts in the app's database."""
    from webapp import db
    from webapp.models import User

    with app.app_context():
        return db.get_session().scalar(sa.select(sa.func.count()).select_from(User))


def _serve_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(
        prog="koa web", description="Serve the clinician web UI with waitress."
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="worker threads")
    return parser


def _serve(args: argparse.Namespace) -> int:
    import waitress

    from webapp import create_app, serving_gateway

    app = create_app()
    revision = upgrade_database(app)
    logger.info("database at revision %s", revision)
    if count_users(app) == 0:
        logger.warning(
            "no accounts yet: create the first admin with "
            "'python -m webapp create-admin --username NAME'"
        )
    url_host = "localhost" if args.host in ("127.0.0.1", "0.0.0.0", "::") else args.host
    logger.info(
        "web UI on http://%s:%d/ (model server %s, model %s)",
        url_host,
        args.port,
        app.config["KOA_SERVING_TARGET"],
        app.config["KOA_MODEL_NAME"],
    )
    try:
        waitress.serve(app, host=args.host, port=args.port, threads=args.threads, ident="koa-web")
    finally:
        serving_gateway.close_client(app)
    return 0


def _log_database_error(e: Exception) -> None:
    # The driver's own message (unreachable host, refused password) without SQLAlchemy's
    # statement dump; neither carries the password of DATABASE_URL.
    reason = getattr(e, "orig", None) or e
    logger.error("cannot use the database of DATABASE_URL: %s", str(reason).strip())


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def serve_main(argv: Optional[Sequence[str]] = None) -> int:
    """``koa web``: migrate the database, then serve the UI until interrupted.

    Args:
        argv: Arguments after ``koa web`` (``--host``, ``--port``, ``--threads``).

    Returns:
        Process exit code.
    """
    _setup_logging()
    args = _serve_parser().parse_args(argv)
    from webapp.migrate import MigrationError
    from webapp.settings import SettingsError

    try:
        return _serve(args)
    except SettingsError as e:
        logger.error("%s", e)
        return 2
    except (sa.exc.OperationalError, MigrationError) as e:
        _log_database_error(e)
        return 2


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m webapp``: serve, upgrade-db, create-admin or create-user."""
    _setup_logging()
    parser = argparse.ArgumentParser(prog="python -m webapp", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    _serve_parser(commands.add_parser("serve", help="migrate and serve the UI"))
    commands.add_parser("upgrade-db", help="apply database migrations")
    for name, role in (("create-admin", "admin"), ("create-user", None)):
        sub = commands.add_parser(name, help=f"create {'an admin' if role else 'an'} account")
        sub.add_argument("--username", required=True)
        sub.add_argument("--password-stdin", action="store_true", help="read password from stdin")
        if role is None:
            sub.add_argument("--role", choices=("clinician", "admin"), default="clinician")
    args = parser.parse_args(argv)

    from webapp import create_app
    from webapp.migrate import MigrationError
    from webapp.settings import SettingsError

    try:
        if args.command == "serve":
            return _serve(args)
        app = create_app()
        if args.command == "upgrade-db":
            print(f"database at revision {upgrade_database(app)}")
            return 0
        role = "admin" if args.command == "create-admin" else args.role
        user = create_account(app, args.username, _read_password(args.password_stdin), role)
        print(f"{role} {user.username} created")
        return 0
    except (SettingsError, CommandError) as e:
        logger.error("%s", e)
        return 2
    except (sa.exc.OperationalError, MigrationError) as e:
        _log_database_error(e)
        return 2
