"""The pacer learns Trello's budget from the answers' headers (a fake clock, no network)."""

from __future__ import annotations

import collections

import pytest

import trello

LATENCY = 0.15


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class FakeTrello:
    """Trello's sliding windows as the contract describes them: ``limit`` calls per
    ``interval`` for the token, ``key_limit`` for the key; every answer tells max, remaining
    (after this call) and interval-ms of both. ``others`` are send times of another integration
    on the same token, ``other_tokens`` of other tokens of the same key."""

    def __init__(
        self,
        clock: Clock,
        limit: int = 100,
        interval: float = 10.0,
        key_limit: int = 300,
        others: list[float] | None = None,
        other_tokens: list[float] | None = None,
    ) -> None:
        self.clock = clock
        self.limit, self.interval, self.key_limit = limit, interval, key_limit
        self.token: collections.deque[float] = collections.deque()
        self.key: collections.deque[float] = collections.deque()
        self.others = collections.deque(sorted(others or []))
        self.other_tokens = collections.deque(sorted(other_tokens or []))
        self.statuses: list[int] = []  # the bridge's answers
        self.others_limited = 0

    def _trim(self, now: float) -> None:
        for window in (self.token, self.key):
            while window and window[0] <= now - self.interval:
                window.popleft()

    def _admit(self, now: float, token: bool = True) -> bool:
        self._trim(now)
        if (token and len(self.token) >= self.limit) or len(self.key) >= self.key_limit:
            return False
        if token:
            self.token.append(now)
        self.key.append(now)
        return True

    def _catch_up(self, now: float) -> None:
        """The other callers' calls up to ``now``, in time order."""
        while True:
            due = [q for q in (self.others, self.other_tokens) if q and q[0] <= now]
            if not due:
                return
            queue = min(due, key=lambda q: q[0])
            at = queue.popleft()
            if not self._admit(at, token=queue is self.others):
                self.others_limited += 1

    def call(self) -> tuple[dict[str, str], int]:
        now = self.clock.now
        self._catch_up(now)
        status = 200 if self._admit(now) else 429
        self.statuses.append(status)
        headers = {}
        for scope, window, most in (
            ("token", self.token, self.limit),
            ("key", self.key, self.key_limit),
        ):
            headers[f"x-rate-limit-api-{scope}-interval-ms"] = str(int(self.interval * 1000))
            headers[f"x-rate-limit-api-{scope}-max"] = str(most)
            headers[f"x-rate-limit-api-{scope}-remaining"] = str(max(0, most - len(window)))
        return headers, status


def send(pacer: trello.Pacer, server: FakeTrello, clock: Clock) -> float:
    """One call: paced, reaching Trello after LATENCY, answered at once; its send time."""
    pacer.acquire()
    sent = clock.now
    clock.sleep(LATENCY)
    headers, status = server.call()
    pacer.observe(headers, status, LATENCY)
    return sent


def efficiency(times: list[float], rate: float) -> float:
    """The seconds the calls take at ``rate`` a second over the seconds they took."""
    return len(times) / rate / (times[-1] + LATENCY)


def most_in_a_window(times: list[float], interval: float = 10.0) -> int:
    return max(sum(1 for t in times if start <= t < start + interval) for start in times)


def test_a_budget_below_the_configured_pace_is_learned_from_the_first_answer():
    clock = Clock()
    server = FakeTrello(clock, limit=20)
    pacer = trello.Pacer(limit=90, clock=clock, sleep=clock.sleep)
    times = [send(pacer, server, clock) for _ in range(100)]
    assert server.statuses.count(429) == 0
    limit, interval, gap = pacer.pace()
    assert limit == 20 and interval == pytest.approx(10.0 + pacer.guard) and gap == 0
    assert most_in_a_window(times) == 20
    assert efficiency(times, 2.0) >= 0.85
    assert times[19] < 10.0 <= times[20], "a window's budget goes at once when nobody else spends"


def test_the_configured_pace_holds_when_trello_allows_more():
    clock = Clock()
    server = FakeTrello(clock, limit=100)
    pacer = trello.Pacer(limit=5, clock=clock, sleep=clock.sleep)
    times = [send(pacer, server, clock) for _ in range(20)]
    assert pacer.pace() == (5, 10.0, 0.0)
    assert times[4] < 10.0 <= times[5]


def test_the_calls_others_spend_are_left_to_them_and_the_rest_spread():
    """Another integration spends 5 of the token's 20 per window: the bridge takes 15, evenly."""
    clock = Clock()
    others = [2.1 * n - 20 for n in range(200)]  # already under way; at most 5 in any 10 s
    server = FakeTrello(clock, limit=20, others=others)
    pacer = trello.Pacer(limit=90, clock=clock, sleep=clock.sleep)
    times = [send(pacer, server, clock) for _ in range(120)]
    assert server.statuses.count(429) == 0
    assert server.others_limited == 0, "the other integration was squeezed out"
    limit, interval, gap = pacer.pace()
    assert limit == 15
    assert gap == pytest.approx(interval / 15)
    later = [t for t in times if t >= 10.0]
    assert min(b - a for a, b in zip(later, later[1:], strict=False)) >= gap - 1e-9
    assert efficiency(times, (20 - 10 / 2.1) / 10) >= 0.85


def test_two_instances_share_what_is_left():
    """Two pacers on one window (the shared store's) keep their calls together inside it."""
    clock = Clock()
    others = [2.1 * n - 20 for n in range(200)]
    server = FakeTrello(clock, limit=20, others=others)
    window = trello.LocalWindow(clock)
    pacers = [
        trello.Pacer(limit=90, clock=clock, sleep=clock.sleep, window=window) for _ in range(2)
    ]
    times = [send(pacers[n % 2], server, clock) for n in range(120)]
    assert server.statuses.count(429) == 0
    assert server.others_limited == 0
    assert [p.pace()[0] for p in pacers] == [15, 15]
    assert efficiency(times, (20 - 10 / 2.1) / 10) >= 0.85


def test_the_keys_budget_counts_too():
    """Other tokens of the same API key spend 250 of its 300: 50 are left for this token."""
    clock = Clock()
    busy = [n * 10.0 / 250 - 20 for n in range(250 * 8)]  # 250 per 10 s
    server = FakeTrello(clock, limit=100, key_limit=300, other_tokens=busy)
    pacer = trello.Pacer(limit=90, clock=clock, sleep=clock.sleep)
    for _ in range(150):
        send(pacer, server, clock)
    assert server.statuses.count(429) == 0
    assert pacer.pace()[0] == 50


def test_what_others_spent_is_forgotten_after_a_window():
    clock = Clock()
    pacer = trello.Pacer(limit=90, clock=clock, sleep=clock.sleep)
    pacer.acquire()
    headers = {
        "x-rate-limit-api-token-interval-ms": "10000",
        "x-rate-limit-api-token-max": "100",
        "x-rate-limit-api-token-remaining": "39",  # 60 spent by others, 1 by this call
    }
    pacer.observe(headers, 200)
    assert pacer.pace()[0] == 40
    clock.sleep(10.0)
    assert pacer.pace() == (90, 10.0, 0.0)


def test_one_call_at_a_time_until_an_answer_tells_the_budget():
    clock = Clock()
    pacer = trello.Pacer(limit=90, clock=clock, sleep=clock.sleep)
    pacer.acquire()
    pacer.acquire()  # no answer yet: waits for the first call's, at most probe_timeout
    assert clock.now == pytest.approx(pacer.probe_timeout)
    pacer.unanswered()  # that one timed out: the next goes at once
    pacer.acquire()
    assert clock.now == pytest.approx(pacer.probe_timeout)
    pacer.observe({}, 200)
    for _ in range(10):
        pacer.acquire()
    assert clock.now == pytest.approx(pacer.probe_timeout)
    clock.sleep(10.0)  # a window without answers: one at a time again
    pacer.acquire()
    start = clock.now
    pacer.acquire()
    assert clock.now == pytest.approx(start + pacer.probe_timeout)


def test_a_429_still_pauses_for_retry_after():
    clock = Clock()
    pacer = trello.Pacer(clock=clock, sleep=clock.sleep)
    pacer.acquire()
    pacer.observe({"retry-after": "3"}, 429)
    pacer.acquire()
    assert 3.0 <= clock.now <= 3.6 + 1e-9


def test_a_window_counts_only_its_span_and_waits_for_enough_to_leave():
    clock = Clock()
    window = trello.LocalWindow(clock)
    for _ in range(5):
        assert window.take(5, 10.0) == 0
        clock.sleep(1.0)
    assert window.count(2.5) == 2
    assert window.count(3.5, 1.5) == 2
    # the limit dropped to 2: the third-newest call must leave first
    assert window.take(2, 10.0) == pytest.approx(3.0 + 10.0 - 5.0)
