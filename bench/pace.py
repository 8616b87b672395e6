"""pace: how close the worker gets to Trello's rate limit without crossing it.

New issues are POSTed at once while the emulator answers every call after 150 ms and allows a
number of calls per 10 s per token. The clock runs from the first POST until the last card
exists on the emulator. The ideal is the steady rate of what the budget leaves the bridge, for
the calls the run made (a card each, and the worker's one-off reads). The bridge runs with its
shipped settings (``max_requests_per_10s = 90``, ``concurrency = 4``).

Two budgets, each with one instance on SQLite, then two instances on one new PostgreSQL
database sharing the token's budget (the issues POSTed round robin to both), each run against
an emulator of its own:

- Trello's 100 per 10 s, the token the bridge's alone: 300 new issues (150 with --quick);
- 20 per 10 s, below the configured 90, and another integration on the same token spending
  one call every 2.1 s (under 5 per 10 s) from a window before the POSTs to the end: what is
  left is about 15 per 10 s; 100 new issues (40 with --quick).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import requests

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
INTERVAL = 10.0
OTHER_EVERY = 2.1  # seconds between the other integration's calls, in the shared case


@dataclass(frozen=True)
class Budget:
    """The emulator's limit per 10 s, and how often someone else spends a call of it."""

    limit: int
    other_every: float | None = None

    @property
    def left(self) -> float:
        """Calls per second the budget leaves the bridge."""
        others = INTERVAL / self.other_every if self.other_every else 0.0
        return (self.limit - others) / INTERVAL


SOLE = Budget(100)
SHARED = Budget(20, OTHER_EVERY)


class OtherIntegration:
    """Spends calls of the token's budget at a steady pace (GET /1/boards/{id}, a call the
    worker never makes), whatever the answers say, as another integration would."""

    def __init__(self, trello: Trello, every: float) -> None:
        self.url = f"{trello.emulator.url}/boards/{trello.board_id}"
        self.path = f"/1/boards/{trello.board_id}"
        self.every = every
        self.auth = (
            f'OAuth oauth_consumer_key="{trello.emulator.key}", '
            f'oauth_token="{trello.emulator.token}"'
        )
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="other-integration", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with requests.Session() as session:
            session.headers["Authorization"] = self.auth
            beat = 0
            while not self._stop.is_set():
                with contextlib.suppress(requests.RequestException):
                    session.get(self.url, timeout=5)
                beat += 1
                self._stop.wait(max(0.0, self.started + beat * self.every - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def other_integration(trello: Trello, budget: Budget) -> list[OtherIntegration]:
    """The other integration of the budget, started (none when the token is the bridge's)."""
    return [OtherIntegration(trello, budget.other_every)] if budget.other_every else []


@dataclass
class Drain:
    """What one run of ``count`` new issues took."""

    budget: Budget
    count: int
    acked: int
    acked_after: float
    done_at: float | None
    waited: float
    cards: int
    calls: list[Call]  # the bridge's
    others: list[Call]  # the other integration's, during the run
    by_instance: list[float]  # Trello calls each instance counted (its /metrics)

    @property
    def limited(self) -> int:
        return sum(1 for c in self.calls if c.status == 429)

    @property
    def others_limited(self) -> int:
        return sum(1 for c in self.others if c.status == 429)

    @property
    def created(self) -> int:
        return sum(1 for c in self.calls if c.method == "POST" and c.path == "/1/cards")

    @property
    def ideal(self) -> float:
        """Seconds the calls that went through take at the steady rate left to the bridge."""
        return (len(self.calls) - self.limited) / self.budget.left

    @property
    def efficiency(self) -> float | None:
        if not self.done_at or self.acked != self.count:
            return None
        return self.ideal / self.done_at

    @property
    def limited_pct(self) -> float:
        return 100 * self.limited / len(self.calls) if self.calls else 0.0


def drain(
    trello: Trello,
    bridges: list[Bridge],
    count: int,
    prefix: str,
    budget: Budget,
    other: OtherIntegration | None = None,
) -> Drain:
    """POST ``count`` new issues at once, round robin over ``bridges``; wait for every card."""
    if other is not None:  # the other integration has spent for a whole window already
        time.sleep(max(0.0, other.started + INTERVAL - time.monotonic()))
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
    deadline = started + count / budget.left * 3 + 30
    done_at = None
    while time.monotonic() < deadline:
        if len(trello.emulator.cards()) >= acked:
            done_at = time.monotonic() - started
            break
        time.sleep(0.05)
    by_instance = [bridge.metric("gitlab2trello_trello_calls_total") for bridge in bridges]
    calls = list(trello.emulator.calls)
    theirs = other.path if other is not None else None
    return Drain(
        budget=budget,
        count=count,
        acked=acked,
        acked_after=acked_after,
        done_at=done_at,
        waited=deadline - started,
        cards=len(trello.emulator.cards()),
        calls=[c for c in calls if not (c.method == "GET" and c.path == theirs)],
        others=[c for c in calls if c.method == "GET" and c.path == theirs],
        by_instance=by_instance,
    )


def one_instance(options: Options, count: int, budget: Budget) -> Drain:
    trello = start_trello(latency=LATENCY, rate_limit=budget.limit)
    bridge = Bridge(options.subdir(f"pace-{budget.limit}") / "service", trello.settings())
    with running(trello, bridge):
        other = other_integration(trello, budget)
        with running(*other):
            bridge.start()
            return drain(trello, [bridge], count, f"pace-{budget.limit}-", budget, *other)


def two_instances(options: Options, count: int, budget: Budget) -> Drain:
    pg = Postgres()
    with running(pg):
        url = pg.database()
        trello = start_trello(latency=LATENCY, rate_limit=budget.limit)
        workdir = options.subdir(f"pace-two-{budget.limit}")
        bridges = [
            Bridge(
                workdir / name,
                {**trello.settings(), "server": {"instance": name}},
                database_url=url,
            )
            for name in ("a", "b")
        ]
        with running(trello, *bridges):
            other = other_integration(trello, budget)
            with running(*other):
                for bridge in bridges:
                    bridge.start()
                return drain(trello, bridges, count, f"pace-two-{budget.limit}-", budget, *other)


def run(options: Options) -> Section:
    count = 150 if options.quick else 300
    shared_count = 40 if options.quick else 100
    section = Section(
        "pace",
        f"{count} new issues at once under Trello's 100 calls per 10 s, {shared_count} under "
        "20 shared with another integration",
    )
    runs = {
        "100/10 s, one instance (SQLite)": one_instance(options, count, SOLE),
        "100/10 s, two instances (PostgreSQL)": two_instances(options, count, SOLE),
        "20/10 s shared, one instance (SQLite)": one_instance(options, shared_count, SHARED),
        "20/10 s shared, two instances (PostgreSQL)": two_instances(options, shared_count, SHARED),
    }

    def row(what: str, value: Callable[[Drain], object]) -> list[str]:
        return [what, *(str(value(d)) for d in runs.values())]

    def waited(d: Drain) -> str:
        return f"{d.done_at:.1f} s" if d.done_at else f"not within {d.waited:.0f} s"

    def by_instance(d: Drain) -> str:
        return " / ".join(f"{n:.0f}" for n in d.by_instance)

    def others(d: Drain) -> str:
        return f"{len(d.others)} ({d.others_limited} answered 429)" if d.others else "-"

    rows = [
        row("issues POSTed (202 answers)", lambda d: f"{d.count} ({d.acked})"),
        row("all answered after", lambda d: f"{d.acked_after:.2f} s"),
        row("cards on the emulator", lambda d: d.cards),
        row("last card after", waited),
        row("rate left to the bridge", lambda d: f"{d.budget.left:.2f}/s"),
        row("ideal (its calls at that rate)", lambda d: f"{d.ideal:.1f} s"),
        row(
            "efficiency = ideal / measured",
            lambda d: f"{d.efficiency:.3f}" if d.efficiency else "n/a",
        ),
        row(
            "bridge's calls: card creations / others",
            lambda d: f"{d.created} / {len(d.calls) - d.created}",
        ),
        row("bridge's calls by instance", by_instance),
        row(
            "bridge's 429 answers",
            lambda d: f"{d.limited} ({d.limited_pct:.2f} % of {len(d.calls)} calls)",
        ),
        row("other integration's calls", others),
    ]
    section.tables.append(Table(["figure", *runs], rows))
    one, two, one_shared, two_shared = runs.values()
    section.targets += [
        Target("efficiency, 100/10 s, one instance", one.efficiency, ">=", 0.9, digits=3),
        Target("429 answers, 100/10 s, one instance", one.limited_pct, "<=", 1.0, " %"),
        Target("efficiency, 100/10 s, two instances", two.efficiency, ">=", 0.9, digits=3),
        Target("429 answers, 100/10 s, two instances", float(two.limited), "<=", 0, digits=0),
        Target(
            "efficiency, 20/10 s shared, one instance", one_shared.efficiency, ">=", 0.85, digits=3
        ),
        Target(
            "429 answers, 20/10 s shared, one instance", one_shared.limited_pct, "<=", 1.0, " %"
        ),
        Target(
            "efficiency, 20/10 s shared, two instances", two_shared.efficiency, ">=", 0.85, digits=3
        ),
        Target(
            "429 answers, 20/10 s shared, two instances", two_shared.limited_pct, "<=", 1.0, " %"
        ),
    ]
    section.notes += [
        f"Emulator: {LATENCY * 1000:.0f} ms per call, a sliding window per token, its "
        'x-rate-limit-api-token-* headers on every answer. "others" are the worker\'s one-off '
        "reads of the list and board (and label creation), made before the first card; with "
        "two instances each makes its own.",
        "100/10 s: a sliding window allows a burst of a whole window at the start, so a run can "
        "beat the steady-rate ideal; the bridge allows itself 90 of Trello's 100, with two "
        "instances as one budget kept in the database.",
        f"20/10 s shared: the bridge is still configured for 90; it learns the 20 from the "
        f"answers' headers, and what the other integration spends (one call every "
        f"{OTHER_EVERY:g} s on the same token, from one window before the POSTs) from their "
        "remaining; the ideal is the rate left after the other integration's calls. The other "
        "integration's 429s say whether the bridge left it its share.",
        "Two instances: each a whole service (web processes and worker) on one new PostgreSQL "
        "database; the issues are POSTed to them in turn, directly (no nginx). By instance: "
        "the calls each counted in its /metrics.",
    ]
    return section
