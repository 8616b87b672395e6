"""soak: does memory stay flat under steady traffic? ``python -m bench soak --minutes 30``.

50 deliveries a second for N minutes (one new issue in ten, the rest edits of earlier issues,
each newer than the last) while the worker delivers them to the emulator (20 ms per call, limits
lifted). RSS of every uWSGI process is sampled every 30 s (``--interval``). Flat: the last
sample is within 10 % of the sample at minute 5 (minute 1 for runs under ten minutes, the middle
sample for runs under two).
"""

from __future__ import annotations

import random
import threading
import time

from bench.common import (
    UNLIMITED,
    Bridge,
    Options,
    Poster,
    Section,
    Table,
    Target,
    payload,
    proc_status,
    running,
    start_trello,
)
from bench.memory import PROCESSES

RATE = 50.0
NEW_EVERY = 10
LATENCY = 0.020
DRIFT = 10.0  # %


def send(poster: Poster, seconds: float, stop: threading.Event) -> None:
    """POST at RATE per second for ``seconds``; never more than RATE * seconds deliveries."""
    rng = random.Random(2015)
    total = int(RATE * seconds)
    issues = 0
    started = time.monotonic()
    for n in range(total):
        if stop.is_set():
            return
        due = started + n / RATE
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if n % NEW_EVERY == 0 or issues == 0:
            issues += 1
            poster.post(payload(issues, at=n))
        else:
            iid = rng.randint(1, issues)
            poster.post(payload(iid, at=n, action="update", title=f"Issue {iid} edit {n}"))


def run(options: Options) -> Section:
    minutes = float(options.shared.get("minutes", 10.0))
    interval = float(options.shared.get("interval", 30.0))
    seconds = minutes * 60
    section = Section("soak", f"{RATE:.0f} deliveries/s for {minutes:g} min: is RSS flat?")
    workdir = options.subdir("soak")
    trello = start_trello(latency=LATENCY, rate_limit=UNLIMITED)
    bridge = Bridge(workdir / "service", trello.settings(max_requests_per_10s=UNLIMITED))
    poster = Poster(bridge.url, "soak-")
    samples: list[dict] = []
    stop = threading.Event()
    with running(trello, bridge):
        bridge.start()
        time.sleep(1.0)
        pids = bridge.pids()
        sender = threading.Thread(target=send, args=(poster, seconds, stop), daemon=True)
        started = time.monotonic()
        sender.start()
        try:
            tick = 0
            while True:
                at = time.monotonic() - started
                samples.append(
                    {
                        "t": at,
                        "sent": poster.sent,
                        "pending": bridge.pending(),
                        "rss": {n: proc_status(p).get("VmRSS", 0) / 1024 for n, p in pids.items()},
                    }
                )
                if at >= seconds - 0.5:
                    break
                tick += 1
                wait = started + min(tick * interval, seconds) - time.monotonic()
                time.sleep(max(0.0, wait))
        finally:
            stop.set()
            sender.join(30)
        elapsed = time.monotonic() - started
        drained = bridge.drain(60)
        respawned = {n for n, pid in bridge.pids().items() if pids.get(n) != pid}
    # warm-up is over by minute 5 (caches filled, every thread used); shorter runs: minute 1
    reference_at = 300.0 if seconds >= 600 else 60.0 if seconds >= 120 else seconds / 2
    reference = min(samples, key=lambda s: abs(s["t"] - reference_at))
    last = samples[-1]
    rows = [
        [
            f"{s['t'] / 60:.1f}",
            str(s["sent"]),
            "?" if s["pending"] is None else str(s["pending"]),
            *(f"{s['rss'].get(name, 0.0):.1f}" for name in PROCESSES),
        ]
        for s in samples
    ]
    section.tables.append(
        Table(["minute", "sent", "pending", *(f"{n} MB" for n in PROCESSES)], rows)
    )
    for name in PROCESSES:
        ref, end = reference["rss"].get(name, 0.0), last["rss"].get(name, 0.0)
        drift = abs(end / ref - 1) * 100 if ref else None
        section.targets.append(
            Target(
                f"RSS drift, {name} (min {last['t'] / 60:.1f} vs {reference['t'] / 60:.1f})",
                drift,
                "<=",
                DRIFT,
                " %",
                1,
            )
        )
    section.notes += [
        f"Sent {poster.sent} deliveries in {elapsed:.0f} s ({poster.sent / elapsed:.1f}/s), "
        f"not answered 2xx: {poster.failed}; queue "
        + ("empty at the end." if drained else "NOT empty 60 s after the end."),
        f"Emulator: {LATENCY * 1000:.0f} ms per call, limits lifted; one delivery in "
        f"{NEW_EVERY} opens a new issue (a new card), the others edit a random earlier issue.",
    ]
    if respawned:
        section.notes.append(f"processes respawned during the run: {sorted(respawned)}")
    return section
