"""Real PostgreSQL for the tests: a server to use for the run, and throwaway clusters.

``find_postgres`` picks the server: ``$GITLAB2TRELLO_TEST_DATABASE_URL`` when set, else the one
on 127.0.0.1:5432 when it lets user ``postgres`` in, else a ``PgCluster`` started for the run.
Each test then gets a fresh database on it (``create_database``/``drop_database``).

A ``PgCluster`` runs Debian's binaries (/usr/lib/postgresql/<version>/bin) in a temporary folder,
on a free port of 127.0.0.1, with trust authentication and fsync on. initdb and postgres refuse
to run as root, so under root the cluster belongs to an unprivileged system user.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

import psycopg
from psycopg import sql

ENV_URL = "GITLAB2TRELLO_TEST_DATABASE_URL"
LOCAL_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_ROOT = Path("/usr/lib/postgresql")
CLUSTER_USER = "g2t-pgtest"
HOW_TO_PROVIDE = (
    f"set {ENV_URL}=postgresql://user:pass@host:port/dbname (a role that may CREATE DATABASE), "
    "or install Debian's postgresql (`make postgres`, as root)"
)
START_TIMEOUT = 30  # seconds, for pg_ctl start and stop
SETTINGS = """
# gitlab2trello tests
listen_addresses = '127.0.0.1'
unix_socket_directories = '{sockets}'
fsync = on
synchronous_commit = on
shared_buffers = 16MB
max_connections = 50
logging_collector = off
"""

_counter = itertools.count(1)


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server can be had for the tests."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def find_bindir() -> Path | None:
    """The bin folder of the newest PostgreSQL under /usr/lib/postgresql, or None."""
    versions = [p.parent for p in PG_ROOT.glob("*/bin/initdb") if p.parent.parent.name.isdigit()]
    return max(versions, key=lambda p: int(p.parent.name)) if versions else None


def cluster_user() -> str | None:
    """The user that owns clusters: None (this one) unless root, else an unprivileged one."""
    if os.geteuid() != 0:
        return None
    for _ in range(2):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(CLUSTER_USER).pw_name
        # Another test process may be creating it at the same moment: look again afterwards.
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                CLUSTER_USER,
            ],
            capture_output=True,
        )
    return "nobody"


def redact(url: str) -> str:
    """The URL with its password hidden, for messages."""
    return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", url)


def check_server(url: str) -> None:
    """Connect to ``url``; raise psycopg.Error or PostgresUnavailable when it is unusable."""
    with psycopg.connect(url, connect_timeout=2) as conn:
        version = conn.info.server_version
    if version < 130000:  # DROP DATABASE ... WITH (FORCE)
        raise PostgresUnavailable(f"{redact(url)} runs PostgreSQL {version}; the tests need >= 13")


class PgCluster:
    """A throwaway PostgreSQL cluster in a temporary folder, removed by ``close()``."""

    def __init__(self) -> None:
        bindir = find_bindir()
        if bindir is None:
            raise PostgresUnavailable(f"no {PG_ROOT}/<version>/bin/initdb; {HOW_TO_PROVIDE}")
        self.bindir = bindir
        self.user = cluster_user()
        self.root = Path(tempfile.mkdtemp(prefix="g2t-pg-"))
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.port = free_port()
        self._started = False  # once it has been, the port (and so the URL) stays
        try:
            if self.user is not None:
                os.chmod(self.root, 0o700)
                shutil.chown(self.root, self.user, pwd.getpwnam(self.user).pw_gid)
            initdb = "-U postgres -A trust -E UTF8 --locale=C --no-instructions"
            self._run("initdb", "-D", self.data, *initdb.split())
            with (self.data / "postgresql.conf").open("a", encoding="utf-8") as conf:
                conf.write(SETTINGS.format(sockets=self.root))
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    def _run(self, program: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
        """Run one of the cluster's programs as its user; raise PostgresUnavailable on failure."""
        command = [str(self.bindir / program), *map(str, args)]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        done = subprocess.run(
            command, cwd=self.root, capture_output=True, text=True, timeout=START_TIMEOUT + 10
        )
        if done.returncode != 0:
            log = (
                self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
            )
            raise PostgresUnavailable(
                f"{program} failed ({done.returncode}): {done.stdout}{done.stderr}{log}".strip()
            )
        return done

    def _pg_ctl(self, action: str, *args: str | Path) -> None:
        """pg_ctl ``action``, waiting (bounded) for the server to be up or down."""
        self._run("pg_ctl", action, "-D", self.data, "-w", "-t", str(START_TIMEOUT), *args)

    @property
    def running(self) -> bool:
        """Whether the cluster's postmaster is alive."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, ValueError, IndexError):
            return False
        return state not in ("Z", "X")  # a zombie is dead

    def start(self) -> None:
        """Start the server and return once it accepts connections."""
        if self.running:
            return
        for attempt in range(3):
            try:
                self._pg_ctl("start", "-l", self.log_path, "-o", f"-p {self.port}")
                break
            except PostgresUnavailable as exc:  # another process took the port meanwhile
                if self._started or attempt == 2 or "could not bind" not in str(exc):
                    raise
                self.port = free_port()
        self._started = True
        deadline = time.monotonic() + START_TIMEOUT
        while True:  # pg_ctl -w waited for "ready"; make sure it is so over TCP too
            try:
                psycopg.connect(self.url(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (pg_ctl mode smart, fast or immediate) and wait until it is down."""
        if self.running:
            self._pg_ctl("stop", "-m", mode)

    def restart(self) -> None:
        """Stop the server cleanly, then start it again on the same port."""
        self.stop()
        self.start()

    def kill(self) -> None:
        """Stop the server abruptly (immediate mode: no checkpoint, crash recovery at start)."""
        self.stop("immediate")

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def close(self) -> None:
        """Stop the server and remove the cluster's folder."""
        try:
            self.kill()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def find_postgres() -> tuple[str, Callable[[], None]]:
    """The admin URL of the server for this run, and what stops it (a no-op unless started)."""
    url = os.environ.get(ENV_URL)
    if url:
        try:
            check_server(url)
        except psycopg.Error as exc:
            raise PostgresUnavailable(f"{ENV_URL}={redact(url)} is unusable: {exc}") from exc
        return url, lambda: None
    with contextlib.suppress(psycopg.Error, PostgresUnavailable):
        check_server(LOCAL_URL)
        return LOCAL_URL, lambda: None
    try:
        cluster = PgCluster()
    except (PostgresUnavailable, OSError, subprocess.SubprocessError) as exc:
        raise PostgresUnavailable(
            f"no PostgreSQL for the tests: nothing at {LOCAL_URL} and no cluster could be made "
            f"({exc}); {HOW_TO_PROVIDE}"
        ) from exc
    try:
        cluster.start()
    except (PostgresUnavailable, OSError, subprocess.SubprocessError, psycopg.Error) as exc:
        cluster.close()
        raise PostgresUnavailable(
            f"no PostgreSQL for the tests: a throwaway cluster would not start ({exc}); "
            f"{HOW_TO_PROVIDE}"
        ) from exc
    return cluster.url(), cluster.close


def create_database(admin_url: str, name: str | None = None) -> str:
    """Create a database (by default with a name unique to this process and call); its URL."""
    name = name or f"g2t_{os.getpid()}_{next(_counter)}_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return urlsplit(admin_url)._replace(path=f"/{name}").geturl()


def drop_database(admin_url: str, url: str) -> None:
    """Drop the database ``url`` names, closing whatever connections it still has."""
    name = urlsplit(url).path.lstrip("/")
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
