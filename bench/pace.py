"""pace: how close the worker gets to Trello's rate limit without crossing it.

300 new issues are POSTed at once (150 with --quick) while the emulator answers every call after
150 ms and allows 100 calls per 10 s per token, as Trello does. The clock runs from the first
POST until the last card exists on the emulator. The ideal is the limit's steady rate, 10 calls a
second, for the calls the run made (a card each, and the worker's one-off reads). The bridge runs
with its shipped settings (``max_requests_per_10s = 90``, ``concurrency = 4``).

Twice: one instance on SQLite, then two instances on one new PostgreSQL database sharing the
token's budget (the issues POSTed round robin to both), each run against an emulator of its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from bench.common import (
    Bridge,
    Options,
    Poster,
    Postgres,
    Section,
    Table,
    Target,
    Trello,
    payload,
    running,
    start_trello,
)
from tests.trello_emulator import Call

LATENCY = 0.150
LIMIT_PER_10S = 100


@dataclass
class Drain:
    """What one run of ``count`` new issues took."""

    count: int
    acked: int
    acked_after: float
    done_at: float | None
    waited: float
    cards: int
    calls: list[Call]
    by_instance: list[float]  # Trello calls each instance counted (its /metrics)

    @property
    def limited(self) -> int:
        return sum(1 for c in self.calls if c.status == 429)

    @property
    def created(self) -> int:
        return sum(1 for c in self.calls if c.method == "POST" and c.path == "/1/cards")

    @property
    def ideal(self) -> float:
        """Seconds the calls that went through take at the limit's steady rate."""
        return (len(self.calls) - self.limited) / (LIMIT_PER_10S / 10)

    @property
    def efficiency(self) -> float | None:
        if not self.done_at or self.acked != self.count:
            return None
        return self.ideal / self.done_at

    @property
    def limited_pct(self) -> float:
        return 100 * self.limited / len(self.calls) if self.calls else 0.0


def drain(trello: Trello, bridges: list[Bridge], count: int, prefix: str) -> Drain:
    """POST ``count`` new issues at once, round robin over ``bridges``; wait for every card."""
    trello.emulator.reset_calls()
    bodies = [payload(iid) for iid in range(1, count + 1)]
    posters = [Poster(bridge.url, f"{prefix}{n}-") for n, bridge in enumerate(bridges)]
    started = time.monotonic()

    def send(index: int) -> int:
        return posters[index % len(posters)].post(bodies[index])

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(send, range(count)))
    acked_after = time.monotonic() - started
    acked = sum(1 for s in statuses if s == 202)
    ideal = count / (LIMIT_PER_10S / 10)
    deadline = started + ideal * 3 + 30
    done_at = None
    while time.monotonic() < deadline:
        if len(trello.emulator.cards()) >= acked:
            done_at = time.monotonic() - started
            break
        time.sleep(0.05)
    by_instance = [bridge.metric("gitlab2trello_trello_calls_total") for bridge in bridges]
    return Drain(
        count=count,
        acked=acked,
        acked_after=acked_after,
        done_at=done_at,
        waited=deadline - started,
        cards=len(trello.emulator.cards()),
        calls=list(trello.emulator.calls),
        by_instance=by_instance,
    )


def one_instance(options: Options, count: int) -> Drain:
    trello = start_trello(latency=LATENCY, rate_limit=LIMIT_PER_10S)
    bridge = Bridge(options.subdir("pace") / "service", trello.settings())
    with running(trello, bridge):
        bridge.start()
        return drain(trello, [bridge], count, "pace-")


def two_instances(options: Options, count: int) -> Drain:
    pg = Postgres()
    with running(pg):
        url = pg.database()
        trello = start_trello(latency=LATENCY, rate_limit=LIMIT_PER_10S)
        workdir = options.subdir("pace-two")
        bridges = [
            Bridge(
                workdir / name,
                {**trello.settings(), "server": {"instance": name}},
                database_url=url,
            )
            for name in ("a", "b")
        ]
        with running(trello, *bridges):
            for bridge in bridges:
                bridge.start()
            return drain(trello, bridges, count, "pace-two-")


def run(options: Options) -> Section:
    count = 150 if options.quick else 300
    section = Section("pace", f"{count} new issues at once under Trello's rate limit")
    runs = {"one instance (SQLite)": one_instance(options, count)}
    runs["two instances (PostgreSQL)"] = two_instances(options, count)

    def row(what: str, value: Callable[[Drain], object]) -> list[str]:
        return [what, *(str(value(d)) for d in runs.values())]

    def waited(d: Drain) -> str:
        return f"{d.done_at:.1f} s" if d.done_at else f"not within {d.waited:.0f} s"

    def by_instance(d: Drain) -> str:
        return " / ".join(f"{n:.0f}" for n in d.by_instance)

    rows = [
        row("issues POSTed (202 answers)", lambda d: f"{d.count} ({d.acked})"),
        row("all answered after", lambda d: f"{d.acked_after:.2f} s"),
        row("cards on the emulator", lambda d: d.cards),
        row("last card after", waited),
        row("ideal (calls at the limit's steady rate, 10/s)", lambda d: f"{d.ideal:.1f} s"),
        row(
            "efficiency = ideal / measured",
            lambda d: f"{d.efficiency:.3f}" if d.efficiency else "n/a",
        ),
        row(
            "Trello calls: card creations / others",
            lambda d: f"{d.created} / {len(d.calls) - d.created}",
        ),
        row("Trello calls by instance", by_instance),
        row(
            "429 answers",
            lambda d: f"{d.limited} ({d.limited_pct:.2f} % of {len(d.calls)} calls)",
        ),
    ]
    section.tables.append(Table(["figure", *runs], rows))
    one, two = runs.values()
    section.targets += [
        Target("efficiency, one instance", one.efficiency, ">=", 0.9, digits=3),
        Target("429 answers, one instance", one.limited_pct, "<=", 1.0, " %"),
        Target("efficiency, two instances", two.efficiency, ">=", 0.9, digits=3),
        Target("429 answers, two instances", float(two.limited), "<=", 0, digits=0),
    ]
    section.notes += [
        f"Emulator: {LATENCY * 1000:.0f} ms per call, {LIMIT_PER_10S} calls per 10 s per token "
        '(sliding window). "others" are the worker\'s one-off reads of the list and board '
        "(and label creation), made before the first card; with two instances each makes its "
        "own.",
        "A sliding window allows a burst of a whole window at the start, so a run can beat the "
        "steady-rate ideal; the bridge allows itself 90 of Trello's 100, with two instances as "
        "one budget kept in the database.",
        "Two instances: each a whole service (web processes and worker) on one new PostgreSQL "
        "database; the issues are POSTed to them in turn, directly (no nginx). By instance: "
        "the calls each counted in its /metrics.",
    ]
    return section
