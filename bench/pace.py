"""pace: how close the worker gets to Trello's rate limit without crossing it.

300 new issues are POSTed at once (150 with --quick) while the emulator answers every call after
150 ms and allows 100 calls per 10 s per token, as Trello does. The clock runs from the first
POST until the last card exists on the emulator. The ideal is the limit's steady rate: 10 cards a
second. The bridge runs with its shipped settings (``max_requests_per_10s = 90``,
``concurrency = 4``).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from bench.common import (
    Bridge,
    Options,
    Poster,
    Section,
    Table,
    Target,
    payload,
    running,
    start_trello,
)

LATENCY = 0.150
LIMIT_PER_10S = 100


def run(options: Options) -> Section:
    count = 150 if options.quick else 300
    ideal = count / (LIMIT_PER_10S / 10)
    section = Section("pace", f"{count} new issues at once under Trello's rate limit")
    workdir = options.subdir("pace")
    trello = start_trello(latency=LATENCY, rate_limit=LIMIT_PER_10S)
    bridge = Bridge(workdir / "service", trello.settings())
    with running(trello, bridge):
        bridge.start()
        trello.emulator.reset_calls()
        bodies = [payload(iid) for iid in range(1, count + 1)]
        poster = Poster(bridge.url, "pace-")
        started = time.monotonic()

        def send(index: int) -> int:
            return poster.post(bodies[index])

        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(send, range(count)))
        acked_after = time.monotonic() - started
        acked = sum(1 for s in statuses if s == 202)
        deadline = started + ideal * 3 + 30
        done_at = None
        while time.monotonic() < deadline:
            if len(trello.emulator.cards()) >= acked:
                done_at = time.monotonic() - started
                break
            time.sleep(0.05)
        calls = trello.emulator.calls
        cards = len(trello.emulator.cards())
    limited = sum(1 for c in calls if c.status == 429)
    created = sum(1 for c in calls if c.method == "POST" and c.path == "/1/cards")
    other = len(calls) - created
    efficiency = ideal / done_at if done_at and acked == count else None
    waited = f"{done_at:.1f} s" if done_at else f"not within {deadline - started:.0f} s"
    limited_pct = 100 * limited / len(calls) if calls else 0.0
    rows = [
        ["issues POSTed (202 answers)", f"{count} ({acked})"],
        ["all answered after", f"{acked_after:.2f} s"],
        ["cards on the emulator", str(cards)],
        ["last card after", waited],
        ["ideal (limit's steady rate, 10/s)", f"{ideal:.1f} s"],
        ["efficiency = ideal / measured", f"{efficiency:.3f}" if efficiency else "n/a"],
        ["Trello calls: card creations / others", f"{created} / {other}"],
        ["429 answers", f"{limited} ({limited_pct:.2f} % of {len(calls)} calls)"],
    ]
    section.tables.append(Table(["figure", "value"], rows))
    section.targets += [
        Target("efficiency", efficiency, ">=", 0.9, digits=3),
        Target("429 answers", limited_pct, "<=", 1.0, " %"),
    ]
    section.notes += [
        f"Emulator: {LATENCY * 1000:.0f} ms per call, {LIMIT_PER_10S} calls per 10 s per token "
        '(sliding window). "others" are the worker\'s one-off reads of the list and board '
        "(and label creation), made before the first card.",
        "A sliding window allows a burst of a whole window at the start, so a run can beat the "
        "steady-rate ideal; the bridge allows itself 90 of Trello's 100.",
    ]
    return section
