"""Several instances on one PostgreSQL: two real services (uWSGI, web processes and worker each,
as ``make run`` starts them) on one real database, against the Trello emulator over HTTP.
"""

from __future__ import annotations

import collections
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests

from tests.conftest import (
    ROOT,
    Service,
    issue_payload,
    wait_for,
    with_password,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def instances(make_service, pg_url) -> Callable[..., list[Service]]:
    """Start ``count`` instances named a, b, ... on one fresh database (its URL has a password)."""
    url = with_password(pg_url)

    def start(count: int = 2, **sections: dict[str, Any]) -> list[Service]:
        started = []
        for index in range(count):
            settings: dict[str, dict[str, Any]] = {
                "store": {"database": url},
                "server": {"instance": "abcdef"[index]},
            }
            for section, values in sections.items():
                settings.setdefault(section, {}).update(values)
            started.append(make_service(settings))
        return started

    return start


def post_anywhere(services: list[Service], payload: dict, key: str, first: int) -> int:
    """Post like nginx would: to one instance, to the next when it cannot be reached."""
    for attempt in range(2 * len(services)):
        service = services[(first + attempt) % len(services)]
        try:
            answer = service.post(payload, key=key, timeout=5)
        except requests.ConnectionError:
            continue
        if answer.status_code in (200, 202):
            return answer.status_code
    raise AssertionError(f"delivery {key} acknowledged by no instance")


def total_pending(services: list[Service]) -> int | None:
    for service in services:
        try:
            return int(service.health()["pending"])
        except (requests.RequestException, ValueError, KeyError):
            continue
    return None


def wait_drained(services: list[Service], cards: Callable[[], int], want: int, timeout: float):
    def done() -> bool:
        return total_pending(services) == 0 and cards() >= want

    wait_for(done, timeout, f"{want} cards and an empty queue")


def test_kill_9_of_one_instance_mid_burst_loses_and_doubles_nothing(instances, trello):
    """500 deliveries round-robin to two instances, one killed mid-way: exactly 500 cards."""
    trello.set_rate_limit(100_000)
    trello.set_latency(0.03)
    a, b = instances(2, trello={"max_requests_per_10s": 100_000})
    total = 500
    for number in range(1, total + 1):
        if number == total // 2:
            a.kill()  # web processes and worker at once, wherever they are
        post_anywhere([a, b], issue_payload(number), f"k-{number}", number % 2)
    started = time.monotonic()
    wait_drained([b], lambda: len(trello.cards()), total, timeout=90)
    names = collections.Counter(card["name"] for card in trello.cards())
    assert len(names) == total, f"{len(names)} distinct cards for {total} deliveries"
    assert max(names.values()) == 1, [n for n, c in names.items() if c > 1]
    health = b.health()
    assert health["dead_letters"] == 0 and health["cards"] == total
    assert time.monotonic() - started < 60
    assert "instance" in health and health["instance"] == "b"


def test_one_delivery_at_both_instances_at_once_is_stored_once(instances, trello):
    """The same delivery sent to both instances at the same moment, 8 times: one card."""
    a, b = instances(2)
    payload = issue_payload(7, title="Sent eight times")
    barrier = threading.Barrier(8)
    answers: list[int] = []

    def send(i: int) -> None:
        barrier.wait()
        answers.append((a, b)[i % 2].post(payload, key="same-key").status_code)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert sorted(answers) == [200] * 7 + [202]
    wait_drained([a, b], lambda: len(trello.cards()), 1, timeout=20)
    assert [c["name"] for c in trello.cards()] == ["[ ISSUE 7 ] Sent eight times"]
    for service in (a, b):  # both show the shared state, each under its own name
        health = service.health()
        assert (health["delivered"], health["pending"], health["cards"]) == (1, 0, 1)
    assert {a.health()["instance"], b.health()["instance"]} == {"a", "b"}


def test_edits_of_one_issue_over_both_instances_apply_one_at_a_time(instances, trello):
    """20 edits of one issue, out of order over two instances: newest title, no overlap."""
    trello.set_latency(0.05)
    a, b = instances(2)
    edits = [
        issue_payload(
            3,
            title=f"Version {n:02d}",
            action="open" if n == 0 else "update",
            updated_at=f"2026-05-04T09:{n:02d}:00Z",
        )
        for n in range(20)
    ]
    order = list(range(20))
    random.Random(8).shuffle(order)
    threads = [
        threading.Thread(target=(a, b)[i % 2].post, args=(edits[n],)) for i, n in enumerate(order)
    ]
    for thread in threads:
        thread.start()
        time.sleep(0.01)
    for thread in threads:
        thread.join(20)

    def settled() -> bool:
        cards = trello.cards()
        return total_pending([a, b]) == 0 and [c["name"] for c in cards] == [
            "[ ISSUE 3 ] Version 19"
        ]

    wait_for(settled, 30, "the card shows the newest title")
    (card,) = trello.cards()
    calls = sorted(
        (c for c in trello.calls if c.path == "/1/cards" or card["id"] in c.path),
        key=lambda c: c.t,
    )
    assert calls, "no call for the card"
    for before, after in zip(calls, calls[1:], strict=False):
        assert after.t >= before.done, f"{before} and {after} overlap"


def test_both_instances_share_one_trello_budget(instances, trello):
    """Two instances draining new issues at Trello's real limit get no 429 between them."""
    trello.set_rate_limit(100, 10.0)
    trello.set_latency(0.15)
    a, b = instances(2, trello={"max_requests_per_10s": 95, "concurrency": 8})
    total = 130
    for number in range(1, total + 1):
        post_anywhere([a, b], issue_payload(number), f"k-{number}", number % 2)
    wait_drained([a, b], lambda: len(trello.cards()), total, timeout=90)
    limited = trello.count_calls(status=429)
    assert limited == 0, f"{limited} answers 429 of {len(trello.calls)} calls"
    assert len(trello.cards()) == total


def test_both_instances_share_a_budget_smaller_than_configured(instances, trello):
    """Trello allows 20 per 10 s, both are configured for 90: together they keep to the 20."""
    trello.set_rate_limit(20, 10.0)
    trello.set_latency(0.1)
    a, b = instances(2)
    total = 30
    for number in range(1, total + 1):
        post_anywhere([a, b], issue_payload(number), f"k-{number}", number % 2)
    wait_drained([a, b], lambda: len(trello.cards()), total, timeout=60)
    limited = trello.count_calls(status=429)
    assert limited <= 1, f"{limited} answers 429 of {len(trello.calls)} calls"
    assert len(trello.cards()) == total


def test_an_idle_instance_wakes_on_new_work_at_once(instances, trello):
    """With the queue idle, a delivery reaches Trello well before the fallback poll would."""
    a, b = instances(2)
    time.sleep(1)  # both idle, listening
    for number in range(1, 6):
        sent = time.monotonic()
        assert (a, b)[number % 2].post(issue_payload(number)).status_code == 202
        wait_for(lambda n=number: len(trello.cards()) >= n, 10, f"card {number}")
        took = time.monotonic() - sent
        # the idle poll runs every 2 s; only a notification explains less
        assert took < 1.9, f"card {number} took {took:.2f} s"
        time.sleep(0.3)


def test_postgresql_stopped_then_started_mid_burst(make_service, pg_cluster, trello):
    """PostgreSQL down: 503, healthz 503; back: both recover alone, nothing lost or doubled."""
    from tests import postgres

    url = with_password(postgres.create_database(pg_cluster.url()))
    a, b = (
        make_service({"store": {"database": url}, "server": {"instance": name}}) for name in "ab"
    )
    acked: list[int] = []

    def send(numbers: range) -> None:
        for number in numbers:
            service = (a, b)[number % 2]
            try:
                answer = service.post(issue_payload(number), key=f"k-{number}", timeout=10)
            except requests.RequestException:
                continue
            if answer.status_code in (200, 202):
                acked.append(number)
            else:
                assert answer.status_code == 503, answer.text
                assert "nothing was accepted" in answer.text

    send(range(1, 41))
    pg_cluster.stop()
    down = [s.post(issue_payload(100 + i), key=f"down-{i}") for i, s in enumerate((a, b) * 3)]
    assert {r.status_code for r in down} == {503}
    for service in (a, b):
        answer = requests.get(service.url + "/healthz", timeout=10)
        assert answer.status_code == 503 and answer.json()["instance"] in "ab"
    pg_cluster.start()
    back = time.monotonic()
    for service in (a, b):
        wait_for(
            lambda s=service: requests.get(s.url + "/healthz", timeout=5).status_code == 200,
            10,
            "healthz 200 again",
        )
    assert time.monotonic() - back < 10
    # a restart in the middle of a burst
    burst = threading.Thread(target=send, args=(range(41, 161),))
    burst.start()
    time.sleep(0.3)
    pg_cluster.restart()
    burst.join(120)
    send(range(161, 181))
    assert len(acked) >= 60
    wait_for(
        lambda: total_pending([a, b]) == 0 and len(trello.cards()) >= len(acked),
        60,
        "every acknowledged delivery on the board",
    )
    names = collections.Counter(card["name"] for card in trello.cards())
    assert max(names.values()) == 1, "a card was created twice"
    made = {int(name.split()[2]) for name in names}
    assert set(acked) <= made, f"acknowledged but lost: {sorted(set(acked) - made)}"


def test_status_and_replay_work_from_any_instance(instances, trello):
    """status and replay of one instance's configuration show and act on the shared state."""
    a, b = instances(2)
    trello.fault("status", status=400, method="POST", path_prefix="/cards", count=1)
    assert a.post(issue_payload(1)).status_code == 202
    wait_for(lambda: b.health()["dead_letters"] == 1, 20, "one dead letter")
    env = {"GITLAB2TRELLO_CONFIG": str(b.config_path), "PATH": "/usr/bin:/bin"}
    status = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    assert "postgresql" in status.stdout and "dead letters      1" in status.stdout
    assert "s3cret" not in status.stdout + status.stderr
    replay = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "replay", "--all"],
        env={"GITLAB2TRELLO_CONFIG": str(a.config_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert replay.returncode == 0, replay.stderr
    wait_drained([a, b], lambda: len(trello.cards()), 1, timeout=20)
    assert a.health()["dead_letters"] == 0


def test_a_hung_postgresql_never_holds_a_request_past_gitlabs_10_s(make_service, pg_cluster):
    """PostgreSQL frozen (SIGSTOP): POST /issue answers 503 well within 10 s; thawed: 202."""
    import os
    import signal

    from tests import postgres

    url = postgres.create_database(pg_cluster.url())
    service = make_service({"store": {"database": url}})
    assert service.post(issue_payload(1)).status_code == 202
    postmaster = int((pg_cluster.data / "postmaster.pid").read_text().split()[0])
    children = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True, text=True)
    pids = [postmaster, *(int(pid) for pid in children.stdout.split())]
    assert len(pids) > 3  # the postmaster, its helpers and the service's backends
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        for number in (2, 3):
            started = time.monotonic()
            answer = service.post(issue_payload(number), timeout=15)
            took = time.monotonic() - started
            assert answer.status_code == 503, answer.text
            assert took < 9, f"answered after {took:.1f} s"
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    wait_for(lambda: service.post(issue_payload(4)).status_code == 202, 15, "202 again")
