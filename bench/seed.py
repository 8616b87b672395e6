"""seed: the ack measurement against the 2015 design (``bench/seed_app.py``).

The seed app calls Trello inside the request, so its answer waits for Trello: the emulator
answers after 150 ms, with Trello's real rate limit (100 calls per 10 s per token). Same uWSGI
process settings as the bridge (2 processes x 8 threads), 16 connections, direct HTTP. The
bridge's figure is the ack benchmark's (group commit, direct, 16 connections) when it ran in the
same invocation, else it is measured here the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.ack import Cell
from bench.common import Bridge, Options, Section, Table, UwsgiApp, fmt, running, start_trello
from bench.load import LoadResult, run_wrk

LATENCY = 0.150
CONNECTIONS = 16


@dataclass(frozen=True)
class Figures:
    ok_rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    failures: int

    @classmethod
    def of(cls, r: LoadResult) -> Figures:
        return cls(r.ok_rps, r.p50_ms, r.p99_ms, r.max_ms, r.failures)

    @classmethod
    def of_cell(cls, c: Cell) -> Figures:
        return cls(
            c.median("post", "ok_rps"),
            c.median("post", "p50_ms"),
            c.median("post", "p99_ms"),
            max(p.max_ms for p in c.post),
            sum(p.failures for p in c.post),
        )


def load(
    options: Options, url: str, workdir: Path, nonce: str, *, warm: bool = False
) -> LoadResult:
    """One wrk run at CONNECTIONS connections: POSTs of deliveries, or GETs of a /hello URL."""
    return run_wrk(
        url,
        workdir=workdir,
        seconds=options.warmup if warm else options.measure_seconds,
        connections=CONNECTIONS,
        post=url.endswith("/issue"),
        nonce=nonce,
    )


def measure_bridge(options: Options) -> LoadResult:
    workdir = options.subdir("seed-bridge")
    bridge = Bridge(workdir / "service", {"trello": {"key": "", "token": "", "list_id": ""}})
    with running(bridge):
        bridge.start()
        load(options, bridge.url + "/issue", workdir, "warm", warm=True)
        return load(options, bridge.url + "/issue", workdir, "bridge")


def run(options: Options) -> Section:
    section = Section(
        "seed", "the 2015 design (Trello called inside the request) against the bridge"
    )
    cell: Cell | None = options.shared.get("bridge_ack")
    if cell is not None:
        bridge = Figures.of_cell(cell)
        source = "the ack benchmark of this run (median of its slices)"
    else:
        bridge = Figures.of(measure_bridge(options))
        source = "measured here, the same way"
    workdir = options.subdir("seed")
    trello = start_trello(latency=LATENCY, rate_limit=100)
    env = {
        "SEED_TRELLO_API": trello.emulator.url,
        "SEED_TRELLO_KEY": trello.emulator.key,
        "SEED_TRELLO_TOKEN": trello.emulator.token,
        "SEED_LIST_ID": trello.list_id,
    }
    app = UwsgiApp(workdir / "seed", "bench.seed_app:application", env)
    with running(trello, app):
        app.start()
        load(options, app.url + "/issue", workdir, "warm", warm=True)
        hello = load(options, app.url + "/hello/x", workdir, "hello")
        cards_before = len(trello.emulator.cards())
        calls_before = trello.emulator.count_calls(method="POST", path_prefix="/cards")
        seed = load(options, app.url + "/issue", workdir, "seed")
        cards = len(trello.emulator.cards()) - cards_before
        calls = trello.emulator.count_calls(method="POST", path_prefix="/cards") - calls_before
    rows = []
    for name, figures in (("bridge (store, answer 202)", bridge), ("seed 2015", Figures.of(seed))):
        rows.append(
            [
                name,
                f"{figures.ok_rps:.0f}",
                f"{figures.ok_rps / bridge.ok_rps:.3f}" if bridge.ok_rps else "n/a",
                fmt(figures.p50_ms),
                fmt(figures.p99_ms),
                fmt(figures.max_ms),
                f"{figures.p99_ms / bridge.p99_ms:.1f}" if bridge.p99_ms else "n/a",
                str(figures.failures),
            ]
        )
    section.tables.append(
        Table(
            [
                "app",
                "POST 2xx/s",
                "x bridge",
                "p50 ms",
                "p99 ms",
                "max ms",
                "p99 x bridge",
                "non-2xx",
            ],
            rows,
            f"{CONNECTIONS} connections, direct HTTP, {options.measure_seconds:g} s each",
        )
    )
    written = f"{cards}/{seed.ok}" if seed.ok else "0/0"
    section.tables.append(
        Table(
            ["seed figure", "value"],
            [
                ["hello req/s (same seed service)", f"{hello.rps:.0f}"],
                ["POST/hello", f"{seed.ok_rps / hello.rps:.3f}" if hello.rps else "n/a"],
                ["Trello calls made during the run", str(calls)],
                ["cards written / deliveries answered OK", written],
            ],
        )
    )
    section.notes += [
        f"Bridge figure: {source}. Trello emulator: {LATENCY * 1000:.0f} ms per call, "
        "100 calls per 10 s per token (Trello's limit).",
        'The seed app answers 200 "OK" whatever Trello says, so every call refused with 429 '
        "is an issue acknowledged to GitLab and never written: the last row.",
    ]
    return section
