"""twoway: a person's change on a card to the GitLab write, and GitLab writes per card action.

The bridge runs with two-way sync on (SQLite store, the shipped settings otherwise; the board's
actions are read back every 60 s, as shipped) between the Trello emulator (150 ms per call, 100
calls per 10 s per token, as Trello does) and the GitLab emulator, both firing their real
webhooks: its Trello webhook is registered with ``gitlab2trello trello-webhook``, its GitLab hook
as a project hook. The board has lists To Do (new cards), Doing and Review (``[lists]`` doing
and review), Done (``done_list_id``) and Someday (a list the configuration does not name), and
people alice and bob. First 100 issues (30 with --quick) are opened in GitLab and become cards.

1. Round trip: 100 moves (30) by alice, one card each, alternately into Done and into Doing,
   one after the other once the previous one has settled (every webhook of both sides delivered,
   the bridge's queue empty, nothing new for 0.3 s). Each is timed from the move (the emulator
   records the action and queues its webhook) to the arrival of the GitLab write at the GitLab
   emulator. The GitLab emulator keeps no time per write, so the benchmark's subclass of it
   stamps each write request with the wall clock as it arrives.
2. Writes per card action, a realistic mix of 100 actions (50), in a seeded random order on
   cards picked at random among those each action fits: 40 % moves (into Done, back out of
   Done, into a ``[lists]`` list, back into To Do), 20 % comments, 15 % member added or
   removed, 10 % due date set or cleared, and 15 % that must cost no write (renames, moves into
   Someday, and comments and renames by the bridge's own Trello member). Each settles before
   the next; the GitLab writes and Trello calls in between are its cost. Writes beyond the one
   an action asks for are echo; Trello calls are what GitLab's webhooks for the bridge's own
   writes cost (legitimate for labels only: the new GitLab label is mirrored onto the card).
"""

from __future__ import annotations

import math
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from bench.common import (
    Bridge,
    Options,
    Section,
    Table,
    Target,
    Trello,
    fmt,
    merge,
    register_webhook,
    running,
    start_trello,
)
from tests.gitlab_emulator import GitLabEmulator

LATENCY = 0.150
LIMIT_PER_10S = 100
PROJECT = 42
QUIET = 0.3  # seconds with nothing new on either side: settled
SETTLE_TIMEOUT = 60.0
ISSUE_RE = re.compile(r"/issues/(\d+)(?:/|$)")
ID_RE = re.compile(r"[0-9a-f]{24}")
PEOPLE = {"alice": "Alice Moreau", "bob": "Bob Lindqvist"}
BRIDGE_MEMBER = "bridge"  # the Trello emulator's member for its default token


class TimedGitLab(GitLabEmulator):
    """The GitLab emulator, with the wall time each write request (not GET or HEAD) arrived."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.arrivals: list[tuple[float, str, str]] = []  # (time.time(), method, path)
        self._arrivals_lock = threading.Lock()

    def _handle(self, method: str, target: str, headers: Any, body: bytes = b"") -> Any:
        path = urlsplit(target).path
        if method not in ("GET", "HEAD") and path.startswith("/api/v4/"):
            with self._arrivals_lock:
                self.arrivals.append((time.time(), method, path))
        return super()._handle(method, target, headers, body)

    def writes_since(self, index: int) -> list[tuple[float, str, str]]:
        with self._arrivals_lock:
            return self.arrivals[index:]

    def write_count(self) -> int:
        with self._arrivals_lock:
            return len(self.arrivals)


@dataclass
class Rig:
    """The bridge between the two emulators, with the board's lists and the cards of issues."""

    trello: Trello
    gitlab: TimedGitLab
    bridge: Bridge
    lists: dict[str, str]  # name -> list id
    cards: dict[int, str] = field(default_factory=dict)  # issue iid -> card id

    def settle(self, timeout: float = SETTLE_TIMEOUT) -> bool:
        """Until both sides' webhooks are delivered, the queue is empty and nothing moves."""
        emulator = self.trello.emulator
        deadline = time.monotonic() + timeout
        last: tuple[Any, ...] | None = None
        while time.monotonic() < deadline:
            left = max(0.1, deadline - time.monotonic())
            emulator.wait_webhooks_idle(left)
            self.gitlab.wait_hooks_idle(left)
            snapshot = (
                self.bridge.pending(),
                self.gitlab.write_count(),
                len(emulator.calls),
                len(emulator.webhook_deliveries),
                len(self.gitlab.hook_requests),
            )
            if snapshot[0] == 0 and snapshot == last:
                return True
            last = snapshot
            time.sleep(QUIET)
        return False

    def trello_calls(self, since: int) -> Counter[tuple[str, str]]:
        """The bridge's Trello calls since index ``since``, by (kind, method and path)."""
        return Counter(
            (call_kind(call.path), f"{call.method} {ID_RE.sub(':id', call.path[2:])}")
            for call in self.trello.emulator.calls[since:]
        )


def call_kind(path: str) -> str:
    """label: a card's labels (mirroring GitLab's); card: anything else on a card (echo);
    catch-up: reading a board's actions; one-off: the worker's cached reads, label creation."""
    if path.startswith("/1/cards"):
        return "label" if "/idLabels" in path else "card"
    if path.startswith("/1/boards/") and path.endswith("/actions"):
        return "catch-up"
    return "one-off"


def of_kind(calls: Counter[tuple[str, str]], kind: str) -> int:
    return sum(n for (k, _name), n in calls.items() if k == kind)


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise RuntimeError(f"not within {timeout:.0f} s: {what}")


def start(options: Options, issues: int) -> tuple[Rig, list[Any]]:
    """Emulators, the bridge with two-way on, its webhooks, and ``issues`` issues carded."""
    trello = start_trello(latency=LATENCY, rate_limit=LIMIT_PER_10S)
    emulator = trello.emulator
    gitlab = TimedGitLab().start()
    things: list[Any] = [trello, gitlab]
    lists = {lst["name"]: lst["id"] for lst in emulator.state()["lists"]}
    for name in ("Doing", "Review", "Someday"):
        lists[name] = emulator.add_list(trello.board_id, name)["id"]
    gitlab.add_project("acme/widget-api", project_id=PROJECT)
    for username, full_name in PEOPLE.items():
        emulator.add_member(trello.board_id, username, full_name)
        gitlab.add_user(username, full_name)
    settings = merge(
        trello.settings(secret=emulator.secret, done_list_id=lists["Done"]),
        {
            "twoway": {"enabled": "true", "callback_url": "set below"},
            "gitlab": {"url": gitlab.url, "private_token": gitlab.token},
            "lists": {"doing": lists["Doing"], "review": lists["Review"]},
        },
    )
    bridge = Bridge(options.subdir("twoway") / "service", settings)
    bridge.settings["twoway"]["callback_url"] = bridge.url + "/trello"
    things.append(bridge)
    rig = Rig(trello, gitlab, bridge, lists)
    try:
        bridge.start()
        gitlab.add_hook(PROJECT, bridge.url + "/issue")
        register_webhook(bridge)
        wait_until(
            lambda: bridge.query("SELECT value FROM meta WHERE key = 'trello_member_id'"),
            30,
            "the worker learned its Trello member",
        )
        alice = gitlab.as_user("alice")
        iids = [alice.open_issue(PROJECT, f"Issue number {n}")["iid"] for n in range(1, issues + 1)]

        def carded() -> bool:
            for card in emulator.cards():
                match = re.match(r"\[ ISSUE (\d+) \]", card["name"])
                if match:
                    rig.cards[int(match.group(1))] = card["id"]
            return all(iid in rig.cards for iid in iids)

        wait_until(carded, 30 + issues / 5, f"{issues} cards")
        rig.settle()
    except BaseException:
        for thing in reversed(things):
            thing.stop()
        raise
    return rig, things


# ---------------------------------------------------------------------------- 1. round trip


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest rank: the smallest value with at least ``pct`` % of the values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


@dataclass
class RoundTrip:
    kind: str
    seconds: list[float] = field(default_factory=list)
    missing: int = 0
    extra_writes: int = 0
    calls: Counter[tuple[str, str]] = field(default_factory=Counter)


def round_trip(rig: Rig, count: int) -> tuple[dict[str, RoundTrip], int]:
    """``count`` moves by alice, alternately into Done and Doing; the time each takes to GitLab."""
    alice = rig.trello.emulator.as_person("alice")
    kinds = {
        "into Done (issue closed)": rig.lists["Done"],
        "into Doing (label added)": rig.lists["Doing"],
    }
    results = {kind: RoundTrip(kind) for kind in kinds}
    unsettled = 0
    for number, (iid, card_id) in enumerate(list(rig.cards.items())[:count]):
        kind = list(kinds)[number % len(kinds)]
        before = rig.gitlab.write_count()
        calls_before = len(rig.trello.emulator.calls)
        moved = time.time()
        alice.move_card(card_id, kinds[kind])
        unsettled += not rig.settle()
        results[kind].calls.update(rig.trello_calls(calls_before))
        writes = [w for w in rig.gitlab.writes_since(before) if issue_of(w[2]) == iid]
        if writes:
            results[kind].seconds.append(writes[0][0] - moved)
            results[kind].extra_writes += len(writes) - 1
        else:
            results[kind].missing += 1
    return results, unsettled


def issue_of(path: str) -> int | None:
    match = ISSUE_RE.search(path)
    return int(match.group(1)) if match else None


# ---------------------------------------------------------------------------- 2. the mix


@dataclass
class CardState:
    iid: int
    card_id: str
    list_name: str
    label: str | None = None  # the mapped label the issue has (a move into Done keeps it)
    members: set[str] = field(default_factory=set)
    due: bool = False


@dataclass
class Kind:
    """One kind of card action: its share of the mix and whether it should write to GitLab."""

    name: str
    share: int  # of 100
    writes: int  # GitLab writes it should cost: 1 or 0
    fits: Callable[[CardState], bool]
    act: Callable[[Rig, CardState, random.Random], None]


MAPPED = ("Doing", "Review")
OPEN_LISTS = ("To Do", *MAPPED)


def _person(rig: Rig, name: str) -> Any:
    return rig.trello.emulator.as_person(name)


def _move(rig: Rig, state: CardState, to: str, who: str = "alice") -> None:
    _person(rig, who).move_card(state.card_id, rig.lists[to])
    state.list_name = to
    if to in MAPPED:
        state.label = to
    elif to == "To Do":
        state.label = None


def _into_mapped(rig: Rig, state: CardState, rng: random.Random) -> None:
    _move(rig, state, rng.choice([n for n in MAPPED if n != state.list_name]))


def _add_member(rig: Rig, state: CardState, rng: random.Random) -> None:
    name = rng.choice(sorted(set(PEOPLE) - state.members))
    _person(rig, "alice").add_member(state.card_id, name)
    state.members.add(name)


def _remove_member(rig: Rig, state: CardState, rng: random.Random) -> None:
    name = rng.choice(sorted(state.members))
    _person(rig, "bob").remove_member(state.card_id, name)
    state.members.discard(name)


def _set_due(rig: Rig, state: CardState, rng: random.Random) -> None:
    day = rng.randint(1, 28)
    _person(rig, "bob").set_due(state.card_id, f"2026-11-{day:02d}T17:00:00.000Z")
    state.due = True


def _clear_due(rig: Rig, state: CardState, rng: random.Random) -> None:
    _person(rig, "bob").set_due(state.card_id, None)
    state.due = False


def _comment(who: str) -> Callable[[Rig, CardState, random.Random], None]:
    def act(rig: Rig, state: CardState, rng: random.Random) -> None:
        _person(rig, who).comment(state.card_id, f"Looked at #{state.iid}: {rng.randint(1, 999)}")

    return act


def _rename(who: str) -> Callable[[Rig, CardState, random.Random], None]:
    def act(rig: Rig, state: CardState, rng: random.Random) -> None:
        name = rig.trello.emulator.card(state.card_id)["name"]
        _person(rig, who).rename(state.card_id, f"{name} ({rng.randint(1, 999)})")

    return act


def movable(state: CardState) -> bool:
    return state.list_name != "Someday"


KINDS = (
    Kind(
        "move into Done (close)",
        10,
        1,
        lambda s: s.list_name in OPEN_LISTS,
        lambda rig, s, rng: _move(rig, s, "Done"),
    ),
    Kind(
        "move out of Done into To Do (reopen)",
        6,
        1,
        lambda s: s.list_name == "Done" and s.label is None,
        lambda rig, s, rng: _move(rig, s, "To Do"),
    ),
    Kind(
        "move out of Done into To Do, issue labelled (reopen, labels removed)",
        4,
        1,
        lambda s: s.list_name == "Done" and s.label is not None,
        lambda rig, s, rng: _move(rig, s, "To Do"),
    ),
    Kind(
        "move into a [lists] list (label)",
        15,
        1,
        lambda s: s.list_name in OPEN_LISTS,
        _into_mapped,
    ),
    Kind(
        "move from a [lists] list into To Do (labels removed)",
        5,
        1,
        lambda s: s.list_name in MAPPED,
        lambda rig, s, rng: _move(rig, s, "To Do"),
    ),
    Kind("comment", 20, 1, lambda s: True, _comment("alice")),
    Kind("member added", 8, 1, lambda s: len(s.members) < len(PEOPLE), _add_member),
    Kind("member removed", 7, 1, lambda s: bool(s.members), _remove_member),
    Kind("due date set", 6, 1, lambda s: True, _set_due),
    Kind("due date cleared", 4, 1, lambda s: s.due, _clear_due),
    Kind("rename (titles stay GitLab's)", 5, 0, lambda s: True, _rename("alice")),
    Kind(
        "move into Someday (a list not configured)",
        5,
        0,
        lambda s: s.list_name in OPEN_LISTS,
        lambda rig, s, rng: _move(rig, s, "Someday"),
    ),
    Kind("comment by the bridge's own member", 3, 0, lambda s: True, _comment(BRIDGE_MEMBER)),
    Kind("rename by the bridge's own member", 2, 0, lambda s: True, _rename(BRIDGE_MEMBER)),
)


@dataclass
class Tally:
    kind: Kind
    actions: int = 0
    writes: int = 0
    extra: int = 0  # writes beyond what the action asks for: echo
    missed: int = 0  # writes the action asks for that did not happen
    write_names: Counter[str] = field(default_factory=Counter)
    calls: Counter[tuple[str, str]] = field(default_factory=Counter)


def plan(total: int, rng: random.Random) -> list[Kind]:
    """``total`` actions in the mix's proportions, shuffled."""
    kinds: list[Kind] = []
    for kind in KINDS:
        kinds += [kind] * max(1, round(kind.share * total / 100))
    rng.shuffle(kinds)
    return kinds


def mix(
    rig: Rig, states: list[CardState], total: int, seed: int = 7
) -> tuple[list[Tally], int, int]:
    """Play ``total`` actions; their tallies, how many did not settle, how many fit no card."""
    rng = random.Random(seed)
    todo = plan(total, rng)
    tallies = {kind.name: Tally(kind) for kind in KINDS}
    unsettled = 0
    deferred = 0
    while todo and deferred <= len(todo):
        kind = todo.pop(0)
        fitting = [s for s in states if kind.fits(s)]
        if not fitting:  # nothing fits yet (no member to remove, no due to clear): later
            todo.append(kind)
            deferred += 1
            continue
        deferred = 0
        state = rng.choice(fitting)
        writes_before = rig.gitlab.write_count()
        calls_before = len(rig.trello.emulator.calls)
        kind.act(rig, state, rng)
        unsettled += not rig.settle()
        tally = tallies[kind.name]
        tally.actions += 1
        writes = rig.gitlab.writes_since(writes_before)
        tally.writes += len(writes)
        tally.extra += max(0, len(writes) - kind.writes)
        tally.missed += max(0, kind.writes - len(writes))
        tally.write_names.update(
            f"{method} {'note' if path.endswith('/notes') else 'issue'}"
            for _t, method, path in writes
        )
        tally.calls.update(rig.trello_calls(calls_before))
    return list(tallies.values()), unsettled, len(todo)


# ---------------------------------------------------------------------------- the section


def listed(counts: Counter[Any], keep: Callable[[Any], bool] = lambda key: True) -> str:
    """``name xN, ...`` of the counted names (the second of a (kind, name) key)."""
    names: Counter[str] = Counter()
    for key, n in counts.items():
        if keep(key):
            names[key[1] if isinstance(key, tuple) else key] += n
    return ", ".join(f"{name} x{n}" for name, n in sorted(names.items())) or "-"


def run(options: Options) -> Section:
    issues = 30 if options.quick else 100
    actions = 50 if options.quick else 100
    quiet = 3.0 if options.quick else 10.0
    section = Section(
        "twoway", f"card move to GitLab write ({issues} moves), GitLab writes per card action"
    )
    rig, things = start(options, issues)
    with running(*things):
        trips, unsettled_trips = round_trip(rig, issues)
        states = []
        for iid, card_id in rig.cards.items():
            card = rig.trello.emulator.card(card_id)
            name = next(n for n, i in rig.lists.items() if i == card["idList"])
            label = name if name in MAPPED else None
            states.append(CardState(iid, card_id, name, label))
        tallies, unsettled_mix, unfit = mix(rig, states, actions)
        writes_before = rig.gitlab.write_count()
        calls_before = len(rig.trello.emulator.calls)
        time.sleep(quiet)
        rig.settle()
        quiet_writes = rig.gitlab.write_count() - writes_before
        quiet_calls = rig.trello_calls(calls_before)
        health = rig.bridge.health()
        limited = rig.trello.emulator.count_calls(status=429)
        log = rig.bridge.log()

    # 1. round trip
    every = [s for trip in trips.values() for s in trip.seconds]
    every_calls: Counter[tuple[str, str]] = sum((t.calls for t in trips.values()), Counter())

    def trip_row(
        what: str, seconds: list[float], missing: int, extra: int, calls: Counter[Any]
    ) -> list[str]:
        def ms(pct: float) -> str:
            value = percentile(seconds, pct)
            return fmt(None if value is None else value * 1000, 0)

        top = fmt(max(seconds) * 1000, 0) if seconds else "n/a"
        return [
            what,
            str(len(seconds)),
            ms(50),
            ms(99),
            top,
            str(missing),
            str(extra),
            str(of_kind(calls, "label")),
            str(of_kind(calls, "card")),
        ]

    rows = [trip_row(t.kind, t.seconds, t.missing, t.extra_writes, t.calls) for t in trips.values()]
    rows.append(
        trip_row(
            "all moves",
            every,
            sum(t.missing for t in trips.values()),
            sum(t.extra_writes for t in trips.values()),
            every_calls,
        )
    )
    section.tables.append(
        Table(
            [
                "card move by a person",
                "moves",
                "p50 ms",
                "p99 ms",
                "max ms",
                "no write",
                "echo writes",
                "Trello label calls",
                "other Trello card calls",
            ],
            rows,
            caption="Round trip: from the move on the Trello emulator to the GitLab write's "
            "arrival at the GitLab emulator (one move at a time, each settled before the next).",
        )
    )

    # 2. the mix
    def mix_row(what: str, group: list[Tally]) -> list[str]:
        count = sum(t.actions for t in group)
        writes = sum(t.writes for t in group)
        names: Counter[str] = sum((t.write_names for t in group), Counter())
        calls: Counter[tuple[str, str]] = sum((t.calls for t in group), Counter())
        return [
            what,
            str(count),
            str(sum(t.actions * t.kind.writes for t in group)),
            str(writes),
            f"{writes / count:.2f}" if count else "n/a",
            str(sum(t.extra for t in group)),
            str(of_kind(calls, "label")),
            str(of_kind(calls, "card")),
            str(of_kind(calls, "one-off")),
            listed(names),
            listed(calls, lambda key: key[0] in ("label", "card")),
        ]

    writing = [t for t in tallies if t.kind.writes]
    silent = [t for t in tallies if not t.kind.writes]
    section.tables.append(
        Table(
            [
                "card action",
                "actions",
                "should write",
                "GitLab writes",
                "writes/action",
                "echo writes",
                "Trello label calls",
                "other Trello card calls",
                "one-off Trello calls",
                "GitLab writes made",
                "Trello card calls made",
            ],
            [mix_row(t.kind.name, [t]) for t in tallies]
            + [
                mix_row("actions that should write", writing),
                mix_row("actions that must not write", silent),
                mix_row("mix total", tallies),
            ],
            caption=f"GitLab writes per card action: a mix of {sum(t.actions for t in tallies)} "
            "actions by people, each settled before the next; what happened in between is its "
            "cost.",
        )
    )
    should = sum(t.actions for t in writing)
    written = sum(t.writes for t in writing)
    ratio = written / should if should else None
    mix_calls: Counter[tuple[str, str]] = sum((t.calls for t in tallies), Counter())
    echo_writes = (
        sum(t.extra for t in tallies) + sum(t.extra_writes for t in trips.values()) + quiet_writes
    )
    echo_calls = of_kind(mix_calls, "card") + of_kind(every_calls, "card")
    echo_calls += of_kind(quiet_calls, "card")
    section.targets += [
        Target("GitLab writes per action that should write", ratio, "<=", 1.0),
        Target(
            "actions that should write and did not",
            float(sum(t.missed for t in tallies) + sum(t.missing for t in trips.values())),
            "<=",
            0,
            "",
            0,
        ),
        Target(
            "GitLab writes on actions that must not write",
            float(sum(t.writes for t in silent)),
            "<=",
            0,
            "",
            0,
        ),
        Target("GitLab writes caused by echo", float(echo_writes), "<=", 0, "", 0),
        Target(
            "Trello card calls caused by echo, label changes apart",
            float(echo_calls),
            "<=",
            0,
            "",
            0,
        ),
    ]
    catch_up = of_kind(mix_calls, "catch-up") + of_kind(quiet_calls, "catch-up")
    catch_up += of_kind(every_calls, "catch-up")
    section.notes += [
        f"Emulators: Trello answers each call after {LATENCY * 1000:.0f} ms and allows "
        f"{LIMIT_PER_10S} calls per 10 s per token; GitLab answers at once. Both deliver their "
        "webhooks from a background thread as soon as the change is made. The bridge runs with "
        "the shipped settings (worker poll_interval 0.2 s, SQLite store, actions_interval 60 s).",
        "Round trip timing: the move's time is time.time() just before the person's move; the "
        "write's time is time.time() when the write request arrives at the GitLab emulator "
        "(stamped by the benchmark's subclass of it, as the emulator keeps no time per write). "
        "Both clocks are the same machine's.",
        f"Not settled within {SETTLE_TIMEOUT:.0f} s: {unsettled_trips} of the round trip's moves, "
        f"{unsettled_mix} of the mix's actions. Actions of the mix that fit no card (left out): "
        f"{unfit}.",
        "Echo writes: GitLab writes beyond the one an action asks for (GitLab's webhook for the "
        "bridge's own write coming back, or the bridge's own Trello change coming back), plus "
        f"any write in {quiet:.0f} s of quiet after the mix ({quiet_writes}).",
        "Trello label calls are GitLab's webhook for the label the bridge wrote, mirrored onto "
        "the card (an add, or an add and a remove when the card comes from the other mapped "
        "list): the one echo that is meant. Other Trello card calls are echo. One-off calls are "
        "the worker's cached reads (the board's labels and members) and creating a label new "
        "to the board.",
        f"Reads of the board's actions (catching up every 60 s, deduped on the action id): "
        f"{catch_up}; Trello calls in the quiet after the mix: {listed(quiet_calls)}. "
        f"429 answers: {limited}. Dead letters at the end: {health.get('dead_letters')}; "
        f"ERROR lines in the bridge's log: {log.count(' ERROR ')}.",
        "A member change reads the GitLab user and the issue (its assignees) before its one "
        "PUT; reads are not writes. p99 is by nearest rank: the 99th of 100 sorted times "
        "(of 30, the largest).",
    ]
    reopened = [t for t in tallies if t.kind.name.startswith("move out of Done into To Do, issue")]
    jumps = sum(of_kind(t.calls, "card") for t in reopened)
    if jumps:
        section.notes.append(
            f"The other Trello card calls ({jumps}, on {sum(t.actions for t in reopened)} moves "
            "out of Done of an issue with a mapped label) are GitLab's two webhooks for the "
            "bridge's one PUT (state_event=reopen with remove_labels): GitLab sends reopen first, "
            "with the label still on, then update. When the worker applies the reopen before "
            "the update arrives, it moves the card into that label's list and, with the update, "
            "back into To Do (a PUT each); when both are merged in the queue, neither costs a "
            "call."
        )
    return section
