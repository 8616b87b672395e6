"""The SQLite schema and every query: deliveries, the issue-to-card map, dead letters.

Durability rules:
- WAL journal, ``synchronous=FULL`` by default: a delivery answered 2xx survives a power cut.
- Every write is one short ``BEGIN IMMEDIATE`` transaction, taken under an exclusive ``flock`` on a
  lock file beside the database, so writers from several uWSGI processes queue on the kernel's
  lock (they sleep until it is free) instead of polling SQLite's busy handler.
- Connections are opened lazily, one per thread and process, so none crosses uWSGI's fork.
- Deliveries that arrive while a write is under way are committed together by the next writer
  (group commit), so several acknowledgements share one fsync.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from store.base import (
    COPY_COLUMNS,
    DELIVERY_COLUMNS,
    ISSUE_COLUMNS,
    SCHEMA_VERSION,
    Claim,
    IssueState,
    Store,
    StoreError,
    claims_from_rows,
    health_counts,
    issue_from_row,
)
from store.group import GroupCommit, Pending

# numbered migrations: version -> statements; a file at version N gets N+1.. applied in order
MIGRATIONS: dict[int, str] = {
    1: """
CREATE TABLE IF NOT EXISTS deliveries (
    id          INTEGER PRIMARY KEY,
    dedupe_key  TEXT NOT NULL UNIQUE,
    issue_key   TEXT NOT NULL,
    kind        TEXT NOT NULL DEFAULT 'issue',
    updated_at  REAL,
    event       TEXT NOT NULL,
    received_at REAL NOT NULL,
    state       TEXT NOT NULL DEFAULT 'pending',   -- pending | waiting | done | dead
    outcome     TEXT,                              -- applied | merged | stale | reason of death
    attempts    INTEGER NOT NULL DEFAULT 0,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS deliveries_pending
    ON deliveries (issue_key, id) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS deliveries_queue ON deliveries (id) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS deliveries_dead ON deliveries (id) WHERE state = 'dead';
CREATE TABLE IF NOT EXISTS issues (
    issue_key          TEXT PRIMARY KEY,
    card_id            TEXT,
    board_id           TEXT,
    applied            TEXT,       -- JSON: the card fields as last written
    applied_updated_at REAL,       -- updated_at of the newest event applied
    attempts           INTEGER NOT NULL DEFAULT 0,
    first_failure_at   REAL,
    next_attempt_at    REAL,
    last_error         TEXT,
    changed_at         REAL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT
);
""",
    # a create was sent and its answer is not recorded yet: whoever takes the issue next looks
    # for the card on the board first (another instance, or this one after a crash)
    2: """
ALTER TABLE issues ADD COLUMN creating_at REAL;
-- Trello's webhook names the card: the edge finds its issue here
CREATE INDEX IF NOT EXISTS issues_card ON issues (card_id);
""",
}
assert max(MIGRATIONS) == SCHEMA_VERSION


class SqliteStore(Store):
    """The bridge's SQLite file: the embedded default, one instance (one worker) per file."""

    backend = "sqlite"

    @classmethod
    def from_config(cls, cfg: Any) -> SqliteStore:
        """The store a ``config.Config`` describes (not yet set up)."""
        return cls(
            cfg.database,
            synchronous=cfg.store["synchronous"],
            busy_timeout_ms=cfg.store["busy_timeout_ms"],
            group_commit=cfg.store["group_commit"],
        )

    def __init__(
        self,
        path: Path | str,
        *,
        synchronous: str = "FULL",
        busy_timeout_ms: int = 10000,
        group_commit: bool = True,
    ) -> None:
        self.path = Path(path)
        self.label = str(self.path)
        self.group_commit = group_commit
        self.synchronous = synchronous
        self.busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._lock_fd: int | None = None
        self._lock_pid: int | None = None
        self._thread_lock = threading.Lock()
        self._writer_conn: sqlite3.Connection | None = None
        self._writer_pid: int | None = None
        # group commit: deliveries waiting for the next writer
        self._group = GroupCommit(self._commit_batch)

    # ------------------------------------------------------------------ connections

    def setup(self) -> None:
        """Create folders, the file (mode 0600), and the schema, or upgrade it in place."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():
                fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
                os.close(fd)
            with self._write() as conn:
                version = self._version(conn)
                if version > SCHEMA_VERSION:
                    raise StoreError(
                        f"{self.path} has schema version {version}, newer than this code's "
                        f"{SCHEMA_VERSION}: upgrade gitlab2trello"
                    )
                for number in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in MIGRATIONS[number].split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(
                        "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                        ("created_at", str(time.time())),
                    )
                    conn.execute(
                        "INSERT INTO meta (key, value) VALUES ('schema_version', ?)"
                        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        (str(number),),
                    )
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot use database {self.path}: {exc}") from exc

    @staticmethod
    def _version(conn: sqlite3.Connection) -> int:
        has_meta = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
        ).fetchone()
        if not has_meta:
            return 0
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row else 0

    def schema_version(self) -> int:
        try:
            return self._version(self._conn())
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read database {self.path}: {exc}") from exc

    def _connect(self, cache_kib: int, *, any_thread: bool = False) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout_ms / 1000,
                isolation_level=None,
                check_same_thread=not any_thread,
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            # give the disk back after each checkpoint instead of keeping a large WAL file
            conn.execute("PRAGMA journal_size_limit = 4194304")
            conn.execute(f"PRAGMA cache_size = -{int(cache_kib)}")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {self.path}: {exc}") from exc
        return conn

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection for reads."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        # one per thread that reads (up to 8 per web process), each with a page cache of its
        # own: 128 KiB each keeps a process's memory small and flat; the reads take a few
        # pages by index, and the OS caches the file
        conn = self._connect(128)
        self._local.conn = conn
        self._local.pid = os.getpid()
        return conn

    def _writer(self) -> sqlite3.Connection:
        """The process's connection for writes, used by one thread at a time (``_write``).

        One for all the request threads, so that the pages a commit touches (the table's end,
        its indexes) stay in one cache between the commits of this process, instead of being
        read again into the cache of whichever thread leads the next group commit.
        """
        if self._writer_conn is None or self._writer_pid != os.getpid():
            self._writer_conn = self._connect(2048, any_thread=True)
            self._writer_pid = os.getpid()
        return self._writer_conn

    def _file_lock(self) -> int:
        if self._lock_fd is None or self._lock_pid != os.getpid():
            self._lock_fd = os.open(f"{self.path}.lock", os.O_CREAT | os.O_RDWR, 0o600)
            self._lock_pid = os.getpid()
        return self._lock_fd

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction, serialised across threads and processes."""
        with self._thread_lock:
            conn = self._writer()
            fd = self._file_lock()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StoreError(f"cannot write to {self.path}: {exc}") from exc
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
        with self._thread_lock:
            if self._writer_conn is not None and self._writer_pid == os.getpid():
                self._writer_conn.close()
            self._writer_conn = None

    # ------------------------------------------------------------------ the edge

    def add_delivery(
        self,
        dedupe_key: str,
        issue_key: str,
        event_json: str,
        *,
        kind: str = "issue",
        updated_at: float | None = None,
        now: float | None = None,
    ) -> tuple[int, bool]:
        """Store one delivery durably; return (id, created). ``created`` is False for a repeat.

        Callers that arrive while another thread is committing join the next batch: one
        transaction and one fsync for all of them.
        """
        item = Pending(
            dedupe_key, issue_key, kind, updated_at, event_json, time.time() if now is None else now
        )
        if self.group_commit:
            self._group.submit(item)
        else:
            try:
                self._commit_batch(lambda: [item])
            except (sqlite3.Error, OSError, StoreError) as exc:
                item.error = exc
        if item.error is not None:
            if isinstance(item.error, sqlite3.Error | OSError):
                raise StoreError(f"cannot store delivery: {item.error}") from item.error
            raise item.error
        assert item.result is not None
        return item.result

    def _commit_batch(self, take: Callable[[], list[Pending]]) -> None:
        """One transaction for the deliveries queued by the time the write lock is held."""
        with self._write() as conn:
            batch = take()
            results: list[tuple[int, bool]] = []
            for item in batch:
                cursor = conn.execute(
                    "INSERT OR IGNORE INTO deliveries"
                    " (dedupe_key, issue_key, kind, updated_at, event, received_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    item.row(),
                )
                if cursor.rowcount == 1:
                    results.append((int(cursor.lastrowid or 0), True))
                else:
                    row = conn.execute(
                        "SELECT id FROM deliveries WHERE dedupe_key = ?", (item.dedupe_key,)
                    ).fetchone()
                    results.append((int(row[0]), False))
        for item, result in zip(batch, results, strict=True):
            item.result = result

    def has_card(self, issue_key: str) -> bool:
        """True when the issue has a card on Trello."""
        try:
            row = (
                self._conn()
                .execute("SELECT card_id FROM issues WHERE issue_key = ?", (issue_key,))
                .fetchone()
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read database: {exc}") from exc
        return bool(row and row[0])

    def health(self) -> dict[str, Any]:
        try:
            conn = self._conn()
            counts = dict(
                conn.execute("SELECT state, COUNT(*) FROM deliveries GROUP BY state").fetchall()
            )
            cards = conn.execute(
                "SELECT COUNT(*) FROM issues WHERE card_id IS NOT NULL"
            ).fetchone()[0]
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read database: {exc}") from exc
        return health_counts(counts, cards)

    # ------------------------------------------------------------------ the worker

    def claim(self, now: float, busy: Iterable[str] = (), limit: int = 50) -> list[Claim]:
        """Due issues, oldest delivery first, with their state and pending deliveries.

        Reads the queue in delivery order through its partial index and stops after a bounded
        number of rows, so the cost does not grow with the backlog. One worker per file (see
        ``worker_slot``): ``busy`` are the issues it holds already.
        """
        skip = set(busy)
        scan = max(200, 20 * (limit + len(skip)))
        try:
            conn = self._conn()
            rows = conn.execute(
                "SELECT d.issue_key FROM deliveries d"
                " LEFT JOIN issues i ON i.issue_key = d.issue_key"
                " WHERE d.state = 'pending'"
                " AND (i.next_attempt_at IS NULL OR i.next_attempt_at <= ?)"
                " ORDER BY d.id LIMIT ?",
                (now, scan),
            )
            keys: list[str] = []
            for (key,) in rows:
                if key not in skip:
                    skip.add(key)
                    keys.append(key)
                    if len(keys) >= limit:
                        break
            if not keys:
                return []
            marks = ",".join("?" * len(keys))
            # one read for the batch: a consistent snapshot of the deliveries and the issues
            conn.execute("BEGIN")
            try:
                pending = conn.execute(
                    f"SELECT issue_key, {DELIVERY_COLUMNS} FROM deliveries"
                    f" WHERE issue_key IN ({marks}) AND state = 'pending' ORDER BY id",
                    keys,
                ).fetchall()
                issues = conn.execute(
                    f"SELECT {ISSUE_COLUMNS} FROM issues WHERE issue_key IN ({marks})", keys
                ).fetchall()
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the queue: {exc}") from exc
        return claims_from_rows(keys, pending, issues, json.loads)

    def release(self, claim: Claim) -> None:
        """Nothing to let go: the worker lock covers every issue of the file."""

    def issue(self, issue_key: str) -> IssueState | None:
        try:
            row = (
                self._conn()
                .execute(f"SELECT {ISSUE_COLUMNS} FROM issues WHERE issue_key = ?", (issue_key,))
                .fetchone()
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read database: {exc}") from exc
        return None if row is None else issue_from_row(row, json.loads)

    def issue_for_card(self, card_id: str) -> str | None:
        rows = self._read("SELECT issue_key FROM issues WHERE card_id = ? LIMIT 1", (card_id,))
        return rows[0][0] if rows else None

    def adopt_card(self, claim: Claim, issue_key: str, card_id: str, board_id: str | None) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE deliveries SET issue_key = ? WHERE issue_key = ? AND state = 'pending'",
                (issue_key, claim.issue_key),
            )
            conn.execute(
                "INSERT INTO issues (issue_key, card_id, board_id, changed_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (issue_key) DO UPDATE SET"
                " card_id = COALESCE(issues.card_id, excluded.card_id),"
                " board_id = COALESCE(issues.board_id, excluded.board_id)",
                (issue_key, card_id, board_id, time.time()),
            )

    def mark_creating(self, claim: Claim) -> None:
        now = time.time()
        with self._write() as conn:
            conn.execute(
                "INSERT INTO issues (issue_key, creating_at, changed_at) VALUES (?, ?, ?)"
                " ON CONFLICT (issue_key) DO UPDATE SET creating_at = excluded.creating_at",
                (claim.issue_key, now, now),
            )

    def save_card(
        self,
        claim: Claim,
        card_id: str | None,
        board_id: str | None,
        applied: dict[str, Any] | None,
        applied_updated_at: float | None,
        *,
        done: Iterable[tuple[int, str]] = (),
        now: float | None = None,
    ) -> None:
        now = time.time() if now is None else now
        with self._write() as conn:
            conn.execute(
                "INSERT INTO issues (issue_key, card_id, board_id, applied, applied_updated_at,"
                " attempts, first_failure_at, next_attempt_at, last_error, changed_at, creating_at)"
                " VALUES (?, ?, ?, ?, ?, 0, NULL, NULL, NULL, ?, NULL)"
                " ON CONFLICT (issue_key) DO UPDATE SET card_id = excluded.card_id,"
                " board_id = excluded.board_id, applied = excluded.applied,"
                " applied_updated_at = excluded.applied_updated_at, attempts = 0,"
                " first_failure_at = NULL, next_attempt_at = NULL, last_error = NULL,"
                " changed_at = excluded.changed_at, creating_at = NULL",
                (
                    claim.issue_key,
                    card_id,
                    board_id,
                    json.dumps(applied, sort_keys=True) if applied is not None else None,
                    applied_updated_at,
                    now,
                ),
            )
            self._finish(conn, done, "done", now)
            if card_id is not None:
                conn.execute(
                    "UPDATE deliveries SET state = 'pending'"
                    " WHERE issue_key = ? AND state = 'waiting'",
                    (claim.issue_key,),
                )
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('last_delivery_at', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(now),),
            )

    def wait_for_card(self, claim: Claim, delivery_ids: Sequence[int]) -> None:
        with self._write() as conn:
            conn.executemany(
                "UPDATE deliveries SET state = 'waiting' WHERE id = ? AND state = 'pending'",
                [(i,) for i in delivery_ids],
            )

    def mark_attempted(self, claim: Claim, delivery_id: int) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE deliveries SET attempts = attempts + 1 WHERE id = ?", (delivery_id,)
            )

    def finish(
        self, claim: Claim, done: Iterable[tuple[int, str]], *, now: float | None = None
    ) -> None:
        with self._write() as conn:
            self._finish(conn, done, "done", time.time() if now is None else now)

    def retry_later(
        self,
        claim: Claim,
        delivery_ids: Sequence[int],
        error: str,
        next_attempt_at: float,
        *,
        now: float | None = None,
    ) -> None:
        now = time.time() if now is None else now
        with self._write() as conn:
            conn.execute(
                "INSERT INTO issues (issue_key, attempts, first_failure_at, next_attempt_at,"
                " last_error, changed_at) VALUES (?, 1, ?, ?, ?, ?)"
                " ON CONFLICT (issue_key) DO UPDATE SET attempts = attempts + 1,"
                " first_failure_at = COALESCE(first_failure_at, excluded.first_failure_at),"
                " next_attempt_at = excluded.next_attempt_at, last_error = excluded.last_error,"
                " changed_at = excluded.changed_at",
                (claim.issue_key, now, next_attempt_at, error, now),
            )
            conn.executemany(
                "UPDATE deliveries SET attempts = attempts + 1 WHERE id = ?",
                [(i,) for i in delivery_ids],
            )

    def dead_letter(
        self, claim: Claim, delivery_ids: Sequence[int], reason: str, *, now: float | None = None
    ) -> None:
        now = time.time() if now is None else now
        with self._write() as conn:
            self._finish(conn, [(i, reason) for i in delivery_ids], "dead", now)
            conn.execute(
                "UPDATE issues SET attempts = 0, first_failure_at = NULL, next_attempt_at = NULL,"
                " last_error = ?, changed_at = ? WHERE issue_key = ?",
                (reason, now, claim.issue_key),
            )

    @staticmethod
    def _finish(
        conn: sqlite3.Connection, done: Iterable[tuple[int, str]], state: str, now: float
    ) -> None:
        conn.executemany(
            "UPDATE deliveries SET state = ?, outcome = ?, finished_at = ?"
            " WHERE id = ? AND state = 'pending'",
            [(state, outcome, now, delivery_id) for delivery_id, outcome in done],
        )

    # ------------------------------------------------------------------ coordination

    @contextlib.contextmanager
    def exclusive(self, name: str) -> Iterator[bool]:
        fd = os.open(f"{self.path}.{name}.lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def worker_slot(self, wait: bool = True) -> Iterator[bool]:
        """One worker per file: the holder of ``<file>.worker.lock`` (the running service's)."""
        fd = os.open(f"{self.path}.worker.lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not wait:
                        yield False
                        return
                    time.sleep(2)
            yield True
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ operators

    def dead_letters(self) -> list[dict[str, Any]]:
        rows = self._read(
            "SELECT id, issue_key, received_at, finished_at, outcome, attempts FROM deliveries"
            " WHERE state = 'dead' ORDER BY id"
        )
        names = ("id", "issue_key", "received_at", "failed_at", "reason", "attempts")
        return [dict(zip(names, row, strict=True)) for row in rows]

    def replay(self, ids: Sequence[int] | None = None) -> int:
        with self._write() as conn:
            if ids is None:
                cursor = conn.execute(
                    "UPDATE deliveries SET state = 'pending', outcome = NULL, finished_at = NULL,"
                    " attempts = 0 WHERE state = 'dead'"
                )
                return cursor.rowcount
            count = 0
            for delivery_id in ids:
                cursor = conn.execute(
                    "UPDATE deliveries SET state = 'pending', outcome = NULL, finished_at = NULL,"
                    " attempts = 0 WHERE state = 'dead' AND id = ?",
                    (delivery_id,),
                )
                count += cursor.rowcount
            return count

    def meta(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def unfinished(self, delivery_ids: Sequence[int]) -> int:
        count = 0
        for start in range(0, len(delivery_ids), 500):
            chunk = list(delivery_ids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            count += self._read(
                f"SELECT COUNT(*) FROM deliveries WHERE id IN ({marks})"
                " AND state IN ('pending', 'waiting')",
                chunk,
            )[0][0]
        return count

    def delivery_states(self) -> dict[str, str]:
        return dict(self._read("SELECT dedupe_key, state FROM deliveries"))

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._conn().execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read database {self.path}: {exc}") from exc

    # ------------------------------------------------------------------ moving stores

    def export_rows(self, table: str) -> Iterator[tuple[Any, ...]]:
        columns = ", ".join(COPY_COLUMNS[table])
        where = " WHERE state != 'done'" if table == "deliveries" else ""
        order = " ORDER BY id" if table == "deliveries" else ""
        try:
            cursor = self._conn().execute(f"SELECT {columns} FROM {table}{where}{order}")
            while rows := cursor.fetchmany(500):
                yield from rows
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read {self.path}: {exc}") from exc

    def count_rows(self, table: str) -> int:
        where = " WHERE state != 'done'" if table == "deliveries" else ""
        return int(self._read(f"SELECT COUNT(*) FROM {table}{where}")[0][0])

    def import_rows(self, table: str, rows: Sequence[tuple[Any, ...]]) -> int:
        columns = COPY_COLUMNS[table]
        marks = ", ".join("?" * len(columns))
        with self._write() as conn:
            before = conn.total_changes
            conn.executemany(
                f"INSERT OR IGNORE INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows
            )
            return conn.total_changes - before
