"""Fixtures that build on each other: payloads -> trello emulator -> service -> client.

The service under test is the real thing: uWSGI started the way ``make run`` starts it (same
``deploy/uwsgi-base.ini``), on a real SQLite file in a temporary folder, talking over HTTP to the
Trello emulator on loopback.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.trello_emulator import TrelloEmulator

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
UWSGI = Path(sys.executable).parent / "uwsgi"


def stop_group(
    proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, grace: float = 10
) -> None:
    """Ask a process to stop, wait ``grace`` seconds, then kill its whole process group."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def load_fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def issue_payload(
    iid: int = 1,
    *,
    title: str | None = None,
    action: str = "open",
    state: str | None = None,
    updated_at: str = "2026-05-04T09:12:33.418Z",
    project_id: int = 42,
    path: str = "acme/widget-api",
    **attrs: Any,
) -> dict[str, Any]:
    """Today's issue payload (fixture 01) with the given fields changed."""
    payload = copy.deepcopy(load_fixture("01-issue-open.json"))
    oa = payload["object_attributes"]
    oa.update(
        iid=iid,
        id=90000 + iid,
        title=title if title is not None else f"Issue number {iid}",
        action=action,
        state=state or ("closed" if action == "close" else "opened"),
        updated_at=updated_at,
        project_id=project_id,
        url=f"https://gitlab.example.com/{path}/-/issues/{iid}",
    )
    oa.update(attrs)
    payload["project"].update(
        id=project_id, path_with_namespace=path, web_url=f"https://gitlab.example.com/{path}"
    )
    if "labels" in attrs:
        payload["labels"] = attrs["labels"]
    return payload


class Service:
    """The bridge running under uWSGI in its own process group."""

    def __init__(self, workdir: Path, settings: dict[str, dict[str, Any]]) -> None:
        self.workdir = workdir
        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.database = workdir / "db" / "bridge.sqlite3"
        self.config_path = workdir / "config.ini"
        self.log_path = workdir / "service.log"
        self.root = ROOT  # the project folder whose code and deploy/uwsgi-base.ini run
        self.proc: subprocess.Popen[bytes] | None = None
        self.socket_args: list[str] = ["--http11-socket", f"127.0.0.1:{self.port}"]

    def write_config(self) -> None:
        sections: dict[str, dict[str, Any]] = {
            "store": {"database": str(self.database)},
            "server": {"metrics_dir": str(self.workdir / "metrics")},
            "worker": {"poll_interval": 0.05, "retry_initial_wait": 0.2, "retry_max_wait": 1},
            "trello": {"read_timeout": 2, "connect_timeout": 1},
        }
        for section, values in self.settings.items():
            sections.setdefault(section, {}).update(values)
        lines = []
        for section, values in sections.items():
            lines.append(f"[{section}]")
            lines += [f"{key} = {value}" for key, value in values.items()]
        self.config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def start(self, wait: bool = True) -> Service:
        self.write_config()
        env = {**os.environ, "GITLAB2TRELLO_CONFIG": str(self.config_path)}
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(UWSGI), "--ini", str(self.root / "deploy" / "uwsgi-base.ini"), *self.socket_args],
            cwd=self.root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited {self.proc.returncode}:\n{self.log()}")
            try:
                if requests.get(self.url + "/healthz", timeout=2).status_code in (200, 503):
                    return
            except requests.RequestException:  # not listening yet, or slow on a busy machine
                pass
            time.sleep(0.05)
        raise RuntimeError(f"service not ready after {timeout} s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        """Signal the master; wait for the whole process group to end."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self._kill_group()
            self._wait_port_free()

    def kill(self) -> None:
        """kill -9 of the whole service: master, web processes and worker at once."""
        if self.proc is not None:
            self._kill_group()
            self.proc.wait(10)
            self._wait_port_free()

    def _wait_port_free(self, timeout: float = 10) -> None:
        """Until the killed processes are gone and the port can be listened on again."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind(("127.0.0.1", self.port))
                    return
                except OSError:
                    time.sleep(0.05)

    def _kill_group(self) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def post(
        self,
        payload: dict[str, Any] | bytes,
        *,
        key: str | None = "auto",
        event: str | None = "Issue Hook",
        headers: dict[str, str] | None = None,
        timeout: float = 10,
    ) -> requests.Response:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        sent = {"Content-Type": "application/json"}
        if event is not None:
            sent["X-Gitlab-Event"] = event
        if key == "auto":
            sent["Idempotency-Key"] = str(uuid.uuid4())
        elif key is not None:
            sent["Idempotency-Key"] = key
        sent.update(headers or {})
        return requests.post(self.url + "/issue", data=body, headers=sent, timeout=timeout)

    def health(self) -> dict[str, Any]:
        return requests.get(self.url + "/healthz", timeout=5).json()

    def wait_idle(self, timeout: float = 30) -> dict[str, Any]:
        """Wait until no delivery is pending; return the final health."""
        deadline = time.monotonic() + timeout
        health: dict[str, Any] = {}
        while time.monotonic() < deadline:
            health = self.health()
            if health["pending"] == 0:
                return health
            time.sleep(0.1)
        raise AssertionError(f"deliveries still pending after {timeout} s: {health}\n{self.log()}")


def wait_for(condition: Callable[[], Any], timeout: float = 20, message: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out: {message}")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak", action="store_true", help="run the fault campaign at full length (make soak)"
    )


# never to be found in a log line or an answer body (tests configure these)
PG_PASSWORD = "s3cret-pg-pass"  # trust auth accepts it; it must never reach a log
KNOWN_SECRETS = (
    "ATTA" + "t" * 72,
    "hook-secret-value",
    "s3cret-token-value",
    "whsec_",
    PG_PASSWORD,
)


def with_password(url: str, password: str = PG_PASSWORD) -> str:
    """``url`` with ``password`` for its user (``postgresql://user:password@host...``)."""
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user.split(':', 1)[0]}:{password}@{host}"


@pytest.fixture
def trello() -> Iterator[TrelloEmulator]:
    """A Trello emulator with one board, lists "To Do" and "Done"."""
    emulator = TrelloEmulator().start()
    board = emulator.add_board("Widgets")
    emulator.board_id = board["id"]  # type: ignore[attr-defined]
    emulator.list_id = emulator.add_list(board["id"], "To Do")["id"]  # type: ignore[attr-defined]
    emulator.done_list_id = emulator.add_list(board["id"], "Done")["id"]  # type: ignore[attr-defined]
    yield emulator
    emulator.stop()


@pytest.fixture
def make_service(tmp_path: Path, trello: TrelloEmulator) -> Iterator[Callable[..., Service]]:
    """Start services wired to the emulator; every one is stopped at the end of the test."""
    started: list[Service] = []

    def make(settings: dict[str, dict[str, Any]] | None = None, start: bool = True) -> Service:
        base: dict[str, dict[str, Any]] = {
            "trello": {
                "api_url": trello.url,
                "key": trello.key,
                "token": trello.token,
                "list_id": trello.list_id,  # type: ignore[attr-defined]
            }
        }
        for section, values in (settings or {}).items():
            base.setdefault(section, {}).update(values)
        service = Service(tmp_path / f"svc{len(started)}", base)
        service.workdir.mkdir()
        started.append(service)
        return service.start() if start else service

    yield make
    for service in started:
        service.stop()
    for service in started:  # secrets never reach the service's log
        log = service.log()
        leaked = [secret[:6] + "..." for secret in KNOWN_SECRETS if secret in log]
        assert not leaked, f"secret in {service.log_path}: {leaked}"


@pytest.fixture
def service(make_service: Callable[..., Service]) -> Service:
    """The bridge under uWSGI, wired to the emulator, with no webhook secret."""
    return make_service()


# PostgreSQL: one server per test process (see tests/postgres.py), a fresh database per test.
from tests import postgres  # noqa: E402


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """Admin URL of the run's PostgreSQL; a cluster started for the run is stopped at the end."""
    url, stop = postgres.find_postgres()
    try:
        yield url
    finally:
        stop()


@pytest.fixture
def make_pg_url(postgres_server: str) -> Iterator[Callable[[], str]]:
    """Create fresh, empty databases; each call returns one's URL; all dropped after the test."""
    made: list[str] = []

    def make() -> str:
        made.append(postgres.create_database(postgres_server))
        return made[-1]

    yield make
    for url in made:
        postgres.drop_database(postgres_server, url)


@pytest.fixture
def pg_url(make_pg_url: Callable[[], str]) -> str:
    """URL of a fresh, empty database of its own for this test."""
    return make_pg_url()


@pytest.fixture
def pg_cluster() -> Iterator[postgres.PgCluster]:
    """A started PostgreSQL cluster of the test's own, to stop and restart; removed afterwards."""
    with postgres.PgCluster() as cluster:
        yield cluster
