"""memory: peak resident memory of every uWSGI process after many deliveries.

10,000 deliveries (2,000 with --quick), each a new issue, are POSTed by wrk at 16 connections
while the worker delivers them to the emulator (no latency, limits lifted); once the queue is
empty, VmHWM (peak RSS) of the master, both web workers and the worker mule is read from
/proc, next to the same figure right after start-up (the baseline).
"""

from __future__ import annotations

import time

from bench.common import (
    UNLIMITED,
    Bridge,
    Options,
    Section,
    Table,
    Target,
    cpu_seconds,
    proc_status,
    running,
    start_trello,
)
from bench.load import run_wrk

LIMIT_MB = 60.0
PROCESSES = ("master", "worker 1", "worker 2", "mule 1")


def run(options: Options) -> Section:
    count = 2_000 if options.quick else 10_000
    section = Section("memory", f"peak RSS of each uWSGI process after {count:,} deliveries")
    workdir = options.subdir("memory")
    trello = start_trello(latency=0.0, rate_limit=UNLIMITED)
    bridge = Bridge(workdir / "service", trello.settings(max_requests_per_10s=UNLIMITED))
    with running(trello, bridge):
        bridge.start()
        time.sleep(1.0)  # let the mule finish starting
        pids = bridge.pids()
        idle = {name: proc_status(pid) for name, pid in pids.items()}
        cpu_idle = {name: cpu_seconds(pid) or 0.0 for name, pid in pids.items()}
        started = time.monotonic()
        load = run_wrk(
            bridge.url + "/issue",
            workdir=workdir,
            seconds=600,
            connections=16,
            post=True,
            nonce="memory",
            quota=count,
            stop_when=lambda: bridge.count() >= count,
        )
        sent_after = time.monotonic() - started
        drained = bridge.drain(600 if not options.quick else 120)
        drained_after = time.monotonic() - started
        stored = bridge.count()
        done = bridge.count("WHERE state = 'done'")
        cards = len(trello.emulator.cards())
        after = {name: proc_status(pid) for name, pid in pids.items()}
        cpu = {name: (cpu_seconds(pid) or 0.0) - cpu_idle[name] for name, pid in pids.items()}
        respawned = {n for n, pid in bridge.pids().items() if pids.get(n) != pid}
    rows = []
    for name in PROCESSES:
        base, end = idle.get(name, {}), after.get(name, {})
        hwm, hwm0 = end.get("VmHWM", 0) / 1024, base.get("VmHWM", 0) / 1024
        rows.append(
            [
                name,
                str(pids.get(name, "?")),
                f"{hwm0:.1f}",
                f"{hwm:.1f}",
                f"{hwm / hwm0:.2f}" if hwm0 else "n/a",
                f"{end.get('VmRSS', 0) / 1024:.1f}",
                f"{cpu.get(name, 0.0):.1f}",
            ]
        )
        section.targets.append(
            Target(f"peak RSS, {name}", hwm if end else None, "<=", LIMIT_MB, " MB", 1)
        )
    section.tables.append(
        Table(
            [
                "process",
                "pid",
                "peak MB at start",
                "peak MB after",
                "after/start",
                "RSS MB now",
                "CPU s used",
            ],
            rows,
        )
    )
    section.tables.append(
        Table(
            ["figure", "value"],
            [
                ["deliveries stored / done", f"{stored:,} / {done:,}"],
                ["cards on the emulator", f"{cards:,}"],
                ["POST 2xx answers, non-2xx", f"{load.ok:,}, {load.failures}"],
                ["all POSTed after", f"{sent_after:.1f} s ({load.ok_rps:.0f}/s)"],
                [
                    "queue empty after",
                    f"{drained_after:.1f} s ({stored / drained_after:.0f} deliveries/s)"
                    if drained
                    else f"NOT empty after {drained_after:.0f} s",
                ],
            ],
        )
    )
    if respawned:
        section.notes.append(f"processes respawned during the run: {sorted(respawned)}")
    section.notes.append(
        "VmHWM from /proc/PID/status. The master loads no application (lazy-apps); the "
        "worker mule keeps its board cache, which holds every card it created."
    )
    return section
