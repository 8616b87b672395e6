"""calls: Trello calls spent per delivered event.

A realistic mix, one phase after the other, each delivered with small pauses and drained
before the next: new issues, title edits, label changes (half add a label, half replace one),
closes. Then bursts: 20 edits of one issue posted back to back, for 10 issues. All of it twice,
on a bridge of its own each time: with two-way sync off, and on (which lets a label change ride
in the card's one PUT). Calls on cards
are counted per event; the worker's one-off reads of the list and board (and label creation)
are reported apart. The emulator answers in 150 ms; rate limits are lifted so that waiting for
them does not merge events that would otherwise each cost a call.
"""

from __future__ import annotations

import time

from bench.common import (
    UNLIMITED,
    Bridge,
    Options,
    Poster,
    Section,
    Table,
    Target,
    Trello,
    payload,
    register_webhook,
    running,
    start_trello,
)

LATENCY = 0.150
PAUSE = 0.02
BURST = 20


def phase(
    name: str,
    bodies: list[bytes],
    poster: Poster,
    bridge: Bridge,
    trello: Trello,
    pause: float,
) -> dict:
    cards, board = trello.card_calls(), trello.board_calls()
    started = time.monotonic()
    for body in bodies:
        poster.post(body)
        if pause:
            time.sleep(pause)
    drained = bridge.drain(120)
    return {
        "name": name,
        "events": len(bodies),
        "card_calls": trello.card_calls() - cards,
        "board_calls": trello.board_calls() - board,
        "seconds": time.monotonic() - started,
        "drained": drained,
    }


def row(result: dict) -> list[str]:
    per_event = result["card_calls"] / result["events"] if result["events"] else 0.0
    return [
        result["name"],
        str(result["events"]),
        str(result["card_calls"]),
        str(result["board_calls"]),
        f"{per_event:.2f}",
        f"{result['seconds']:.1f}" + ("" if result["drained"] else " (not drained)"),
    ]


def measure(options: Options, two_way: bool) -> tuple[list[dict], dict, dict, int]:
    """The mix, then the bursts, on a bridge of its own; (mix phases, set-up, bursts, failed)."""
    scale = 0.4 if options.quick else 1.0
    opens, edits = int(100 * scale), int(100 * scale)
    labels, closes = int(50 * scale), int(50 * scale)
    bursts = 5 if options.quick else 10
    mode = "twoway-on" if two_way else "twoway-off"
    workdir = options.subdir("calls") / mode
    trello = start_trello(latency=LATENCY, rate_limit=UNLIMITED)
    settings = trello.settings(max_requests_per_10s=UNLIMITED)
    if two_way:
        settings["trello"]["secret"] = trello.emulator.secret
        settings["twoway"] = {"enabled": "true", "callback_url": "set below"}
    bridge = Bridge(workdir / "service", settings)
    if two_way:
        bridge.settings["twoway"]["callback_url"] = bridge.url + "/trello"
    poster = Poster(bridge.url, f"calls-{mode}-")
    mix: list[dict] = []
    half = labels // 2

    def title(i: int) -> str:
        return f"Issue number {i} (edited)"

    def label_set(i: int) -> tuple[str, ...]:
        return ("bug", "needs-review") if i <= half else ("feature",)

    first = 1001
    plan = [
        ("open", [payload(i) for i in range(1, opens + 1)]),
        (
            "title edit",
            [payload(i, at=60, action="update", title=title(i)) for i in range(1, edits + 1)],
        ),
        (
            "label change",
            [
                payload(i, at=120, action="update", title=title(i), labels=label_set(i))
                for i in range(1, labels + 1)
            ],
        ),
        (
            "close",
            [
                payload(i, at=180, action="close", title=title(i))
                for i in range(opens - closes + 1, opens + 1)
            ],
        ),
    ]
    setup_bodies = [payload(i) for i in range(first, first + bursts)]
    burst_bodies = [
        payload(i, at=300 + k, action="update", title=f"Issue number {i} edit {k}")
        for i in range(first, first + bursts)
        for k in range(1, BURST + 1)
    ]
    with running(trello, bridge):
        bridge.start()
        if two_way:
            register_webhook(bridge)
        trello.emulator.reset_calls()
        for name, bodies in plan:
            mix.append(phase(name, bodies, poster, bridge, trello, PAUSE))
        setup = phase("burst set-up: open", setup_bodies, poster, bridge, trello, PAUSE)
        burst = phase(
            f"bursts: {BURST} edits x {bursts} issues", burst_bodies, poster, bridge, trello, 0.0
        )
        failed = poster.failed
    return mix, setup, burst, failed


def run(options: Options) -> Section:
    section = Section("calls", "Trello calls per delivered event")
    failed = 0
    for two_way in (False, True):
        mix, setup, burst, lost = measure(options, two_way)
        failed += lost
        mode = "two-way on" if two_way else "two-way off"
        events = sum(r["events"] for r in mix)
        card_calls = sum(r["card_calls"] for r in mix)
        mix_ratio = card_calls / events if events else None
        burst_ratio = burst["card_calls"] / burst["events"] if burst["events"] else None
        total = {
            "name": "mix total",
            "events": events,
            "card_calls": card_calls,
            "board_calls": sum(r["board_calls"] for r in mix),
            "seconds": sum(r["seconds"] for r in mix),
            "drained": all(r["drained"] for r in mix),
        }
        section.tables.append(
            Table(
                ["phase", "events", "card calls", "one-off board calls", "calls/event", "seconds"],
                [row(r) for r in [*mix, total, setup, burst]],
                caption=f"{mode.capitalize()}:",
            )
        )
        section.targets += [
            Target(f"card calls per event, mix, {mode}", mix_ratio, "<=", 1.0),
            Target(f"card calls per event, bursts, {mode}", burst_ratio, "<=", 0.3),
        ]
    labels = int(50 * (0.4 if options.quick else 1.0))
    half = labels // 2
    section.notes += [
        f"Pauses of {PAUSE * 1000:.0f} ms between deliveries of a phase; each phase drained "
        "before the next. Every event has a newer updated_at than the one before.",
        f"label change: the first {half} add a label, the other {labels - half} replace one "
        "label with another (the title as already edited). Two-way off: each label "
        "added or removed is a call of its own (POST or DELETE idLabels), so that labels put on "
        "the card by hand stay. Two-way on (`[twoway] enabled`, the bridge's Trello webhook "
        "registered, no person acting on the board): the bridge knows the card's label set "
        "from Trello's answers and the webhook's label actions, and sends the new whole set "
        "in the one PUT of the card (hand labels kept).",
        "One-off board calls (list and board reads, creating a label new to the board) are "
        "not per event: the worker caches them.",
        f"Deliveries not answered 2xx: {failed}.",
    ]
    return section
