"""Fault campaign: kills, a misbehaving Trello, a full disk, SIGTERM under load.

``make test`` runs the short version; ``make soak`` runs it with ``--soak`` (1,000 deliveries and
five kills instead of 200 and two).
"""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import issue_payload, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def campaign(request):
    """(deliveries, kills) for this run."""
    return (1000, 5) if request.config.getoption("--soak") else (200, 2)


def post_until_acknowledged(service, payload, key: str, deadline: float) -> int:
    """Send like a person pressing "Resend" until the bridge acknowledges (same key)."""
    while time.monotonic() < deadline:
        try:
            answer = service.post(payload, key=key, timeout=5)
        except requests.ConnectionError:
            time.sleep(0.05)
            continue
        if answer.status_code in (200, 202):
            return answer.status_code
        time.sleep(0.05)
    raise AssertionError(f"delivery {key} never acknowledged")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sigkill_at_random_moments_loses_and_doubles_nothing(
    request, make_service, trello, campaign, backend
):
    """Deliveries during repeated kill -9 and restarts: exactly one card per delivery."""
    settings = {}
    if backend == "postgresql":
        settings = {"store": {"database": request.getfixturevalue("pg_url")}}
    service = make_service(settings)
    total, kills = campaign
    trello.set_latency(0.01)
    rng = random.Random(20261129)
    kill_at = sorted(rng.sample(range(10, total - 10), kills))
    deadline = time.monotonic() + 600
    restart: threading.Thread | None = None
    for number in range(1, total + 1):
        post_until_acknowledged(service, issue_payload(number), f"k-{number}", deadline)
        if kill_at and number == kill_at[0]:
            kill_at.pop(0)
            if restart is not None:
                restart.join()
            time.sleep(rng.random() * 0.3)  # somewhere inside the worker's delivering
            service.kill()
            restart = threading.Thread(target=service.start, kwargs={"wait": False})
            restart.start()
    if restart is not None:
        restart.join()
    service.wait_ready()
    service.wait_idle(timeout=300)
    names = [card["name"] for card in trello.cards()]
    assert len(names) == total, f"{len(names)} cards for {total} deliveries"
    assert len(set(names)) == total, "a card was created twice"
    assert service.health()["dead_letters"] == 0


def test_misbehaving_trello_then_recovery_creates_each_card_once(make_service, trello):
    """Slow answers, resets, 500/502/503/429 and malformed JSON, then recovery: one card each."""
    service = make_service({"trello": {"read_timeout": 0.5}})
    trello.fault("slow", delay=1.0, count=6)
    trello.fault("reset", count=6)
    trello.fault("apply_then_reset", method="POST", path_prefix="/cards", count=3)
    for status in (500, 502, 503, 429):
        trello.fault("status", status=status, count=3)
    trello.fault("malformed", count=4)
    for number in range(1, 41):
        assert service.post(issue_payload(number)).status_code == 202
    service.wait_idle(timeout=120)
    names = [card["name"] for card in trello.cards()]
    assert sorted(names) == sorted(f"[ ISSUE {n} ] Issue number {n}" for n in range(1, 41))
    assert service.health()["dead_letters"] == 0
    assert trello.count_calls(status=0) > 0, "resets were really injected"


@pytest.fixture
def tiny_disk(tmp_path):
    """An 8 MiB filesystem (tmpfs; needs root), unmounted afterwards."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_answers_503_and_keeps_what_was_acknowledged(make_service, trello, tiny_disk):
    """When the disk fills, new deliveries get 503; every acknowledged one still gets its card."""
    service = make_service(
        {"store": {"database": str(tiny_disk / "db.sqlite3")}, "worker": {"enabled": "false"}}
    )
    filler = tiny_disk / "filler"
    acknowledged: list[int] = []
    refused = 0
    body = "x" * 20000
    with filler.open("wb") as handle:
        handle.write(b"\0" * (6 * 1024 * 1024 + 512 * 1024))
    for number in range(1, 400):
        answer = service.post(issue_payload(number, description=body))
        if answer.status_code == 202:
            acknowledged.append(number)
        else:
            assert answer.status_code == 503, answer.text
            refused += 1
            if refused >= 5:
                break
    assert acknowledged, "some deliveries fit before the disk filled"
    assert refused >= 5, "the disk never filled"
    assert requests.get(service.url + "/hello/x", timeout=5).status_code == 200
    filler.unlink()
    service.stop()
    service.settings["worker"]["enabled"] = "true"
    service.start()
    service.wait_idle(timeout=60)
    names = sorted(card["name"] for card in trello.cards())
    assert names == sorted(f"[ ISSUE {n} ] Issue number {n}" for n in acknowledged)


def test_sigterm_during_a_burst_drains_and_exits(service, trello):
    """SIGTERM while cards are being made: the service exits promptly, in-flight work finished."""
    trello.set_latency(0.3)
    for number in range(1, 31):
        assert service.post(issue_payload(number)).status_code == 202
    wait_for(lambda: len(trello.cards()) >= 3, message="delivering")
    started = time.monotonic()
    service.proc.send_signal(signal.SIGTERM)
    service.proc.wait(20)
    assert time.monotonic() - started < 15
    log = service.log()
    assert "worker stopping: finishing" in log and "worker stopped" in log
    made = len(trello.cards())
    assert made < 30, "the burst was still under way"
    service.start()
    service.wait_idle(timeout=60)
    names = [card["name"] for card in trello.cards()]
    assert len(names) == 30 and len(set(names)) == 30


def test_sqlite_file_is_private(service):
    """The database file is created with mode 0600."""
    assert service.post(issue_payload(1)).status_code == 202
    assert Path(service.database).stat().st_mode & 0o777 == 0o600
