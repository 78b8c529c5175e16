"""A throwaway PostgreSQL server for the web-app tests.

Debian's ``postgresql`` package ships the server binaries in
``/usr/lib/postgresql/<version>/bin`` (not on ``PATH``). :class:`PostgresServer` runs
``initdb`` into a fresh temporary directory, starts the server there with ``pg_ctl`` on a
free loopback port (password authentication, a random password), hands out one empty
database per test and removes everything on :meth:`PostgresServer.stop`.

PostgreSQL refuses to run as root. Under root (CI on a fresh Debian) the server runs as the
``postgres`` system user the Debian package creates, through ``runuser``; the temporary
directory is created in the system temp dir and given to that user.

Tests that cannot have a server skip with :func:`unavailable_reason`.
"""

import glob
import itertools
import logging
import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
from typing import List, Optional

import sqlalchemy as sa

from koa.processes import free_port

logger = logging.getLogger(__name__)

# The server binaries a cluster needs; Debian's /usr/bin has only wrappers for some.
_BINARIES = ("initdb", "pg_ctl", "postgres")
_RUN_AS = "postgres"
_SUPERUSER = "koa_test"
_START_SECONDS = 60


def _version_key(path: str) -> tuple:
    numbers = re.findall(r"\d+", path)
    return tuple(int(n) for n in numbers)


def find_bin_dir() -> Optional[str]:
    """The directory with ``initdb``, ``pg_ctl`` and ``postgres``, newest version first.

    Looks at ``$KOA_POSTGRES_BIN``, then beside ``pg_ctl`` on ``PATH``, then Debian's
    ``/usr/lib/postgresql/<version>/bin``. Returns None when none has all three.
    """
    candidates: List[str] = []
    if os.environ.get("KOA_POSTGRES_BIN"):
        candidates.append(os.environ["KOA_POSTGRES_BIN"])
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(os.path.dirname(os.path.realpath(on_path)))
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    for directory in candidates:
        if all(os.access(os.path.join(directory, name), os.X_OK) for name in _BINARIES):
            return directory
    return None


def _driver_missing() -> Optional[str]:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "the PostgreSQL driver psycopg is not installed (requirements.txt)"
    return None


def unavailable_reason() -> Optional[str]:
    """Why no test server can be started here, or None when it can."""
    missing = _driver_missing()
    if missing:
        return missing
    if find_bin_dir() is None:
        return ("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: install "
                "Debian's 'postgresql' package (.ci/run does) or set KOA_POSTGRES_BIN")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(_RUN_AS)
        except KeyError:
            return (f"running as root and there is no '{_RUN_AS}' user to run the PostgreSQL "
                    "server as (PostgreSQL refuses root)")
        if shutil.which("runuser") is None:
            return "running as root and 'runuser' (util-linux) is missing"
    return None


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory, listening on 127.0.0.1.

    Args:
        bin_dir: Directory holding ``initdb``, ``pg_ctl`` and ``postgres``
            (:func:`find_bin_dir`).

    Raises:
        RuntimeError: from :meth:`start` when ``initdb`` or ``pg_ctl`` fails; the message
            carries the tool's output and the server log.
    """

    def __init__(self, bin_dir: str):
        self.bin_dir = bin_dir
        self.port = 0
        self._password = secrets.token_urlsafe(18)
        self._root: Optional[str] = None
        self._admin: Optional[sa.Engine] = None
        self._names = itertools.count(1)
        self._owner = pwd.getpwnam(_RUN_AS) if os.geteuid() == 0 else None

    @property
    def data_dir(self) -> str:
        return os.path.join(self._root, "data")

    @property
    def log_path(self) -> str:
        return os.path.join(self._root, "server.log")

    def _run(self, tool: str, *args: str) -> None:
        argv = [os.path.join(self.bin_dir, tool), *args]
        if self._owner is not None:
            argv = ["runuser", "-u", self._owner.pw_name, "--", *argv]
        # cwd: the server user may not be allowed into the caller's working directory.
        done = subprocess.run(argv, cwd=self._root, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(
                f"{tool} failed with status {done.returncode}: {done.stderr.strip()}"
                f"{self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return "\nserver log:\n" + f.read()[-3000:]
        except OSError:
            return ""

    def start(self) -> "PostgresServer":
        """Creates the cluster and starts the server; returns self."""
        # The system temp dir, not pytest's: the server user must be able to reach it.
        self._root = tempfile.mkdtemp(prefix="koa-postgres-")
        password_file = os.path.join(self._root, "password")
        with open(password_file, "w", encoding="utf-8") as f:
            f.write(self._password + "\n")
        os.chmod(password_file, 0o600)
        if self._owner is not None:
            for path in (self._root, password_file):
                os.chown(path, self._owner.pw_uid, self._owner.pw_gid)
        self._run("initdb", "--pgdata", self.data_dir, "--username", _SUPERUSER,
                  "--pwfile", password_file, "--auth", "scram-sha-256",
                  "--encoding", "UTF8", "--locale", "C", "--no-sync")
        os.remove(password_file)
        self.port = free_port()
        # Throwaway data: no fsync, no full-page writes; the socket stays in the temp dir.
        options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} "
                   f"-c unix_socket_directories={self._root} "
                   "-c fsync=off -c full_page_writes=off -c synchronous_commit=off")
        self._run("pg_ctl", "--pgdata", self.data_dir, "--log", self.log_path,
                  "--options", options, "--wait", "--timeout", str(_START_SECONDS), "start")
        self._admin = sa.create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT",
                                       poolclass=sa.pool.NullPool)
        logger.info("PostgreSQL test server on port %d (%s)", self.port, self._root)
        return self

    def url(self, database: str) -> str:
        """The SQLAlchemy URL (psycopg 3 driver) of ``database`` on this server."""
        return sa.URL.create("postgresql+psycopg", username=_SUPERUSER, password=self._password,
                             host="127.0.0.1", port=self.port,
                             database=database).render_as_string(hide_password=False)

    def create_database(self) -> str:
        """Creates an empty database; returns its URL."""
        name = f"koa_test_{next(self._names)}"
        with self._admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drops the database behind ``url``, closing any connection still open to it."""
        name = sa.make_url(url).database
        with self._admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        """Stops the server (fast shutdown) and deletes its directory."""
        if self._root is None:
            return
        if self._admin is not None:
            self._admin.dispose()
        try:
            if os.path.exists(os.path.join(self.data_dir, "postmaster.pid")):
                self._run("pg_ctl", "--pgdata", self.data_dir, "--mode", "fast", "--wait", "stop")
        finally:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None
