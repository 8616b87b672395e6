"""pg: how fast ``POST /issue`` is answered on PostgreSQL, one instance and two behind nginx.

Four fronts, measured in one run, each against ``GET /hello/x`` through the same front:

- SQLite: one instance on its file (group commit, as shipped), direct to uWSGI's HTTP socket;
- PostgreSQL, one instance, direct;
- the same instance behind nginx with the single-instance site (deploy/nginx-gitlab2trello.conf);
- PostgreSQL, two instances on one database behind nginx with the upstream site
  (deploy/nginx-gitlab2trello-upstream.conf, its two ``server`` lines moved to the instances).

Every PostgreSQL database is new for the run, on the server ``tests.postgres.find_postgres``
picks, and dropped at the end. No instance has Trello credentials, so their worker mules idle.

As in ack, a figure is the median of slices; within a slice hello then POST on the same front,
and the fronts take turns (in reverse order every other slice). After every POST slice the store
is read: every delivery id answered 2xx must be there. During every POST slice the CPU time of
each part (uWSGI web processes, worker mules, PostgreSQL, nginx, wrk) is read from /proc.
"""

from __future__ import annotations

import collections
import contextlib
import os
import resource
import statistics
import threading
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from bench.ack import SPAN, Cell, check_store, warm_up
from bench.common import (
    Bridge,
    Options,
    Postgres,
    Section,
    Table,
    Target,
    cpu_seconds,
    fmt,
    production_nginx,
    running,
)
from bench.load import LoadResult, run_wrk
from tests.nginx import Nginx

CONNECTIONS = 16
IDLE_TRELLO = {"trello": {"key": "", "token": "", "list_id": ""}}
PARTS = ("web", "mule", "postgres", "nginx", "wrk")


@dataclass
class Front:
    """One way of reaching the service, with its slices and the CPU its POST slices took."""

    key: str
    store: str
    instances: int
    front: str
    url: str
    bridge: Bridge  # the store check reads the store through it
    workdir: Path
    cell: Cell = field(init=False)
    cpu: dict[str, float] = field(default_factory=dict)
    busy: float = 0.0  # seconds of CPU the whole machine used during the POST slices
    post_seconds: float = 0.0
    waits: collections.Counter[str] = field(default_factory=collections.Counter)

    def __post_init__(self) -> None:
        self.cell = Cell(self.key, self.front, CONNECTIONS)

    @property
    def label(self) -> str:
        several = "s" if self.instances > 1 else ""
        return f"{self.store}, {self.instances} instance{several}"


# ---------------------------------------------------------------------------- CPU


def _children() -> dict[int, list[int]]:
    """Parent pid -> its children's pids, for every process on the machine."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text(encoding="utf-8")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _machine_busy() -> float:
    """CPU seconds the whole machine has spent not idle since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds used so far by each part of the set-up, to subtract one reading from another.

    PostgreSQL: the server's background processes and the backends of the run's databases
    (found through pg_stat_activity; not the backends of other databases on the same server).
    wrk: the children this process has waited for (the benchmark starts no other).
    """

    def __init__(self, pg: Postgres, bridges: list[Bridge], nginxes: list[Nginx]) -> None:
        self.databases = {url.rsplit("/", 1)[1] for url in pg.made}
        self.bridges = bridges
        self.nginxes = nginxes
        self.conn = psycopg.connect(pg.admin_url, autocommit=True, connect_timeout=5)
        self.postmaster: int | None = None
        backend = self.conn.execute("SELECT pg_backend_pid()").fetchone()
        with contextlib.suppress(OSError, TypeError, IndexError):  # a server on another host
            stat = Path(f"/proc/{backend[0]}/stat").read_text(encoding="utf-8")  # type: ignore[index]
            self.postmaster = int(stat.rsplit(")", 1)[1].split()[1])

    def close(self) -> None:
        self.conn.close()

    def read(self) -> tuple[dict[str, dict[int, float]], float]:
        """pid -> CPU seconds, by part; and the machine's busy seconds."""
        parts: dict[str, dict[int, float]] = {part: {} for part in PARTS}
        tree = _children()
        for bridge in self.bridges:
            for name, pid in bridge.pids().items():
                part = "web" if name.startswith("worker") else name.split()[0]
                if part in parts:
                    parts[part][pid] = cpu_seconds(pid) or 0.0
        for nginx in self.nginxes:
            if nginx.proc is not None:
                for pid in [nginx.proc.pid, *tree.get(nginx.proc.pid, [])]:
                    parts["nginx"][pid] = cpu_seconds(pid) or 0.0
        if self.postmaster is not None:
            rows = self.conn.execute(
                "SELECT pid FROM pg_stat_activity"
                " WHERE backend_type <> 'client backend' OR datname = ANY(%s)",
                (list(self.databases),),
            ).fetchall()
            ours = {row[0] for row in rows}
            for pid in [self.postmaster, *tree.get(self.postmaster, [])]:
                if pid == self.postmaster or pid in ours:
                    parts["postgres"][pid] = cpu_seconds(pid) or 0.0
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        parts["wrk"][0] = usage.ru_utime + usage.ru_stime
        return parts, _machine_busy()

    @staticmethod
    def used(
        before: tuple[dict[str, dict[int, float]], float],
        after: tuple[dict[str, dict[int, float]], float],
    ) -> tuple[dict[str, float], float]:
        """CPU seconds by part between two readings (a process new since ``before``: all of it)."""
        used = {
            part: sum(max(0.0, t - before[0][part].get(pid, 0.0)) for pid, t in pids.items())
            for part, pids in after[0].items()
        }
        return used, after[1] - before[1]


class WaitSampler:
    """What the run's PostgreSQL backends are waiting on, sampled every 50 ms while running.

    pg_stat_activity's wait_event_type:wait_event of each active backend of the run's
    databases ("CPU" when it waits on nothing), counted over the samples.
    """

    INTERVAL = 0.05

    def __init__(self, pg: Postgres) -> None:
        self.admin_url = pg.admin_url
        self.databases = [url.rsplit("/", 1)[1] for url in pg.made]
        self.counts: collections.Counter[str] = collections.Counter()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> WaitSampler:
        self.counts = collections.Counter()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _sample(self) -> None:
        with (
            contextlib.suppress(psycopg.Error),
            psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as conn,
        ):
            while not self._stop.wait(self.INTERVAL):
                for kind, event in conn.execute(
                    "SELECT wait_event_type, wait_event FROM pg_stat_activity"
                    " WHERE datname = ANY(%s) AND state = 'active' AND pid <> pg_backend_pid()",
                    (self.databases,),
                ):
                    self.counts[f"{kind}:{event}" if kind else "CPU"] += 1


# ---------------------------------------------------------------------------- the run


def run(options: Options) -> Section:
    section = Section(
        "pg",
        "POST /issue on PostgreSQL (one instance, two behind nginx) beside SQLite and GET /hello/x",
    )
    pg = Postgres()
    with running(pg):
        one_url, two_url = pg.database(), pg.database()
        root = options.subdir("pg")
        sqlite = Bridge(root / "sqlite", IDLE_TRELLO)
        one = Bridge(
            root / "pg-one",
            {**IDLE_TRELLO, "server": {"instance": "one"}},
            uwsgi_socket=True,
            database_url=one_url,
        )
        pair = [
            Bridge(
                root / f"pg-{name}",
                {**IDLE_TRELLO, "server": {"instance": name}},
                uwsgi_socket=True,
                database_url=two_url,
            )
            for name in ("a", "b")
        ]
        assert one.uwsgi_port and all(b.uwsgi_port for b in pair)
        nginx_one = production_nginx(root / "nginx-one", one.uwsgi_port)
        nginx_two = production_nginx(
            root / "nginx-two", [b.uwsgi_port for b in pair if b.uwsgi_port]
        )
        bridges = [sqlite, one, *pair]
        nginxes = [nginx_one, nginx_two]
        with running(*bridges, *nginxes):
            for thing in [*bridges, *nginxes]:
                thing.start()
            fronts = [
                Front("sqlite", "SQLite", 1, "direct", sqlite.url, sqlite, root / "sqlite"),
                Front("pg-one", "PostgreSQL", 1, "direct", one.url, one, root / "pg-one"),
                Front(
                    "pg-one-nginx", "PostgreSQL", 1, "nginx", nginx_one.url, one, root / "pg-one"
                ),
                Front("pg-two", "PostgreSQL", 2, "nginx", nginx_two.url, pair[0], root / "pg-a"),
            ]
            meter = CpuMeter(pg, bridges, nginxes)
            try:
                measure(fronts, meter, WaitSampler(pg), options)
            finally:
                meter.close()
            # the pair: how nginx shared the deliveries out (each instance counts its own)
            shares = [b.metric("gitlab2trello_deliveries_received_total") for b in pair]
    report(section, fronts, options, shares)
    return section


def measure(fronts: list[Front], meter: CpuMeter, waits: WaitSampler, options: Options) -> None:
    for front in fronts:
        warm_up(front.bridge, front.url, options, front.workdir, front.key)
    run_index = 0
    for index in range(options.slices):
        order = fronts if index % 2 == 0 else list(reversed(fronts))
        for front in order:
            nonce = f"{front.key}-{index}"
            hello = run_wrk(
                front.url + "/hello/x",
                workdir=front.workdir,
                seconds=options.duration,
                connections=CONNECTIONS,
                post=False,
                nonce=f"hello-{nonce}",
            )
            before = meter.read()
            with waits:
                post = run_wrk(
                    front.url + "/issue",
                    workdir=front.workdir,
                    seconds=options.duration,
                    connections=CONNECTIONS,
                    post=True,
                    nonce=nonce,
                    collect=True,
                    iid_base=run_index * SPAN,
                )
            used, busy = CpuMeter.used(before, meter.read())
            run_index += 1
            for part, seconds in used.items():
                front.cpu[part] = front.cpu.get(part, 0.0) + seconds
            front.busy += busy
            if front.store == "PostgreSQL":
                front.waits.update(waits.counts)
            front.post_seconds += post.seconds
            front.cell.hello.append(hello)
            front.cell.post.append(post)
            check_store(front.bridge, nonce, post, front.cell)


# ---------------------------------------------------------------------------- the report


def _median(results: list[LoadResult], attribute: str) -> float:
    return statistics.median(getattr(r, attribute) for r in results)


def report(section: Section, fronts: list[Front], options: Options, shares: list[float]) -> None:
    rows = []
    for f in fronts:
        c = f.cell
        verdict = "ok" if not c.lost and not c.bad else "; ".join([f"LOST {c.lost}", *c.bad])
        rows.append(
            [
                f.label,
                f.front,
                f"{c.median('hello', 'rps'):.0f}",
                fmt(c.median("hello", "p99_ms")),
                f"{c.median('post', 'ok_rps'):.0f}",
                f"{c.ratio:.3f}",
                fmt(c.median("post", "p50_ms")),
                fmt(c.median("post", "p99_ms")),
                "/".join(fmt(p.p99_ms) for p in c.post),
                fmt(max(p.max_ms for p in c.post)),
                str(c.failures),
                f"{c.ok}/{c.stored}",
                verdict,
            ]
        )
    section.tables.append(
        Table(
            [
                "store, instances",
                "front",
                "hello req/s",
                "hello p99 ms",
                "POST 2xx/s",
                "POST/hello",
                "POST p50 ms",
                "POST p99 ms",
                "p99 by slice",
                "POST max ms",
                "non-2xx",
                "2xx/stored",
                "store check",
            ],
            rows,
            f"{CONNECTIONS} connections, keep-alive:",
        )
    )
    by_key = {f.key: f for f in fronts}

    def versus(a: str, b: str, what: str) -> list[str]:
        x, y = by_key[a].cell, by_key[b].cell
        return [
            what,
            f"{x.median('post', 'ok_rps') / y.median('post', 'ok_rps'):.2f}",
            f"{x.median('post', 'p99_ms') / y.median('post', 'p99_ms'):.2f}",
        ]

    section.tables.append(
        Table(
            ["comparison", "POST 2xx/s", "POST p99"],
            [
                versus("pg-one", "sqlite", "PostgreSQL / SQLite, one instance, direct"),
                versus("pg-two", "pg-one-nginx", "PostgreSQL behind nginx: two / one instance"),
                versus("pg-two", "sqlite", "two PostgreSQL instances behind nginx / SQLite direct"),
            ],
            "Ratios of the medians:",
        )
    )
    nproc = len(os.sched_getaffinity(0))
    rows = []
    for f in fronts:
        seconds = f.post_seconds or 1.0
        ok = f.cell.ok or 1
        rows.append(
            [
                f.label,
                f.front,
                *(f"{f.cpu.get(part, 0.0) / seconds:.2f}" for part in PARTS),
                f"{max(0.0, f.busy - sum(f.cpu.values())) / seconds:.2f}",
                f"{f.busy / seconds:.2f} of {nproc}",
                f"{1000 * f.cpu.get('web', 0.0) / ok:.2f}",
                f"{1000 * f.cpu.get('postgres', 0.0) / ok:.2f}",
            ]
        )
    section.tables.append(
        Table(
            [
                "store, instances",
                "front",
                "web",
                "mules",
                "PostgreSQL",
                "nginx",
                "wrk",
                "anything else",
                "whole machine",
                "web ms/delivery",
                "PostgreSQL ms/delivery",
            ],
            rows,
            "CPU during the POST slices, in cores (CPU seconds per second), and per delivery "
            "answered 2xx:",
        )
    )
    rows = []
    for f in fronts:
        total = sum(f.waits.values())
        if f.store != "PostgreSQL" or not total:
            continue
        top = [f"{event} {100 * n / total:.0f} %" for event, n in f.waits.most_common(4)]
        rows.append([f.label, f.front, str(total), ", ".join(top)])
    if rows:
        section.tables.append(
            Table(
                ["store, instances", "front", "samples", "waiting on (share of samples)"],
                rows,
                "What the active PostgreSQL backends were waiting on during the POST slices "
                "(pg_stat_activity every 50 ms; Lock:object is the lock a transaction that "
                "sent NOTIFY holds from its commit until the commit is flushed, one such "
                "transaction at a time in the whole server; IO:WALSync and LWLock:WALWrite "
                "are the flush itself):",
            )
        )
    for key, strict in (("pg-one", False), ("pg-two", True)):
        f = by_key[key]
        label = f"{f.label}, {f.front}"
        section.targets += [
            Target(f"POST/hello ratio ({label})", f.cell.ratio, ">=", 0.3 if strict else 0.1),
            Target(
                f"POST p99 ({label})",
                f.cell.median("post", "p99_ms"),
                "<=" if strict else "<",
                15 if strict else 25,
                " ms",
                1,
            ),
        ]
    slices = f"the median of {options.slices} slices of" if options.slices > 1 else "one run of"
    section.notes += [
        f"Each figure is {slices} {options.duration:g} s, after a {options.warmup:g} s warm-up "
        "of each front; within a slice hello then POST through the same front, and the fronts "
        "take turns. wrk, 2 threads, keep-alive.",
        "Every POST is a new issue with its own Idempotency-Key. Trello is not configured, so "
        "the worker mules idle. The targets are ack's (direct: ratio >= 0.1, p99 < 25 ms; "
        "nginx: ratio >= 0.3, p99 <= 15 ms).",
        "store check: every delivery id answered 2xx is in the store (SQLite read-only; "
        "PostgreSQL by a query of the dedupe keys); stored may exceed 2xx by the requests wrk "
        "cut at the end of each slice (at most one per connection).",
        "Two instances: nginx's round robin gave instance a "
        f"{100 * shares[0] / (sum(shares) or 1):.1f} % of the deliveries (warm-up included, "
        "from each instance's /metrics); the single-instance and the upstream site alike run "
        "with 1 nginx worker process.",
        "CPU: from /proc, summed over the POST slices and divided by their length; PostgreSQL "
        "counts the server's own processes and the backends of the run's databases; anything "
        "else is the whole machine's busy time (/proc/stat) less those parts: other "
        "processes on the machine, and kernel work charged to none of them.",
    ]
