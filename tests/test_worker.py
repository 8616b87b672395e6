"""The worker in process, on both stores: claim, plan, run, record; the retry decision; and the
reconciler's one-at-a-time rule. Trello and GitLab are the emulators, over HTTP on loopback."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import config
import retry
import trello
from events import IssueEvent, Label
from store import Store
from store.postgres import PostgresStore
from store.sqlite import SqliteStore
from tests.conftest import wait_for
from tests.gitlab_emulator import GitLabEmulator
from worker import Worker

POLICY = {"retry_initial_wait": 1.0, "retry_max_wait": 60.0, "give_up_after": 3600.0}


# ---------------------------------------------------------------------------- retry.decide


def test_transient_failures_back_off_doubling_up_to_the_cap():
    """A transient failure waits initial * 2**attempts, capped at retry_max_wait, jittered."""
    waits = [
        retry.decide(
            reason="503",
            transient=True,
            attempts=n,
            first_failure_at=100.0,
            now=100.0,
            policy=POLICY,
            jitter=lambda: 1.0,
        ).wait
        for n in range(8)
    ]
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60]
    half = retry.decide(
        reason="503",
        transient=True,
        attempts=2,
        first_failure_at=None,
        now=10.0,
        policy=POLICY,
        jitter=lambda: 0.5,
    )
    assert half == retry.Backoff(at=12.0, wait=2.0)


def test_permanent_failures_and_old_ones_give_up():
    """A permanent failure is a dead letter at once; a transient one after give_up_after."""
    assert retry.decide(
        reason="HTTP 400",
        transient=False,
        attempts=0,
        first_failure_at=None,
        now=1.0,
        policy=POLICY,
    ) == retry.GiveUp("HTTP 400")
    late = retry.decide(
        reason="HTTP 503",
        transient=True,
        attempts=30,
        first_failure_at=0.0,
        now=3600.0,
        policy=POLICY,
    )
    assert isinstance(late, retry.GiveUp) and late.reason == "gave up after 3600 s: HTTP 503"


# ---------------------------------------------------------------------------- the worker


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path: Path):
    """A set-up store of each backend."""
    if request.param == "sqlite":
        db: Store = SqliteStore(tmp_path / "bridge.sqlite3", synchronous="NORMAL")
    else:
        db = PostgresStore(request.getfixturevalue("pg_url"), pool_size=4)
    db.setup()
    yield db
    db.close()


def make_config(tmp_path: Path, emulator, **sections: dict) -> config.Config:
    values = {
        "trello": {
            "api_url": emulator.url,
            "key": emulator.key,
            "token": emulator.token,
            "list_id": emulator.list_id,
            "read_timeout": "2",
            "connect_timeout": "1",
        },
        "worker": {"poll_interval": "0.05"},
    }
    for section, extra in sections.items():
        values.setdefault(section, {}).update({k: str(v) for k, v in extra.items()})
    text = "".join(
        f"[{s}]\n" + "".join(f"{k} = {v}\n" for k, v in kv.items()) for s, kv in values.items()
    )
    path = tmp_path / "worker.ini"
    path.write_text(text, encoding="utf-8")
    return config.load(path, environ={})


def client_for(cfg: config.Config) -> trello.Client:
    t = cfg.trello
    return trello.Client(t["api_url"], t["key"], t["token"], read_timeout=2, retry_attempts=1)


def queue(
    db: Store,
    iid: int,
    title: str,
    key: str | None = None,
    updated: float = 1.0,
    labels: tuple[str, ...] = (),
    action: str = "open",
) -> int:
    event = IssueEvent(
        instance="https://gitlab.example.com",
        project_id=42,
        iid=iid,
        title=title,
        url=f"https://gitlab.example.com/acme/widget-api/-/issues/{iid}",
        action=action,
        state="opened",
        updated_at=updated,
        labels=tuple(Label(name) for name in labels),
    )
    delivery_id, _ = db.add_delivery(
        key or f"k{iid}-{updated}", event.issue_key, event.to_json(), updated_at=updated
    )
    return delivery_id


def test_one_claim_becomes_one_card_and_is_recorded(store, trello, tmp_path):
    """Processing a claim creates the card with one call and records it in the store."""
    worker = Worker(make_config(tmp_path, trello), store, client_for(make_config(tmp_path, trello)))
    queue(store, 1, "First")
    (claim,) = store.claim(time.time())
    trello.reset_calls()
    worker.process(claim)
    store.release(claim)
    (card,) = trello.cards()
    assert card["name"] == "[ ISSUE 1 ] First"
    assert trello.count_calls("POST", "/cards") == 1
    row = store.issue(claim.issue_key)
    assert row is not None and row.card_id == card["id"] and row.creating_at is None
    assert store.health()["pending"] == 0


def test_queued_events_of_one_issue_merge_into_one_update(store, trello, tmp_path):
    """Three queued edits of one issue cost one create: the newest state wins."""
    cfg = make_config(tmp_path, trello)
    worker = Worker(cfg, store, client_for(cfg))
    for n, title in enumerate(("One", "Two", "Three"), start=1):
        queue(store, 5, title, updated=float(n))
    (claim,) = store.claim(time.time())
    trello.reset_calls()
    worker.process(claim)
    assert [c["name"] for c in trello.cards()] == ["[ ISSUE 5 ] Three"]
    assert trello.count_calls("POST", "/cards") == 1 and trello.count_calls("PUT") == 0


def test_a_create_sent_by_a_dead_worker_is_found_not_repeated(store, trello, tmp_path):
    """A create sent but never recorded (the worker died) is found on the board by URL."""
    cfg = make_config(tmp_path, trello)
    queue(store, 2, "Created before the crash")
    (claim,) = store.claim(time.time())
    store.mark_creating(claim)  # what the dead worker wrote before its create
    url = "https://gitlab.example.com/acme/widget-api/-/issues/2"
    trello.add_card(trello.list_id, "[ ISSUE 2 ] Created before the crash", desc=f"{url}\n")
    store.release(claim)
    # a new worker (a restarted or another instance), its clock past the create's timeout
    worker = Worker(cfg, store, client_for(cfg), clock=lambda: time.time() + 60)
    (claim,) = store.claim(time.time())
    trello.reset_calls()
    worker.process(claim)
    assert len(trello.cards()) == 1
    assert trello.count_calls("POST", "/cards") == 0
    assert store.issue(claim.issue_key).card_id == trello.cards()[0]["id"]


def test_a_rejected_create_is_a_dead_letter_and_a_failing_one_backs_off(store, trello, tmp_path):
    """Trello's 400 makes a dead letter; its 503 backs the issue off with the reason kept."""
    cfg = make_config(tmp_path, trello)
    worker = Worker(cfg, store, client_for(cfg))
    queue(store, 3, "Refused")
    trello.fault("status", status=400, method="POST", path_prefix="/cards", count=1)
    (claim,) = store.claim(time.time())
    worker.process(claim)
    store.release(claim)
    (letter,) = store.dead_letters()
    assert "400" in letter["reason"] and letter["issue_key"] == claim.issue_key
    queue(store, 4, "Unavailable")
    trello.fault("status", status=503, count=10)
    (claim,) = store.claim(time.time())
    worker.process(claim)
    store.release(claim)
    row = store.issue(claim.issue_key)
    assert row is not None and row.attempts == 1 and store.health()["pending"] == 1
    assert store.claim(time.time()) == []  # backing off


def test_the_loop_drains_the_queue_and_stops(store, trello, tmp_path):
    """Worker.run delivers everything queued, then returns when stopped."""
    cfg = make_config(tmp_path, trello)
    worker = Worker(cfg, store, client_for(cfg))
    for iid in range(1, 21):
        queue(store, iid, f"Issue {iid}")
    stop = threading.Event()
    runner = threading.Thread(target=worker.run, args=(stop,))
    runner.start()
    try:
        wait_for(lambda: store.health()["pending"] == 0, 30, "queue drained")
    finally:
        stop.set()
        runner.join(10)
    assert not runner.is_alive()
    assert len(trello.cards()) == 20


def test_reconciliation_runs_on_one_instance_at_a_time(store, trello, tmp_path):
    """While another instance holds the reconcile turn, a worker skips its passes."""
    with GitLabEmulator() as gitlab:
        gitlab.add_project("acme/widget-api", project_id=42)
        cfg = make_config(
            tmp_path,
            trello,
            gitlab={
                "url": gitlab.url,
                "private_token": gitlab.token,
                "projects": "42",
                "reconcile_interval": 0.3,
            },
        )
        other = (
            SqliteStore(store.path) if isinstance(store, SqliteStore) else PostgresStore(store.url)
        )
        worker = Worker(cfg, store, client_for(cfg))
        stop = threading.Event()
        runner = threading.Thread(target=worker.run, args=(stop,))
        try:
            with other.exclusive("reconcile") as held:
                assert held
                runner.start()
                time.sleep(1.5)
                assert not [c for c in gitlab.calls if "/issues" in c.path]
            wait_for(lambda: [c for c in gitlab.calls if "/issues" in c.path], 10, "a pass")
            wait_for(lambda: store.meta("last_reconcile_at"), 10, "the pass recorded")
        finally:
            stop.set()
            if runner.is_alive():
                runner.join(10)
            other.close()


def queue_labelled(
    db: Store, iid: int, labels: tuple[str, ...], updated: float, title: str = "Labelled"
) -> None:
    queue(db, iid, title, f"l{iid}-{updated}", updated, labels, action="update")


def apply_next(db: Store, worker: Worker) -> None:
    (claim,) = db.claim(time.time())
    worker.process(claim)
    db.release(claim)


@pytest.mark.parametrize("two_way", [False, True])
def test_a_label_swap_is_one_put_with_two_way_and_add_plus_remove_without(
    store, trello, tmp_path, two_way
):
    """A card labelled bug by GitLab gets customer by hand, which Trello's answer to the next
    update (a title edit) shows the bridge; then GitLab swaps bug for feature. With two-way
    sync the swap is one PUT of the whole set; without, an add and a remove. The hand label
    stays either way."""
    sections = (
        {
            "twoway": {"enabled": "true", "callback_url": "http://x/trello"},
            "trello": {"secret": "s"},
        }
        if two_way
        else {}
    )
    cfg = make_config(tmp_path, trello, **sections)
    worker = Worker(cfg, store, client_for(cfg))
    queue_labelled(store, 7, ("bug",), 1.0)
    apply_next(store, worker)
    (card,) = trello.cards()
    trello.add_member(trello.board_id, "alice", "Alice")
    customer = trello.add_label(trello.board_id, "customer", "red")["id"]
    trello.as_person("alice").add_label(card["id"], customer)
    queue_labelled(store, 7, ("bug",), 2.0, title="Renamed")
    apply_next(store, worker)
    trello.reset_calls()
    queue_labelled(store, 7, ("feature",), 3.0, title="Renamed")
    apply_next(store, worker)
    by_id = {label["id"]: label["name"] for label in trello.labels(trello.board_id)}
    assert {by_id[i] for i in trello.card(card["id"])["idLabels"]} == {"customer", "feature"}
    card_calls = [(c.method, c.path) for c in trello.calls if c.path.startswith("/1/cards")]
    if two_way:
        assert card_calls == [("PUT", f"/1/cards/{card['id']}")]
    else:
        assert sorted(method for method, _ in card_calls) == ["DELETE", "POST"]
