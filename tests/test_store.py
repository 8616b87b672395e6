"""The store contract, on a real SQLite file and on a real PostgreSQL database.

Every test taking the ``store`` fixture runs on both backends; the sections at the end hold what
only one backend has (SQLite's file, group commit and upgrade of an old file; PostgreSQL's
claims across sessions, notifications and the shared call window).
"""

from __future__ import annotations

import sqlite3
import stat
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from events import IssueEvent
from store import SCHEMA_VERSION, Claim, LostClaim, Store, StoreError
from store.postgres import PostgresStore
from store.sqlite import SqliteStore
from tests.conftest import FIXTURES, wait_for

ISSUE_A = "https://gitlab.example.com|42|1"
ISSUE_B = "https://gitlab.example.com|42|2"
ISSUE_C = "https://gitlab.example.com|42|3"


def event_json(iid: int = 1, title: str = "t") -> str:
    return IssueEvent(
        instance="https://gitlab.example.com",
        project_id=42,
        iid=iid,
        title=title,
        url=f"https://gitlab.example.com/acme/w/-/issues/{iid}",
        action="open",
        state="opened",
        updated_at=float(iid),
    ).to_json()


EVENT = event_json()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    """A set-up store of each backend: a file in a nested folder, or a fresh database."""
    if request.param == "sqlite":
        db: Store = SqliteStore(tmp_path / "var" / "db" / "bridge.sqlite3", synchronous="NORMAL")
    else:
        db = PostgresStore(request.getfixturevalue("pg_url"), pool_size=4)
    db.setup()
    yield db
    db.close()


def rows(db: Store, sql: str, *args: Any) -> list[tuple]:
    """Run a query straight on the backend's database (``?`` placeholders)."""
    if isinstance(db, SqliteStore):
        with sqlite3.connect(db.path) as conn:
            return conn.execute(sql, args).fetchall()
    assert isinstance(db, PostgresStore)
    with psycopg.connect(db.url, autocommit=True) as conn:
        return [tuple(r) for r in conn.execute(sql.replace("?", "%s"), args).fetchall()]


def add(db: Store, key: str, issue: str = ISSUE_A, **kw: Any) -> int:
    delivery_id, created = db.add_delivery(key, issue, kw.pop("event", EVENT), **kw)
    assert created
    return delivery_id


def claim_one(db: Store, issue: str = ISSUE_A, now: float | None = None) -> Claim:
    """Claim ``issue`` (and let go of any other issue the claim handed out)."""
    found = None
    for claim in db.claim(time.time() if now is None else now):
        if claim.issue_key == issue:
            found = claim
        else:
            db.release(claim)
    assert found is not None, f"{issue} not claimable"
    return found


def pending_ids(db: Store, issue: str) -> list[int]:
    """The pending deliveries a claim of ``issue`` hands out (then lets the issue go)."""
    for claim in db.claim(1e12, limit=1000):
        db.release(claim)
        if claim.issue_key == issue:
            return [d.id for d in claim.deliveries]
    return []


def due(db: Store, now: float, limit: int = 50, busy: tuple[str, ...] = ()) -> list[str]:
    claims = db.claim(now, busy, limit)
    for claim in claims:
        db.release(claim)
    return [c.issue_key for c in claims]


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


# ---------------------------------------------------------------------------- the contract


def test_setup_records_the_schema_version(store):
    """A new database is created at the current schema version."""
    assert store.schema_version() == SCHEMA_VERSION
    assert store.meta("schema_version") == str(SCHEMA_VERSION)
    assert store.meta("created_at") is not None


def test_setup_twice_keeps_data(store):
    """Running setup again on an existing database keeps what it holds."""
    delivery_id = add(store, "k1")
    store.setup()
    assert pending_ids(store, ISSUE_A) == [delivery_id]
    assert store.schema_version() == SCHEMA_VERSION


def test_add_delivery_dedupes_by_key(store):
    """The first add of a key creates a row; the same key again returns that id, not created."""
    first = store.add_delivery("key:a", ISSUE_A, EVENT, updated_at=5.0, now=100.0)
    again = store.add_delivery("key:a", ISSUE_A, event_json(1, "other"), now=200.0)
    other = store.add_delivery("key:b", ISSUE_A, EVENT, now=300.0)
    assert first[1] is True
    assert again == (first[0], False)
    assert other[1] is True and other[0] != first[0]
    assert rows(store, "SELECT COUNT(*) FROM deliveries") == [(2,)]
    assert rows(store, "SELECT event, received_at FROM deliveries WHERE id = ?", first[0]) == [
        (EVENT, 100.0)
    ]


def test_claim_hands_out_state_and_decoded_deliveries(store):
    """A claim carries the issue's state and its pending deliveries, oldest first, decoded."""
    first = add(store, "k1", ISSUE_A, updated_at=10.0, now=1.0)
    add(store, "k2", ISSUE_B)
    second = add(store, "k3", ISSUE_A, kind="note", updated_at=None, now=3.0)
    claim = claim_one(store, ISSUE_A)
    assert claim.issue is None
    assert [d.id for d in claim.deliveries] == [first, second]
    one, two = claim.deliveries
    assert (one.kind, one.updated_at, one.received_at, one.attempts) == ("issue", 10.0, 1.0, 0)
    assert (two.kind, two.updated_at) == ("note", None)
    assert isinstance(one.event, IssueEvent) and one.event.title == "t"
    store.release(claim)


def test_claim_orders_by_oldest_delivery_and_honours_busy_and_limit(store):
    """Each due issue is claimed once, oldest pending delivery first; busy ones are skipped."""
    add(store, "k1", ISSUE_B)
    add(store, "k2", ISSUE_A)
    add(store, "k3", ISSUE_B)
    add(store, "k4", ISSUE_C)
    now = time.time()
    assert due(store, now) == [ISSUE_B, ISSUE_A, ISSUE_C]
    assert due(store, now, busy=(ISSUE_B,)) == [ISSUE_A, ISSUE_C]
    assert due(store, now, limit=2) == [ISSUE_B, ISSUE_A]
    assert due(store, now, limit=1, busy=(ISSUE_B,)) == [ISSUE_A]


def test_save_card_finishes_deliveries_and_stores_applied(store):
    """save_card marks the covered deliveries done and keeps the card and its applied state."""
    first = add(store, "k1")
    second = add(store, "k2")
    claim = claim_one(store)
    later = add(store, "k3")
    applied = {"name": "[ ISSUE 1 ] t", "labels": {"bug": "x" * 24}}
    store.save_card(
        claim,
        "c" * 24,
        "b" * 24,
        applied,
        42.5,
        done=[(first, "merged"), (second, "applied")],
        now=1000.0,
    )
    store.release(claim)
    assert pending_ids(store, ISSUE_A) == [later]
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
    assert store.has_card(ISSUE_A) and not store.has_card(ISSUE_B)
    assert store.health()["cards"] == 1
    assert store.meta("last_delivery_at") == "1000.0"


def test_mark_creating_is_seen_until_the_card_is_saved(store):
    """A create in flight is recorded before it is sent and cleared by save_card."""
    delivery_id = add(store, "k1")
    claim = claim_one(store)
    store.mark_creating(claim)
    store.release(claim)
    again = claim_one(store)
    assert again.issue is not None and again.issue.creating_at and again.issue.card_id is None
    store.save_card(again, "c" * 24, "b" * 24, {}, 1.0, done=[(delivery_id, "applied")])
    row = store.issue(ISSUE_A)
    assert row is not None and row.creating_at is None


def test_finish_marks_done_without_card(store):
    """finish marks deliveries done with their outcome and leaves the issue map alone."""
    delivery_id = add(store, "k1")
    claim = claim_one(store)
    store.finish(claim, [(delivery_id, "stale")], now=7.0)
    store.release(claim)
    assert pending_ids(store, ISSUE_A) == []
    assert rows(store, "SELECT state, outcome FROM deliveries") == [("done", "stale")]
    assert store.issue(ISSUE_A) is None


def test_waiting_comments_wake_when_the_card_is_saved(store):
    """wait_for_card parks deliveries; save_card with a card puts them back in the queue."""
    note = add(store, "n1", kind="note", updated_at=None)
    claim = claim_one(store)
    store.wait_for_card(claim, [note])
    store.release(claim)
    assert due(store, time.time()) == []
    assert store.health()["waiting_for_card"] == 1
    issue = add(store, "k1")
    claim = claim_one(store)
    store.save_card(claim, "c" * 24, "b" * 24, {}, 1.0, done=[(issue, "applied")])
    store.release(claim)
    assert pending_ids(store, ISSUE_A) == [note]


def test_retry_later_hides_issue_until_next_attempt(store):
    """retry_later backs the issue off: claim skips it until next_attempt_at."""
    delivery_id = add(store, "k1", ISSUE_A)
    add(store, "k2", ISSUE_B)
    claim = claim_one(store)
    store.retry_later(claim, [delivery_id], "HTTP 503", next_attempt_at=500.0, now=100.0)
    store.release(claim)
    assert due(store, 499.0) == [ISSUE_B]
    assert due(store, 500.0) == [ISSUE_A, ISSUE_B]
    claim = claim_one(store, now=500.0)
    assert claim.deliveries[0].attempts == 1
    assert claim.issue is not None and claim.issue.attempts == 1
    store.retry_later(claim, [delivery_id], "HTTP 503", next_attempt_at=900.0, now=200.0)
    store.release(claim)
    row = store.issue(ISSUE_A)
    assert row is not None
    assert (row.attempts, row.first_failure_at) == (2, 100.0)
    assert due(store, 600.0) == [ISSUE_B]


def test_save_card_ends_back_off(store):
    """A successful save clears the back-off, so new deliveries are due at once."""
    delivery_id = add(store, "k1")
    claim = claim_one(store)
    store.retry_later(claim, [delivery_id], "boom", next_attempt_at=10_000.0, now=1.0)
    store.save_card(claim, "c" * 24, "b" * 24, {}, 1.0, done=[(delivery_id, "applied")])
    store.release(claim)
    add(store, "k2")
    assert due(store, 2.0) == [ISSUE_A]
    row = store.issue(ISSUE_A)
    assert row is not None
    assert (row.attempts, row.first_failure_at) == (0, None)


def test_mark_attempted_counts_an_attempt(store):
    """mark_attempted raises the delivery's attempt count before a call that cannot repeat."""
    delivery_id = add(store, "n1", kind="note")
    claim = claim_one(store)
    store.mark_attempted(claim, delivery_id)
    store.release(claim)
    assert claim_one(store).deliveries[0].attempts == 1


def test_dead_letters_health_and_replay(store):
    """dead_letter parks deliveries, health counts them, replay puts them back in the queue."""
    a1 = add(store, "k1", ISSUE_A)
    a2 = add(store, "k2", ISSUE_A)
    b1 = add(store, "k3", ISSUE_B)
    claims = {c.issue_key: c for c in store.claim(time.time())}
    store.retry_later(claims[ISSUE_A], [a1, a2], "HTTP 500", next_attempt_at=10_000.0, now=1.0)
    store.dead_letter(claims[ISSUE_A], [a1, a2], "gave up", now=50.0)
    store.dead_letter(claims[ISSUE_B], [b1], "HTTP 400", now=60.0)
    for claim in claims.values():
        store.release(claim)
    health = store.health()
    assert (health["pending"], health["dead_letters"], health["delivered"]) == (0, 3, 0)
    letters = store.dead_letters()
    assert [(d["id"], d["issue_key"], d["reason"]) for d in letters] == [
        (a1, ISSUE_A, "gave up"),
        (a2, ISSUE_A, "gave up"),
        (b1, ISSUE_B, "HTTP 400"),
    ]
    assert letters[0]["failed_at"] == 50.0
    assert due(store, 2.0) == []

    assert store.replay([b1]) == 1
    assert store.replay([b1]) == 0
    assert store.health()["dead_letters"] == 2
    assert pending_ids(store, ISSUE_B) == [b1]

    assert store.replay(None) == 2
    assert store.health()["dead_letters"] == 0
    assert store.health()["pending"] == 3
    assert store.unfinished([a1, a2, b1]) == 3
    assert due(store, 2.0) == [ISSUE_A, ISSUE_B]
    assert store.dead_letters() == []


def test_done_deliveries_cannot_be_dead_lettered(store):
    """dead_letter and replay only touch deliveries in the states they apply to."""
    delivery_id = add(store, "k1")
    claim = claim_one(store)
    store.finish(claim, [(delivery_id, "applied")])
    store.dead_letter(claim, [delivery_id], "late failure")
    store.release(claim)
    assert store.dead_letters() == []
    assert store.replay([delivery_id]) == 0
    assert rows(store, "SELECT state FROM deliveries") == [("done",)]
    assert store.unfinished([delivery_id]) == 0


def test_meta_round_trip(store):
    """set_meta stores a value that meta reads back; unknown keys are None."""
    assert store.meta("missing") is None
    store.set_meta("cursor", "abc")
    store.set_meta("cursor", "def")
    assert store.meta("cursor") == "def"


def test_exclusive_is_held_by_one_at_a_time(store, tmp_path):
    """exclusive(name) is granted to one holder at a time and free again once left."""
    other = _second(store)
    try:
        with store.exclusive("reconcile") as mine:
            assert mine
            with other.exclusive("reconcile") as theirs:
                assert not theirs
        with other.exclusive("reconcile") as theirs:
            assert theirs
    finally:
        other.close()


def test_export_and_import_copy_rows_once(store, tmp_path):
    """import_rows of exported rows adds them once; a second import adds nothing."""
    add(store, "k1")
    dead = add(store, "k2", ISSUE_B)
    claims = {c.issue_key: c for c in store.claim(time.time())}
    store.save_card(claims[ISSUE_A], "c" * 24, "b" * 24, {"x": 1}, 1.0, done=[(1, "applied")])
    store.dead_letter(claims[ISSUE_B], [dead], "HTTP 400")
    store.set_meta("reconcile_watermark:42", "123.0")
    exported = {t: list(store.export_rows(t)) for t in ("issues", "deliveries", "meta")}
    assert len(exported["deliveries"]) == 1 == store.count_rows("deliveries")  # done: not copied
    target = SqliteStore(tmp_path / "copy.sqlite3")
    target.setup()
    for table, table_rows in exported.items():
        table_rows = [r for r in table_rows if r[0] != "schema_version"]
        assert target.import_rows(table, table_rows) == len(
            [r for r in table_rows if table != "meta" or r[0] != "created_at"]
        )
        assert target.import_rows(table, table_rows) == 0
    assert target.dead_letters()[0]["reason"] == "HTTP 400"
    assert target.issue(ISSUE_A).applied == {"x": 1}
    assert target.meta("reconcile_watermark:42") == "123.0"


def _second(store: Store) -> Store:
    """Another store object on the same database, as another process or instance would have."""
    if isinstance(store, SqliteStore):
        other: Store = SqliteStore(store.path)
    else:
        assert isinstance(store, PostgresStore)
        other = PostgresStore(store.url, pool_size=2)
    other.setup()
    return other


def test_two_stores_on_one_database_share_dedupe_and_data(store):
    """Two store objects on the same database (two processes, two instances) share dedupe."""
    other = _second(store)
    try:
        first = store.add_delivery("key:x", ISSUE_A, EVENT)
        assert other.add_delivery("key:x", ISSUE_A, EVENT) == (first[0], False)
        assert other.delivery_states() == {"key:x": "pending"}
    finally:
        other.close()


# ---------------------------------------------------------------------------- SQLite only


def sqlite_rows(path: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


def test_sqlite_setup_creates_folders_and_private_file(tmp_path):
    """setup creates missing folders, the file (and its WAL and lock files) 0600, the schema."""
    path = tmp_path / "a" / "b" / "bridge.sqlite3"
    db = SqliteStore(path)
    db.setup()
    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    tables = {n for (n,) in sqlite_rows(path, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"deliveries", "issues", "meta"} <= tables
    assert sqlite_rows(path, "PRAGMA journal_mode") == [("wal",)]
    db.add_delivery("key:1", ISSUE_A, EVENT)
    for companion in ("-wal", "-shm", ".lock"):
        mode = Path(f"{path}{companion}").stat().st_mode
        assert stat.S_IMODE(mode) == 0o600, companion
    db.close()


def test_a_file_of_schema_version_1_is_upgraded_and_keeps_working(tmp_path):
    """A file made by the store before migrations is upgraded in place; its rows keep working."""
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.executescript((FIXTURES / "store-v1.sql").read_text(encoding="utf-8"))
    assert sqlite_rows(path, "SELECT value FROM meta WHERE key = 'schema_version'") == [("1",)]
    db = SqliteStore(path)
    db.setup()
    assert db.schema_version() == SCHEMA_VERSION
    mapped = db.issue("https://gitlab.example.com|42|1")
    assert mapped is not None and mapped.card_id == "a" * 24 and mapped.creating_at is None
    assert mapped.applied == {"closed": False, "name": "[ ISSUE 1 ] Mapped issue"}
    assert [d["reason"] for d in db.dead_letters()] == ["HTTP 400 from Trello"]
    assert db.meta("reconcile_watermark:42") == "1700000000.0"
    (claim,) = db.claim(time.time())
    assert claim.issue_key == "https://gitlab.example.com|42|2"
    assert claim.deliveries[0].event.title == "Pending issue"
    db.mark_creating(claim)
    db.save_card(claim, "c" * 24, "b" * 24, {}, 2.0, done=[(claim.deliveries[0].id, "applied")])
    assert db.health()["cards"] == 2
    assert db.add_delivery("key:1", "x", EVENT)[1] is False  # old dedupe keys still count
    db.close()


def test_a_newer_schema_is_refused(tmp_path):
    """A file at a schema version newer than the code fails setup with a clear StoreError."""
    db = SqliteStore(tmp_path / "bridge.sqlite3")
    db.setup()
    db.set_meta("schema_version", str(SCHEMA_VERSION + 1))
    with pytest.raises(StoreError, match="newer than this code"):
        SqliteStore(db.path).setup()


def test_store_on_a_directory_raises_store_error(tmp_path):
    """A database path that is a directory gives StoreError from setup and from health."""
    folder = tmp_path / "dir.sqlite3"
    folder.mkdir()
    db = SqliteStore(folder)
    with pytest.raises(StoreError, match="dir.sqlite3"):
        db.setup()
    with pytest.raises(StoreError):
        db.health()


def test_store_under_a_file_raises_store_error(tmp_path):
    """A database path whose parent is a regular file gives StoreError from setup and health."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    db = SqliteStore(blocker / "bridge.sqlite3")
    with pytest.raises(StoreError, match="cannot use database"):
        db.setup()
    with pytest.raises(StoreError):
        db.health()


def test_reads_of_a_file_without_schema_raise_store_error(tmp_path):
    """Reads of a file that was never set up raise StoreError, never sqlite3.Error."""
    path = tmp_path / "empty.sqlite3"
    path.touch()
    db = SqliteStore(path)
    for read in (db.health, lambda: db.claim(1.0), db.dead_letters, lambda: db.meta("x")):
        with pytest.raises(StoreError):
            read()
    db.close()


@pytest.mark.parametrize("group_commit", [True, False])
def test_concurrent_adds_of_same_key_create_one(store, group_commit):
    """With or without group commit, eight threads adding one key at once create exactly one
    row and share its id."""
    store.group_commit = group_commit
    results = run_threads(8, lambda i: store.add_delivery("key:same", ISSUE_A, EVENT))
    assert sum(created for _, created in results) == 1
    assert len({delivery_id for delivery_id, _ in results}) == 1
    assert rows(store, "SELECT COUNT(*) FROM deliveries") == [(1,)]


def test_concurrent_unique_adds_are_group_committed(store):
    """Fifty threads with distinct keys get 50 rows and 50 ids, several sharing one commit."""
    batches: list[int] = []
    original = store._group._commit

    def slow_commit(take):
        def counted():
            batch = take()
            batches.append(len(batch))
            return batch

        time.sleep(0.01)  # let other threads queue behind the writer
        original(counted)

    store._group._commit = slow_commit
    results = run_threads(50, lambda i: store.add_delivery(f"key:{i}", ISSUE_A, EVENT))
    assert all(created for _, created in results)
    assert len({delivery_id for delivery_id, _ in results}) == 50
    assert sum(batches) == 50
    assert max(batches) > 1
    assert len(batches) < 50
    assert store.unfinished([delivery_id for delivery_id, _ in results]) == 50


def test_a_batch_holding_one_key_twice_and_a_stored_one_creates_one_row_each(store):
    """In one batch: a new key twice and a key stored earlier: one new row, the rest repeats."""
    earlier = add(store, "key:earlier")
    release = threading.Event()
    original = store._group._commit

    def held_commit(take):
        release.wait(5)  # until every thread has queued
        original(take)

    store._group._commit = held_commit
    keys = ["key:new", "key:new", "key:earlier", "key:new"]

    def add_one(i: int) -> tuple[int, bool]:
        if i == 0:
            threading.Timer(0.3, release.set).start()
        return store.add_delivery(keys[i], ISSUE_A, EVENT)

    results = run_threads(len(keys), add_one)
    new_ids = {
        delivery_id for (delivery_id, _), key in zip(results, keys, strict=True) if key == "key:new"
    }
    assert len(new_ids) == 1
    assert (
        sum(created for (_, created), key in zip(results, keys, strict=True) if key == "key:new")
        == 1
    )
    assert results[2] == (earlier, False)
    assert store.unfinished([earlier, *new_ids]) == 2


def test_a_failed_group_commit_fails_every_caller_of_its_batch(store):
    """When the batch's statement fails, each of its callers gets StoreError, none an id."""
    original = store._group._commit

    def failing(take):
        take()
        raise OSError("disk gone")

    store._group._commit = failing
    errors = run_threads(
        4,
        lambda i: pytest.raises(StoreError, store.add_delivery, f"key:{i}", ISSUE_A, EVENT),
    )
    assert len(errors) == 4
    store._group._commit = original
    assert store.add_delivery("key:after", ISSUE_A, EVENT)[1]


def test_failed_batch_raises_store_error_for_its_waiters(tmp_path):
    """When the database cannot be written, add_delivery raises StoreError."""
    folder = tmp_path / "dir.sqlite3"
    folder.mkdir()
    db = SqliteStore(folder)
    with pytest.raises(StoreError):
        db.add_delivery("key:x", ISSUE_A, EVENT)


def test_one_worker_slot_per_file(tmp_path):
    """Only one process at a time holds a file's worker slot."""
    db = SqliteStore(tmp_path / "bridge.sqlite3")
    db.setup()
    with db.worker_slot(wait=False) as mine:
        assert mine
        with SqliteStore(db.path).worker_slot(wait=False) as theirs:
            assert not theirs


# ---------------------------------------------------------------------------- PostgreSQL only


@pytest.fixture
def pg(pg_url):
    """Two stores on one fresh database: two instances."""
    one = PostgresStore(pg_url, pool_size=4)
    two = PostgresStore(pg_url, pool_size=4)
    one.setup()
    two.setup()
    yield one, two
    one.close()
    two.close()


def test_pg_an_issue_is_claimed_by_one_instance_at_a_time(pg):
    """An issue one instance holds is never handed to the other until it is released."""
    one, two = pg
    add(one, "k1", ISSUE_A)
    add(one, "k2", ISSUE_B)
    mine = one.claim(time.time(), limit=1)
    assert [c.issue_key for c in mine] == [ISSUE_A]
    theirs = two.claim(time.time())
    assert [c.issue_key for c in theirs] == [ISSUE_B]
    assert two.claim(time.time(), busy=[ISSUE_B]) == []  # A is the other instance's
    one.release(mine[0])
    assert [c.issue_key for c in two.claim(time.time(), busy=[ISSUE_B])] == [ISSUE_A]


def test_pg_concurrent_claims_never_share_an_issue(pg):
    """Eight claimers on two instances at once get disjoint sets of issues, all of them."""
    one, two = pg
    keys = [f"https://gitlab.example.com|42|{i}" for i in range(40)]
    for i, key in enumerate(keys):
        add(one, f"k{i}", key)
    stores = [one, two] * 4
    # one claim session per store object: claimers of one store serialise on it
    results = run_threads(8, lambda i: [c.issue_key for c in stores[i].claim(time.time(), limit=5)])
    claimed = [key for result in results for key in result]
    assert len(claimed) == len(set(claimed)) == 40


def test_pg_a_dead_session_frees_its_issues_and_loses_its_claims(pg):
    """When an instance's session ends (killed), others claim its issues; its writes fail."""
    one, two = pg
    delivery_id = add(one, "k1")
    (claim,) = one.claim(time.time())
    assert two.claim(time.time()) == []
    with psycopg.connect(one.url, autocommit=True) as admin:  # the kill, seen by PostgreSQL
        pid = one._session.info.backend_pid
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        wait_for(  # the signal is sent at once; the session ends a moment later
            lambda: (
                not admin.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)
                ).fetchone()
            ),
            10,
            "the session gone",
        )
    (taken,) = two.claim(time.time())
    assert taken.issue_key == ISSUE_A
    with pytest.raises(StoreError):  # the broken session is noticed ...
        one.save_card(claim, "c" * 24, "b" * 24, {}, 1.0, done=[(delivery_id, "applied")])
    with pytest.raises(LostClaim):  # ... and its claims stay lost on a new session
        one.save_card(claim, "c" * 24, "b" * 24, {}, 1.0, done=[(delivery_id, "applied")])
    two.save_card(taken, "d" * 24, "b" * 24, {}, 1.0, done=[(delivery_id, "applied")])
    assert one.issue(ISSUE_A).card_id == "d" * 24


def test_pg_notifications_wake_a_listener_on_new_work(pg):
    """A delivery stored by one instance wakes the other's listener within a second."""
    one, two = pg
    woken = threading.Event()
    stop = two.listen(woken.set)
    assert stop is not None
    try:
        assert woken.wait(5)  # once when it starts listening
        woken.clear()
        started = time.monotonic()
        add(one, "k1")
        assert woken.wait(1), "no notification within 1 s"
        assert time.monotonic() - started < 1
    finally:
        stop()


def test_pg_a_burst_wakes_the_listener_with_few_notifications(pg):
    """Fifty deliveries at once: the listener wakes, with fewer notifications than deliveries
    (one per batch of news), and closing the store ends the notifying connection."""
    one, two = pg
    wakes: list[float] = []
    started_listening = threading.Event()

    def wake() -> None:
        wakes.append(time.monotonic())
        started_listening.set()

    stop = two.listen(wake)
    assert stop is not None
    try:
        assert started_listening.wait(5)
        time.sleep(0.2)
        before = len(wakes)
        others = {t for t in threading.enumerate() if t.name == "pg-notify"}
        run_threads(50, lambda i: one.add_delivery(f"key:{i}", ISSUE_A, EVENT))
        deadline = time.monotonic() + 2
        while len(wakes) == before and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
        assert 1 <= len(wakes) - before < 50
    finally:
        stop()
    mine = [t for t in threading.enumerate() if t.name == "pg-notify" and t not in others]
    assert len(mine) == 1
    one.close()
    mine[0].join(3)
    assert not mine[0].is_alive()


def test_pg_shared_window_counts_every_instance(pg):
    """The call window is one for both instances: the limit holds for their calls together."""
    one, two = pg
    windows = [one.rate_window("trello:t"), two.rate_window("trello:t")]
    granted = [w.take(5, 10.0) for w in windows * 4]
    assert granted.count(0.0) == 5
    assert all(0 < wait <= 10.0 for wait in granted if wait)
    assert one.rate_window("trello:other").take(5, 10.0) == 0.0
    # what either instance counts, for the pacer's reading of Trello's "remaining"
    assert [w.count(10.0) for w in windows] == [5, 5]
    assert one.rate_window("trello:other").count(10.0) == 1
    assert windows[0].count(0.0) == 0
    assert windows[1].count(10.0, 5.0) == 0


def test_pg_unreachable_database_raises_store_error_quickly():
    """A database nobody answers for gives StoreError within the connect timeout."""
    db = PostgresStore("postgresql://postgres@127.0.0.1:9/none", connect_timeout=1)
    started = time.monotonic()
    with pytest.raises(StoreError):
        db.setup()
    with pytest.raises(StoreError):
        db.add_delivery("k", ISSUE_A, EVENT)
    with pytest.raises(StoreError):
        db.health()
    assert time.monotonic() - started < 10
    db.close()


def test_pg_a_newer_schema_is_refused(pg_url):
    """A database at a schema version newer than the code fails setup with a StoreError."""
    db = PostgresStore(pg_url)
    db.setup()
    db.set_meta("schema_version", str(SCHEMA_VERSION + 1))
    with pytest.raises(StoreError, match="newer than this code"):
        PostgresStore(pg_url).setup()
    db.close()


def test_pg_instances_starting_together_create_the_schema_once(pg_url):
    """Four instances setting up one new database at once all succeed, at one version."""
    stores = [PostgresStore(pg_url, pool_size=1) for _ in range(4)]
    run_threads(4, lambda i: stores[i].setup())
    assert {s.schema_version() for s in stores} == {SCHEMA_VERSION}
    for s in stores:
        s.close()
