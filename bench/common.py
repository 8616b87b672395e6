"""What every benchmark shares: options, report sections, the machine, processes, services.

The bridge runs exactly as the integration tests run it (``tests.conftest.Service``: real uWSGI
with ``deploy/uwsgi-base.ini``, its own process group, a generated configuration), with the
production values of the settings the tests shorten. Trello is ``tests.trello_emulator`` on
loopback. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import platform
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import requests

from tests import postgres
from tests.conftest import ROOT, UWSGI, Service, free_port, issue_payload, stop_group
from tests.nginx import Nginx
from tests.trello_emulator import TrelloEmulator

BENCH_DIR = Path(__file__).resolve().parent
NGINX = Path("/usr/sbin/nginx")
HOST = "127.0.0.1"

# The tests shorten these; the benchmarks measure the values the service ships with.
PRODUCTION_SETTINGS: dict[str, dict[str, Any]] = {
    "worker": {"poll_interval": 0.2, "retry_initial_wait": 1, "retry_max_wait": 300},
    "trello": {"read_timeout": 10, "connect_timeout": 3.05},
}
# Large enough that neither the emulator nor the bridge's pacer limits a benchmark that is not
# about the rate limit.
UNLIMITED = 1_000_000


# ---------------------------------------------------------------------------- options


@dataclass
class Options:
    """How long to measure, where to put files, and figures shared between benchmarks."""

    quick: bool
    workdir: Path
    duration: float = 4.0  # seconds of one slice of a throughput measurement
    slices: int = 3  # a figure is the median of this many slices, interleaved with its baseline
    warmup: float = 2.0
    shared: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def make(cls, quick: bool, workdir: Path) -> Options:
        if quick:
            return cls(quick=True, workdir=workdir, duration=4.0, slices=1, warmup=1.0)
        return cls(quick=False, workdir=workdir)

    @property
    def measure_seconds(self) -> float:
        """Length of a measurement that is not sliced."""
        return self.duration * self.slices

    def subdir(self, name: str) -> Path:
        path = self.workdir / name
        suffix = 1
        while path.exists():
            suffix += 1
            path = self.workdir / f"{name}{suffix}"
        path.mkdir(parents=True)
        return path


# ---------------------------------------------------------------------------- report


@dataclass(frozen=True)
class Target:
    """A figure and the bound it should meet; printed as met or not, never asserted."""

    what: str
    value: float | None
    op: str  # "<", "<=" or ">="
    limit: float
    unit: str = ""
    digits: int = 2

    @property
    def met(self) -> bool:
        if self.value is None:
            return False
        if self.op == "<":
            return self.value < self.limit
        if self.op == "<=":
            return self.value <= self.limit
        if self.op == ">=":
            return self.value >= self.limit
        raise ValueError(self.op)

    def row(self) -> list[str]:
        value = "n/a" if self.value is None else f"{self.value:.{self.digits}f}{self.unit}"
        limit = f"{self.op} {self.limit:g}{self.unit}"
        return [self.what, value, limit, "met" if self.met else "NOT met"]


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Section:
    """One benchmark's results: tables, targets and notes."""

    name: str
    title: str
    tables: list[Table] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    meta: str = ""
    elapsed: float = 0.0

    def markdown(self) -> str:
        lines = [f"<!-- bench:{self.name} start -->", f"## {self.name}: {self.title}", ""]
        if self.meta:
            lines += [f"_{self.meta}_", ""]
        for table in self.tables:
            if table.caption:
                lines += [table.caption, ""]
            lines += markdown_table(table.columns, table.rows) + [""]
        if self.targets:
            lines += ["Targets:", ""]
            lines += markdown_table(
                ["target", "measured", "bound", "result"], [t.row() for t in self.targets]
            )
            lines.append("")
        lines += [f"- {note}" for note in self.notes]
        if self.notes:
            lines.append("")
        lines.append(f"<!-- bench:{self.name} end -->")
        return "\n".join(lines)


def markdown_table(columns: list[str], rows: list[list[str]]) -> list[str]:
    widths = [len(c) for c in columns]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return [line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [
        line(row) for row in rows
    ]


SECTION_RE = re.compile(r"<!-- bench:(\w+) start -->.*?<!-- bench:\1 end -->", re.S)
ORDER = ("ack", "pg", "profile", "seed", "pace", "calls", "memory", "soak")


def write_results(path: Path, sections: list[Section], header: str) -> None:
    """Write ``sections`` into ``path``, keeping sections of benchmarks not run this time."""
    kept: dict[str, str] = {}
    if path.exists():
        for match in SECTION_RE.finditer(path.read_text(encoding="utf-8")):
            kept[match.group(1)] = match.group(0)
    for section in sections:
        kept[section.name] = section.markdown()
    names = [n for n in ORDER if n in kept] + sorted(n for n in kept if n not in ORDER)
    body = header + "\n\n" + "\n\n".join(kept[n] for n in names) + "\n"
    path.write_text(body, encoding="utf-8")


def fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


# ---------------------------------------------------------------------------- the machine


def _version(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "missing"
    text = (done.stdout or done.stderr).strip().splitlines()
    return text[0] if text else "?"


def machine() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": model,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "uwsgi": _version([str(UWSGI), "--version"]),
        "wrk": _version(["wrk", "--version"]).split(" [")[0],
        "nginx": _version([str(NGINX), "-v"]).replace("nginx version: ", ""),
    }


def machine_line(info: dict[str, str]) -> str:
    return (
        f"{info['nproc']} CPUs ({info['cpu']}), {info['kernel']}, Python {info['python']}, "
        f"uWSGI {info['uwsgi']}, {info['wrk']}, {info['nginx']}"
    )


def now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


# ---------------------------------------------------------------------------- processes


def uwsgi_pids(log_text: str) -> dict[str, int]:
    """master / worker N / mule N -> pid, from uWSGI's start-up lines (the latest spawn wins)."""
    pids: dict[str, int] = {}
    for match in re.finditer(r"spawned uWSGI master process \(pid: (\d+)\)", log_text):
        pids["master"] = int(match.group(1))
    for match in re.finditer(r"spawned uWSGI (worker|mule) (\d+) \(pid: (\d+)", log_text):
        pids[f"{match.group(1)} {match.group(2)}"] = int(match.group(3))
    return pids


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM and friends of one process, in kB (empty when it is gone)."""
    values: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    except OSError:
        return values
    for line in text.splitlines():
        if line.startswith("Vm") and line.endswith(" kB"):
            name, rest = line.split(":", 1)
            values[name] = int(rest.split()[0])
    return values


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of one process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


# ---------------------------------------------------------------------------- Trello


@dataclass
class Trello:
    """The emulator with one board and its "To Do" list, as the tests' fixture seeds it."""

    emulator: TrelloEmulator
    board_id: str
    list_id: str

    def settings(self, **trello: Any) -> dict[str, dict[str, Any]]:
        values = {
            "api_url": self.emulator.url,
            "key": self.emulator.key,
            "token": self.emulator.token,
            "list_id": self.list_id,
            **trello,
        }
        return {"trello": values}

    def card_calls(self) -> int:
        """Calls that act on cards, one by one (the per-event cost)."""
        return self.emulator.count_calls(path_prefix="/cards")

    def board_calls(self) -> int:
        """Calls that read a list or a board or create a board's label (cached by the worker)."""
        return self.emulator.count_calls(path_prefix="/lists") + self.emulator.count_calls(
            path_prefix="/boards"
        )

    def stop(self) -> None:
        self.emulator.stop()


def start_trello(latency: float = 0.0, rate_limit: int = 100) -> Trello:
    emulator = TrelloEmulator(latency=latency, rate_limit=rate_limit, key_rate_limit=UNLIMITED)
    emulator.start()
    board = emulator.add_board("Widgets")
    todo = emulator.add_list(board["id"], "To Do")
    emulator.add_list(board["id"], "Done")
    return Trello(emulator, board["id"], todo["id"])


# ---------------------------------------------------------------------------- the bridge


def merge(*parts: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for part in parts:
        for section, values in part.items():
            merged.setdefault(section, {}).update(values)
    return merged


class Bridge(Service):
    """The service under uWSGI; optionally also on a uwsgi-protocol socket for nginx.

    Its store is a SQLite file in ``workdir`` unless ``database_url`` names a PostgreSQL
    database (which several bridges may share). ``root`` is the project folder whose code and
    ``deploy/uwsgi-base.ini`` it runs: this checkout unless told (another commit's export).
    """

    def __init__(
        self,
        workdir: Path,
        settings: dict[str, dict[str, Any]],
        *,
        uwsgi_socket: bool = False,
        database_url: str | None = None,
        root: Path = ROOT,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        store = {"store": {"database": database_url}} if database_url else {}
        super().__init__(workdir, merge(PRODUCTION_SETTINGS, settings, store))
        self.database_url = database_url
        self.root = root
        self.uwsgi_port: int | None = None
        if uwsgi_socket:
            self.uwsgi_port = free_port()
            self.socket_args = [*self.socket_args, "--uwsgi-socket", f"{HOST}:{self.uwsgi_port}"]

    def start(self, wait: bool = True) -> Bridge:
        super().start(wait)
        return self

    def pids(self) -> dict[str, int]:
        return uwsgi_pids(self.log())

    def pending(self) -> int | None:
        try:
            return int(self.health()["pending"])
        except (requests.RequestException, ValueError, KeyError):
            return None

    def drain(self, timeout: float) -> bool:
        """Wait until no delivery is pending; False when ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pending() == 0:
                return True
            time.sleep(0.1)
        return False

    def metric(self, name: str, **labels: str) -> float:
        """The sum of this instance's samples of one metric (``/metrics``) with these labels."""
        total = 0.0
        text = requests.get(self.url + "/metrics", timeout=10).text
        for line in text.splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            sample, value = line.rsplit(" ", 1)
            if all(f'{key}="{want}"' in sample for key, want in labels.items()):
                total += float(value)
        return total

    def db(self) -> sqlite3.Connection:
        """The SQLite store, opened read-only."""
        return sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=10)

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of one read of the store, SQLite or PostgreSQL (``?`` marks the arguments)."""
        if self.database_url:
            with psycopg.connect(self.database_url, connect_timeout=5) as conn:
                return conn.execute(sql.replace("?", "%s"), args).fetchall()
        with contextlib.closing(self.db()) as conn:
            return conn.execute(sql, args).fetchall()

    def stored_ids(self, prefix: str) -> set[int]:
        """Ids of the deliveries whose Idempotency-Key starts with ``prefix``."""
        low = "key:" + prefix
        if self.database_url:  # LIKE, not a range: the database's collation may skip "-"
            escaped = low.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            rows = self.query("SELECT id FROM deliveries WHERE dedupe_key LIKE ?", (escaped + "%",))
        else:
            high = low[:-1] + chr(ord(low[-1]) + 1)
            rows = self.query(
                "SELECT id FROM deliveries WHERE dedupe_key >= ? AND dedupe_key < ?", (low, high)
            )
        return {int(row[0]) for row in rows}

    def count(self, where: str = "") -> int:
        return int(self.query(f"SELECT COUNT(*) FROM deliveries {where}")[0][0])


@contextlib.contextmanager
def running(*things: Any) -> Iterator[None]:
    """Stop every started thing (bridges, nginx, emulators) at the end, whatever happens."""
    try:
        yield
    finally:
        for thing in reversed(things):
            with contextlib.suppress(Exception):
                thing.stop()


# ---------------------------------------------------------------------------- other servers


def production_nginx(workdir: Path, upstream_port: int | Sequence[int]) -> Nginx:
    """nginx serving a shipped site file, access log off.

    One port: deploy/nginx-gitlab2trello.conf in front of one instance; several:
    deploy/nginx-gitlab2trello-upstream.conf with its upstream's instances moved to them.
    """
    return Nginx(str(NGINX), workdir, upstream_port, access_log=False)


class Postgres:
    """Fresh databases on the PostgreSQL ``tests.postgres.find_postgres`` picks.

    ``stop()`` drops every one made (with whatever connections they still have), and stops the
    server when it was started for this run.
    """

    def __init__(self) -> None:
        self.admin_url, self._stop = postgres.find_postgres()
        self.made: list[str] = []

    def database(self) -> str:
        """The URL of a new, empty database."""
        self.made.append(postgres.create_database(self.admin_url))
        return self.made[-1]

    def stop(self) -> None:
        try:
            for url in self.made:
                with contextlib.suppress(psycopg.Error):
                    postgres.drop_database(self.admin_url, url)
        finally:
            self._stop()


class UwsgiApp:
    """Any WSGI module under uWSGI with the bridge's process settings and no mule."""

    SETTINGS = """[uwsgi]
strict = true
chdir = {root}
pythonpath = {root}
module = {module}
need-app = true
master = true
die-on-term = true
lazy-apps = true
processes = 2
threads = 8
enable-threads = true
harakiri = 20
limit-post = 4194304
buffer-size = 32768
post-buffering = 65536
vacuum = true
single-interpreter = true
log-date = true
"""

    def __init__(self, workdir: Path, module: str, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.module = module
        self.env = env
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> UwsgiApp:
        ini = self.workdir / "uwsgi.ini"
        ini.write_text(self.SETTINGS.format(root=ROOT, module=self.module), encoding="utf-8")
        log = (self.workdir / "uwsgi.log").open("ab")
        self.proc = subprocess.Popen(
            [str(UWSGI), "--ini", str(ini), "--http11-socket", f"{HOST}:{self.port}"],
            cwd=ROOT,
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        wait_http(self.url + "/hello/seed", self.proc, 30)
        return self

    def stop(self) -> None:
        stop_group(self.proc, grace=15)


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited {proc.returncode}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{url} not answering after {timeout} s")


# ---------------------------------------------------------------------------- deliveries

T0 = datetime(2026, 5, 4, 9, 12, 33, tzinfo=UTC)


def stamp(seconds: float) -> str:
    """GitLab's ``updated_at`` ``seconds`` after the fixture's."""
    moment = T0 + timedelta(seconds=seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


LABELS = {
    "bug": {"id": 301, "title": "bug", "color": "#d9534f"},
    "feature": {"id": 302, "title": "feature", "color": "#5cb85c"},
    "needs-review": {"id": 303, "title": "needs-review", "color": "#428bca"},
}


def payload(iid: int, *, at: float = 0.0, labels: tuple[str, ...] = ("bug",), **kw: Any) -> bytes:
    """Today's issue delivery (fixture 01) for issue ``iid``, as sent on the wire."""
    body = issue_payload(iid, updated_at=stamp(at), labels=[LABELS[n] for n in labels], **kw)
    return json.dumps(body).encode()


class Poster:
    """Sends deliveries to ``POST /issue`` and counts the answers; safe to share by threads.

    One connection per delivery, as GitLab sends them.
    """

    def __init__(self, url: str, prefix: str) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or HOST
        self.port = parts.port or 80
        self.prefix = prefix
        self.statuses: dict[int, int] = {}
        self._lock = threading.Lock()
        self._sent = 0

    def post(self, body: bytes, key: str | None = None) -> int:
        with self._lock:
            self._sent += 1
            key = key or f"{self.prefix}{self._sent}"
        headers = {
            "Content-Type": "application/json",
            "X-Gitlab-Event": "Issue Hook",
            "Idempotency-Key": key,
            "Connection": "close",
        }
        conn = http.client.HTTPConnection(self.host, self.port, timeout=15)
        try:
            conn.request("POST", "/issue", body, headers)
            answer = conn.getresponse()
            answer.read()
            status = answer.status
        except OSError:
            status = 0
        finally:
            conn.close()
        with self._lock:
            self.statuses[status] = self.statuses.get(status, 0) + 1
        return status

    @property
    def sent(self) -> int:
        return self._sent

    @property
    def failed(self) -> int:
        return sum(n for s, n in self.statuses.items() if not 200 <= s < 300)


def register_webhook(bridge: Bridge) -> None:
    """``gitlab2trello trello-webhook``: the bridge's Trello webhook, as two-way sync needs."""
    registered = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "trello-webhook"],
        capture_output=True,
        text=True,
        env={**os.environ, "GITLAB2TRELLO_CONFIG": str(bridge.config_path)},
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    if registered.returncode != 0:
        raise RuntimeError("trello-webhook failed:\n" + registered.stdout + registered.stderr)
