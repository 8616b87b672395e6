"""ack: how fast ``POST /issue`` is answered, against ``GET /hello/x`` on the same service.

Two services run side by side, one per store mode: ``group_commit = false`` ("before": one
transaction and fsync per delivery) and ``true`` ("after": deliveries arriving together share
one). Neither has Trello credentials, so their worker mules idle. Each listens on an HTTP socket
(as ``make run``) and on a uwsgi-protocol socket behind its own nginx.

For each front and connection count, the hello baseline and the deliveries are measured one after
the other on the same service, in slices that alternate between the two services, so that a
neighbour's burst of CPU hits both modes alike; a figure is the median of its slices. Afterwards
the store is opened read-only: every delivery id answered 2xx must be there.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import Bridge, Options, Section, Table, Target, fmt, production_nginx, running
from bench.load import LoadResult, run_wrk
from tests.nginx import Nginx

MODES = (("before", False), ("after", True))
FRONTS = ("direct", "nginx")
SPAN = 30_000_000  # issue numbers of one wrk run (deliveries.lua: thread * 1e7 + n)


@dataclass
class Cell:
    """The slices of one (mode, front, connections) measurement."""

    mode: str
    front: str
    conns: int
    hello: list[LoadResult] = field(default_factory=list)
    post: list[LoadResult] = field(default_factory=list)
    stored: int = 0
    lost: int = 0
    bad: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        ratios = [p.ok_rps / h.rps for h, p in zip(self.hello, self.post, strict=True) if h.rps]
        return statistics.median(ratios) if ratios else 0.0

    def median(self, which: str, attribute: str) -> float:
        runs = self.hello if which == "hello" else self.post
        return statistics.median(getattr(run, attribute) for run in runs)

    @property
    def ok(self) -> int:
        return sum(p.ok for p in self.post)

    @property
    def failures(self) -> int:
        return sum(r.failures for r in self.hello + self.post)


def connections(options: Options) -> tuple[int, ...]:
    return (16,) if options.quick else (16, 64)


def check_store(bridge: Bridge, nonce: str, result: LoadResult, cell: Cell) -> None:
    """Every delivery id answered 2xx by this run is in the store, once."""
    time.sleep(0.3)  # requests cut by wrk's stop may still be committing
    stored = bridge.stored_ids(nonce + "-")
    acked = set(result.acked)
    cell.stored += len(stored)
    cell.lost += len(acked - stored)
    if len(result.acked) != result.ok:
        cell.bad.append(f"{result.ok - len(result.acked)} answers without an id")
    if len(acked) != len(result.acked):
        cell.bad.append(f"{len(result.acked) - len(acked)} ids given twice")
    if len(stored) - len(acked & stored) > result.connections:
        cell.bad.append("more stored than sent")


def warm_up(bridge: Bridge, url: str, options: Options, workdir: Path, tag: str) -> None:
    run_wrk(
        url + "/hello/warm", workdir=workdir, seconds=options.warmup, connections=16, post=False
    )
    run_wrk(
        url + "/issue",
        workdir=workdir,
        seconds=options.warmup,
        connections=16,
        post=True,
        nonce=f"warm-{tag}",
        iid_base=900_000_000,
    )


def run(options: Options) -> Section:
    section = Section(
        "ack", "POST /issue (unique deliveries) against GET /hello/x on the same service"
    )
    services: dict[str, tuple[Bridge, Nginx, Path]] = {}
    for mode, group_commit in MODES:
        workdir = options.subdir(f"ack-{mode}")
        settings = {
            "store": {"group_commit": str(group_commit).lower()},
            "trello": {"key": "", "token": "", "list_id": ""},
        }
        bridge = Bridge(workdir / "service", settings, uwsgi_socket=True)
        assert bridge.uwsgi_port is not None
        services[mode] = (bridge, production_nginx(workdir / "nginx", bridge.uwsgi_port), workdir)
    cells: list[Cell] = []
    things = [thing for bridge, nginx, _ in services.values() for thing in (bridge, nginx)]
    with running(*things):
        for thing in things:
            thing.start()
        run_index = 0
        for front in FRONTS:
            for mode, (bridge, nginx, workdir) in services.items():
                url = bridge.url if front == "direct" else nginx.url
                warm_up(bridge, url, options, workdir, f"{mode}-{front}")
            for conns in connections(options):
                row = {mode: Cell(mode, front, conns) for mode in services}
                for index in range(options.slices):
                    order = list(services) if index % 2 == 0 else list(reversed(services))
                    for mode in order:
                        bridge, nginx, workdir = services[mode]
                        url = bridge.url if front == "direct" else nginx.url
                        nonce = f"{mode}-{front}-{conns}-{index}"
                        hello = run_wrk(
                            url + "/hello/x",
                            workdir=workdir,
                            seconds=options.duration,
                            connections=conns,
                            post=False,
                            nonce=f"hello-{nonce}",
                        )
                        post = run_wrk(
                            url + "/issue",
                            workdir=workdir,
                            seconds=options.duration,
                            connections=conns,
                            post=True,
                            nonce=nonce,
                            collect=True,
                            iid_base=run_index * SPAN,
                        )
                        run_index += 1
                        row[mode].hello.append(hello)
                        row[mode].post.append(post)
                        check_store(bridge, nonce, post, row[mode])
                cells += row.values()
    cells.sort(key=lambda c: (c.mode != "before", FRONTS.index(c.front), c.conns))
    report(section, cells, options)
    return section


def report(section: Section, cells: list[Cell], options: Options) -> None:
    rows = []
    for c in cells:
        verdict = "ok" if not c.lost and not c.bad else "; ".join([f"LOST {c.lost}", *c.bad])
        rows.append(
            [
                f"{c.mode} (group_commit={'true' if c.mode == 'after' else 'false'})",
                c.front,
                str(c.conns),
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
                "store",
                "front",
                "conns",
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
        )
    )
    for c in cells:
        if c.conns != 16:
            continue
        label = f"{c.mode}, {c.front}, 16 conns"
        strict = c.front == "nginx"
        section.targets += [
            Target(f"POST/hello ratio ({label})", c.ratio, ">=", 0.3 if strict else 0.1),
            Target(
                f"POST p99 ({label})",
                c.median("post", "p99_ms"),
                "<=" if strict else "<",
                15 if strict else 25,
                " ms",
                1,
            ),
        ]
    by_key = {(c.mode, c.front, c.conns): c for c in cells}
    rows = []
    for front in FRONTS:
        for conns in connections(options):
            before, after = by_key[("before", front, conns)], by_key[("after", front, conns)]
            gain = after.median("post", "ok_rps") / before.median("post", "ok_rps")
            p99 = after.median("post", "p99_ms") / before.median("post", "p99_ms")
            rows.append([front, str(conns), f"{gain:.2f}", f"{p99:.2f}"])
    section.tables.append(
        Table(
            ["front", "conns", "POST 2xx/s after/before", "POST p99 after/before"],
            rows,
            "Group commit against one fsync per delivery:",
        )
    )
    options.shared["bridge_ack"] = by_key[("after", "direct", 16)]
    slices = f"the median of {options.slices} slices of" if options.slices > 1 else "one run of"
    section.notes += [
        f"Each figure is {slices} {options.duration:g} s, after a {options.warmup:g} s warm-up "
        "of each front; within a slice hello then POST on the same service, and the two "
        "services take turns, so that both modes see the same neighbours. wrk, 2 threads.",
        "Every POST is a new issue with its own Idempotency-Key. Trello is not configured, so "
        "the worker mules idle; uWSGI logs every request and the app one line per delivery, "
        "as shipped.",
        "store check: every delivery id answered 2xx is in the store (read-only); stored may "
        "exceed 2xx by the requests wrk cut at the end of each slice (at most one per "
        "connection).",
        "non-2xx counts non-2xx answers, timeouts and refused connections of hello and POST.",
        "direct: uWSGI's --http11-socket (keep-alive), as `make run`; nginx: the shipped "
        "deploy/nginx-gitlab2trello.conf (1 worker process, access log off), uwsgi_pass to "
        "the same uWSGI on a uwsgi-protocol socket.",
    ]
