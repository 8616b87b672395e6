"""Unit tests of store.py on a real SQLite file in a temporary folder."""

import json
import sqlite3
import stat
import threading
import time
from pathlib import Path

import pytest

from store import Store, StoreError

ISSUE_A = "https://gitlab.example.com|42|1"
ISSUE_B = "https://gitlab.example.com|42|2"
ISSUE_C = "https://gitlab.example.com|42|3"
EVENT = json.dumps({"iid": 1})


@pytest.fixture
def store(tmp_path: Path):
    """A set-up store in a nested folder of tmp_path."""
    db = Store(tmp_path / "var" / "db" / "bridge.sqlite3", synchronous="NORMAL")
    db.setup()
    yield db
    db.close()


def add(db: Store, key: str, issue: str = ISSUE_A, **kw) -> int:
    delivery_id, created = db.add_delivery(key, issue, EVENT, **kw)
    assert created
    return delivery_id


def rows(db: Store, sql: str, *args) -> list[tuple]:
    with sqlite3.connect(db.path) as conn:
        return conn.execute(sql, args).fetchall()


def run_threads(count: int, target) -> list:
    """Run target(i) in count threads started together; return results in index order."""
    barrier = threading.Barrier(count)
    results: list = [None] * count
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            barrier.wait()
            results[i] = target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    assert all(not thread.is_alive() for thread in threads)
    return results


# ---------------------------------------------------------------------------- setup


def test_setup_creates_folders_and_private_file(tmp_path):
    """setup creates missing folders, the file (and its WAL and lock files) 0600, the schema."""
    path = tmp_path / "a" / "b" / "bridge.sqlite3"
    db = Store(path)
    db.setup()
    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    tables = {name for (name,) in rows(db, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"deliveries", "issues", "meta"} <= tables
    assert db.meta("schema_version") == "1"
    assert rows(db, "PRAGMA journal_mode") == [("wal",)]
    db.add_delivery("key:1", ISSUE_A, EVENT)
    for companion in ("-wal", "-shm", ".lock"):
        mode = Path(f"{path}{companion}").stat().st_mode
        assert stat.S_IMODE(mode) == 0o600, companion
    db.close()


def test_setup_twice_keeps_data(store):
    """Running setup again on an existing database keeps what it holds."""
    delivery_id = add(store, "k1")
    store.setup()
    assert [p.id for p in store.pending_for(ISSUE_A)] == [delivery_id]


def test_store_on_a_directory_raises_store_error(tmp_path):
    """A database path that is a directory gives StoreError from setup and from health."""
    folder = tmp_path / "dir.sqlite3"
    folder.mkdir()
    db = Store(folder)
    with pytest.raises(StoreError, match="dir.sqlite3"):
        db.setup()
    with pytest.raises(StoreError):
        db.health()


def test_store_under_a_file_raises_store_error(tmp_path):
    """A database path whose parent is a regular file gives StoreError from setup and health."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    db = Store(blocker / "bridge.sqlite3")
    with pytest.raises(StoreError, match="cannot use database"):
        db.setup()
    with pytest.raises(StoreError):
        db.health()


def test_health_of_file_without_schema_raises_store_error(tmp_path):
    """health on a file that was never set up raises StoreError, not sqlite3.Error."""
    path = tmp_path / "empty.sqlite3"
    path.touch()
    db = Store(path)
    with pytest.raises(StoreError, match="cannot read database"):
        db.health()
    db.close()


# ---------------------------------------------------------------------------- deliveries


def test_add_delivery_dedupes_by_key(store):
    """The first add of a key creates a row; the same key again returns that id, not created."""
    first = store.add_delivery("key:a", ISSUE_A, EVENT, updated_at=5.0, now=100.0)
    again = store.add_delivery("key:a", ISSUE_A, json.dumps({"other": True}), now=200.0)
    other = store.add_delivery("key:b", ISSUE_A, EVENT, now=300.0)
    assert first[1] is True
    assert again == (first[0], False)
    assert other[1] is True and other[0] != first[0]
    assert rows(store, "SELECT COUNT(*) FROM deliveries") == [(2,)]
    assert rows(store, "SELECT event, received_at FROM deliveries WHERE id = ?", first[0]) == [
        (EVENT, 100.0)
    ]


@pytest.mark.parametrize("group_commit", [True, False])
def test_concurrent_adds_of_same_key_create_one(tmp_path, group_commit):
    """Eight threads adding the same key at once create exactly one row and share its id."""
    db = Store(tmp_path / "bridge.sqlite3", synchronous="NORMAL", group_commit=group_commit)
    db.setup()
    results = run_threads(8, lambda i: db.add_delivery("key:same", ISSUE_A, EVENT))
    assert sum(created for _, created in results) == 1
    assert len({delivery_id for delivery_id, _ in results}) == 1
    assert rows(db, "SELECT COUNT(*) FROM deliveries") == [(1,)]


def test_concurrent_unique_adds_are_group_committed(tmp_path):
    """Fifty threads with distinct keys get 50 rows and 50 ids, several sharing one commit."""
    db = Store(tmp_path / "bridge.sqlite3", synchronous="NORMAL")
    db.setup()
    batches: list[int] = []
    original = db._commit_batch

    def slow_commit(batch):
        batches.append(len(batch))
        time.sleep(0.01)  # let other threads queue behind the writer
        original(batch)

    db._commit_batch = slow_commit
    results = run_threads(50, lambda i: db.add_delivery(f"key:{i}", ISSUE_A, EVENT))
    assert all(created for _, created in results)
    assert len({delivery_id for delivery_id, _ in results}) == 50
    assert rows(db, "SELECT COUNT(*), COUNT(DISTINCT dedupe_key) FROM deliveries") == [(50, 50)]
    assert sum(batches) == 50
    assert max(batches) > 1
    assert len(batches) < 50


def test_failed_batch_raises_store_error_for_its_waiters(tmp_path):
    """When the database cannot be written, add_delivery raises StoreError."""
    folder = tmp_path / "dir.sqlite3"
    folder.mkdir()
    db = Store(folder)
    with pytest.raises(StoreError):
        db.add_delivery("key:x", ISSUE_A, EVENT)


# ---------------------------------------------------------------------------- the worker


def test_pending_for_lists_an_issues_deliveries_in_order(store):
    """pending_for gives one issue's pending deliveries oldest first, with their fields."""
    first = add(store, "k1", ISSUE_A, updated_at=10.0, now=1.0)
    add(store, "k2", ISSUE_B)
    second = add(store, "k3", ISSUE_A, kind="note", updated_at=None, now=3.0)
    pending = store.pending_for(ISSUE_A)
    assert [p.id for p in pending] == [first, second]
    assert (pending[0].kind, pending[0].updated_at, pending[0].received_at) == ("issue", 10.0, 1.0)
    assert (pending[1].kind, pending[1].updated_at, pending[1].attempts) == ("note", None, 0)
    assert pending[0].event == EVENT


def test_due_issues_orders_by_oldest_delivery(store):
    """due_issues lists each issue once, the one with the oldest pending delivery first."""
    add(store, "k1", ISSUE_B)
    add(store, "k2", ISSUE_A)
    add(store, "k3", ISSUE_B)
    add(store, "k4", ISSUE_C)
    assert store.due_issues(now=time.time()) == [ISSUE_B, ISSUE_A, ISSUE_C]
    assert store.due_issues(now=time.time(), exclude=[ISSUE_B]) == [ISSUE_A, ISSUE_C]
    assert store.due_issues(now=time.time(), limit=2) == [ISSUE_B, ISSUE_A]
    assert store.due_issues(now=time.time(), exclude=[ISSUE_B], limit=1) == [ISSUE_A]


def test_save_card_finishes_deliveries_and_stores_applied(store):
    """save_card marks the covered deliveries done and keeps the card and its applied state."""
    first = add(store, "k1")
    second = add(store, "k2")
    later = add(store, "k3")
    applied = {"name": "[ ISSUE 1 ] t", "labels": {"bug": "x" * 24}}
    store.save_card(
        ISSUE_A,
        "c" * 24,
        "b" * 24,
        applied,
        42.5,
        done=[(first, "merged"), (second, "applied")],
        now=1000.0,
    )
    assert [p.id for p in store.pending_for(ISSUE_A)] == [later]
    assert rows(store, "SELECT id, state, outcome, finished_at FROM deliveries ORDER BY id") == [
        (first, "done", "merged", 1000.0),
        (second, "done", "applied", 1000.0),
        (later, "pending", None, None),
    ]
    row = store.issue(ISSUE_A)
    assert row is not None
    assert (row.card_id, row.board_id, row.applied, row.applied_updated_at) == (
        "c" * 24,
        "b" * 24,
        applied,
        42.5,
    )
    assert store.issue(ISSUE_B) is None
    assert store.health()["cards"] == 1


def test_finish_marks_done_without_card(store):
    """finish marks deliveries done with their outcome and leaves the issue map alone."""
    delivery_id = add(store, "k1")
    store.finish([(delivery_id, "stale")], now=7.0)
    assert store.pending_for(ISSUE_A) == []
    assert rows(store, "SELECT state, outcome FROM deliveries") == [("done", "stale")]
    assert store.issue(ISSUE_A) is None


def test_retry_later_hides_issue_until_next_attempt(store):
    """retry_later backs the issue off: due_issues skips it until next_attempt_at."""
    delivery_id = add(store, "k1", ISSUE_A)
    add(store, "k2", ISSUE_B)
    store.retry_later(ISSUE_A, [delivery_id], "HTTP 503", next_attempt_at=500.0, now=100.0)
    assert store.due_issues(now=499.0) == [ISSUE_B]
    assert store.due_issues(now=500.0) == [ISSUE_A, ISSUE_B]
    assert store.pending_for(ISSUE_A)[0].attempts == 1
    store.retry_later(ISSUE_A, [delivery_id], "HTTP 503", next_attempt_at=900.0, now=200.0)
    row = store.issue(ISSUE_A)
    assert row is not None
    assert (row.attempts, row.first_failure_at) == (2, 100.0)
    assert store.due_issues(now=600.0) == [ISSUE_B]


def test_save_card_ends_back_off(store):
    """A successful save clears the back-off, so new deliveries are due at once."""
    delivery_id = add(store, "k1")
    store.retry_later(ISSUE_A, [delivery_id], "boom", next_attempt_at=10_000.0, now=1.0)
    store.save_card(ISSUE_A, "c" * 24, "b" * 24, {}, 1.0, done=[(delivery_id, "applied")])
    add(store, "k2")
    assert store.due_issues(now=2.0) == [ISSUE_A]
    row = store.issue(ISSUE_A)
    assert row is not None
    assert (row.attempts, row.first_failure_at) == (0, None)


def test_dead_letters_health_and_replay(store):
    """dead_letter parks deliveries, health counts them, replay puts them back in the queue."""
    a1 = add(store, "k1", ISSUE_A)
    a2 = add(store, "k2", ISSUE_A)
    b1 = add(store, "k3", ISSUE_B)
    store.retry_later(ISSUE_A, [a1, a2], "HTTP 500", next_attempt_at=10_000.0, now=1.0)
    store.dead_letter(ISSUE_A, [a1, a2], "gave up", now=50.0)
    store.dead_letter(ISSUE_B, [b1], "HTTP 400", now=60.0)
    health = store.health()
    assert (health["pending"], health["dead_letters"], health["delivered"]) == (0, 3, 0)
    letters = store.dead_letters()
    assert [(d["id"], d["issue_key"], d["reason"]) for d in letters] == [
        (a1, ISSUE_A, "gave up"),
        (a2, ISSUE_A, "gave up"),
        (b1, ISSUE_B, "HTTP 400"),
    ]
    assert letters[0]["failed_at"] == 50.0
    assert store.due_issues(now=2.0) == []

    assert store.replay([b1]) == 1
    assert store.replay([b1]) == 0
    assert store.health()["dead_letters"] == 2
    assert [p.id for p in store.pending_for(ISSUE_B)] == [b1]

    assert store.replay(None) == 2
    assert store.health()["dead_letters"] == 0
    assert store.health()["pending"] == 3
    assert [p.attempts for p in store.pending_for(ISSUE_A)] == [0, 0]
    assert store.due_issues(now=2.0) == [ISSUE_A, ISSUE_B]
    assert store.dead_letters() == []


def test_done_deliveries_cannot_be_dead_lettered(store):
    """dead_letter and replay only touch deliveries in the states they apply to."""
    delivery_id = add(store, "k1")
    store.finish([(delivery_id, "applied")])
    store.dead_letter(ISSUE_A, [delivery_id], "late failure")
    assert store.dead_letters() == []
    assert store.replay([delivery_id]) == 0
    assert rows(store, "SELECT state FROM deliveries") == [("done",)]


def test_meta_round_trip(store):
    """set_meta stores a value that meta reads back; unknown keys are None."""
    assert store.meta("missing") is None
    store.set_meta("cursor", "abc")
    store.set_meta("cursor", "def")
    assert store.meta("cursor") == "def"


def test_two_stores_on_one_file_see_each_other(tmp_path):
    """Two Store objects on the same file (as two processes would) share dedupe and data."""
    path = tmp_path / "shared.sqlite3"
    one, two = Store(path), Store(path)
    one.setup()
    two.setup()
    first = one.add_delivery("key:x", ISSUE_A, EVENT)
    assert two.add_delivery("key:x", ISSUE_A, EVENT) == (first[0], False)
    assert two.delivery_states() == {"key:x": "pending"}
    one.close()
    two.close()
