"""The store on PostgreSQL: several instances of the bridge on one database.

- Every write is one short transaction on a connection of a per-process pool (``psycopg_pool``),
  opened lazily after uWSGI's fork; a delivery is committed before ``add_delivery`` returns.
  PostgreSQL groups concurrent commits into one WAL flush itself.
- Dedupe is the unique index on ``dedupe_key``: two copies arriving at two instances at the same
  moment meet there, and the second one waits for the first and gets its id.
- Claims are session-level advisory locks, one per issue, held by one connection per worker
  process (its "claim session"). A killed instance's session ends with it, and with it every
  lock it held: the other instances take those issues at their next claim. Every write of an
  outcome goes through that same session after checking that it is still the one that took the
  claim, so a worker whose session was lost (and whose issues others may hold by now) cannot
  record anything for them (``LostClaim``).
- New work is announced with ``NOTIFY``: idle workers ``LISTEN`` and wake at once.
- A shared call window (``take``) keeps every instance's Trello calls under one budget.
- Timeouts everywhere: connecting, waiting for a pooled connection, and every statement, so a
  database that hangs costs a request a few seconds (503), not GitLab's 10.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import psycopg
import psycopg_pool

from config import redact_url
from store.base import (
    COPY_COLUMNS,
    DELIVERY_COLUMNS,
    ISSUE_COLUMNS,
    SCHEMA_VERSION,
    Claim,
    IssueState,
    LostClaim,
    Store,
    StoreError,
    claims_from_rows,
    health_counts,
    issue_from_row,
)
from store.group import GroupCommit, Pending

log = logging.getLogger("gitlab2trello.store")

CHANNEL = "gitlab2trello_queue"
# one delivery, or a batch of them in one statement; both give the ids of the new rows only


@functools.lru_cache(maxsize=64)
def insert_rows_sql(count: int) -> str:
    """One INSERT of ``count`` deliveries, ids back for the new ones.

    A row of plain parameters each, not arrays through ``unnest``: psycopg writes an array's
    text element by element in Python (quoting each JSON event), which cost more than the rest
    of the request. One statement per batch size, each prepared by psycopg once used often.
    """
    rows = ", ".join(["(%s, %s, %s, %s, %s, %s)"] * count)
    return (
        "INSERT INTO deliveries (dedupe_key, issue_key, kind, updated_at, event, received_at)"
        f" VALUES {rows} ON CONFLICT (dedupe_key) DO NOTHING RETURNING id, dedupe_key"
    )


# a pooled connection idle for longer than this is checked before use (seconds)
CHECK_IDLE = 1.0
# serialises schema upgrades of instances that start together
MIGRATION_LOCK = 0x67327472_00000001

MIGRATIONS: dict[int, str] = {
    1: """
CREATE TABLE deliveries (
    id          BIGSERIAL PRIMARY KEY,
    dedupe_key  TEXT NOT NULL UNIQUE,
    issue_key   TEXT NOT NULL,
    kind        TEXT NOT NULL DEFAULT 'issue',
    updated_at  DOUBLE PRECISION,
    event       TEXT NOT NULL,
    received_at DOUBLE PRECISION NOT NULL,
    state       TEXT NOT NULL DEFAULT 'pending',
    outcome     TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0,
    finished_at DOUBLE PRECISION
);
CREATE INDEX deliveries_pending ON deliveries (issue_key, id) WHERE state = 'pending';
CREATE INDEX deliveries_queue ON deliveries (id) WHERE state = 'pending';
CREATE INDEX deliveries_dead ON deliveries (id) WHERE state = 'dead';
CREATE TABLE issues (
    issue_key          TEXT PRIMARY KEY,
    card_id            TEXT,
    board_id           TEXT,
    applied            TEXT,
    applied_updated_at DOUBLE PRECISION,
    attempts           INTEGER NOT NULL DEFAULT 0,
    first_failure_at   DOUBLE PRECISION,
    next_attempt_at    DOUBLE PRECISION,
    last_error         TEXT,
    changed_at         DOUBLE PRECISION
);
""",
    2: """
ALTER TABLE issues ADD COLUMN creating_at DOUBLE PRECISION;
CREATE INDEX issues_card ON issues (card_id);
-- the calls of the shared Trello budget; losing them in a crash costs nothing
CREATE UNLOGGED TABLE rate_calls (
    name TEXT NOT NULL,
    at   DOUBLE PRECISION NOT NULL
);
CREATE INDEX rate_calls_name_at ON rate_calls (name, at);
CREATE FUNCTION gitlab2trello_take_call(p_name TEXT, p_limit INTEGER, p_interval DOUBLE PRECISION)
RETURNS DOUBLE PRECISION LANGUAGE plpgsql AS $$
DECLARE
    t DOUBLE PRECISION;
    n INTEGER;
    oldest DOUBLE PRECISION;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('gitlab2trello-rate:' || p_name, 0));
    t := extract(epoch FROM clock_timestamp());
    DELETE FROM rate_calls WHERE name = p_name AND at <= t - p_interval;
    SELECT count(*), min(at) INTO n, oldest FROM rate_calls WHERE name = p_name;
    IF n < p_limit THEN
        INSERT INTO rate_calls (name, at) VALUES (p_name, t);
        RETURN 0;
    END IF;
    RETURN oldest + p_interval - t;
END
$$;
""",
}
assert max(MIGRATIONS) == SCHEMA_VERSION

_ERRORS = (psycopg.Error, psycopg_pool.PoolTimeout, psycopg_pool.PoolClosed)


class Watchdog:
    """Cuts the connection of a statement that outlives its deadline.

    ``statement_timeout`` is enforced by the server, and a server that hangs (stopped, its disk
    stuck, the network gone without a reset) enforces nothing: the client would wait for an
    answer as long as the kernel keeps the connection. One thread per process looks at the
    deadlines of the statements under way and shuts down the socket of any that is late, so the
    statement fails at once (and its connection is discarded) instead of holding a request.
    """

    def __init__(self) -> None:
        self._deadlines: dict[int, tuple[float, int]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._next = 0

    @contextlib.contextmanager
    def guard(self, conn: psycopg.Connection, seconds: float) -> Iterator[None]:
        with self._lock:
            self._next += 1
            token = self._next
            self._deadlines[token] = (time.monotonic() + seconds, conn.fileno())
            if self._thread is None or self._pid != os.getpid():
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._watch, name="pg-watchdog", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._deadlines.pop(token, None)

    def _watch(self) -> None:
        while True:
            time.sleep(0.2)
            now = time.monotonic()
            with self._lock:
                late = [(t, fd) for t, (at, fd) in self._deadlines.items() if at <= now]
                for token, _fd in late:
                    del self._deadlines[token]
            for _token, fd in late:
                log.warning("PostgreSQL did not answer in time: cutting the connection")
                with contextlib.suppress(OSError):
                    socket.socket(fileno=os.dup(fd)).shutdown(socket.SHUT_RDWR)


WATCHDOG = Watchdog()


class SharedWindow:
    """A sliding window of calls kept in PostgreSQL, shared by every instance."""

    def __init__(self, store: PostgresStore, name: str) -> None:
        self.store = store
        self.name = name

    def take(self, limit: int, interval: float) -> float:
        """0 when a call may go now (and it is counted), else the seconds to wait first."""
        with self.store._connection() as conn:
            row = conn.execute(
                "SELECT gitlab2trello_take_call(%s, %s, %s)", (self.name, limit, interval)
            ).fetchone()
        return float(row[0]) if row else 0.0

    def count(self, older: float, newer: float = 0.0) -> int:
        """The calls every instance made from ``older`` up to ``newer`` seconds ago."""
        with self.store._connection() as conn:
            row = conn.execute(
                "SELECT count(*) FROM rate_calls, extract(epoch FROM clock_timestamp()) AS now"
                " WHERE name = %s AND at > now - %s AND at <= now - %s",
                (self.name, older, newer),
            ).fetchone()
        return int(row[0]) if row else 0


class _Notifier:
    """``NOTIFY`` the workers that deliveries were stored, from a thread of this process.

    A transaction that notifies holds a lock of the whole server from its commit until the
    commit is on disk, so one NOTIFY per delivery would make every instance's deliveries take
    turns. Instead the request only flags that there is news; one thread per process sends a
    NOTIFY for all the deliveries flagged since its last one, on a connection of its own with
    ``synchronous_commit = off`` (a notification lost in a crash costs nothing: the workers poll
    every few seconds too).
    """

    def __init__(self, store: PostgresStore) -> None:
        self.store = store
        self._news = threading.Event()
        self._pid: int | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def wanted(self) -> None:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._news, self._stop = threading.Event(), threading.Event()
                    args = (self._news, self._stop)
                    thread = threading.Thread(target=self._run, args=args, name="pg-notify")
                    thread.daemon = True
                    thread.start()
                    self._pid = os.getpid()
        if not self._news.is_set():  # set and not yet taken: the NOTIFY to come covers it
            self._news.set()

    def close(self) -> None:
        """End this process's thread and its connection (a later ``wanted`` starts anew)."""
        with self._lock:
            if self._pid == os.getpid():
                self._stop.set()
                self._news.set()
                self._pid = None

    def _run(self, news: threading.Event, stop: threading.Event) -> None:
        conn: psycopg.Connection | None = None
        try:
            while True:
                news.wait()
                news.clear()
                if stop.is_set():
                    return
                try:
                    if conn is None or conn.closed:
                        conn = psycopg.connect(self.store.url, **self.store._kwargs())
                        conn.execute("SET synchronous_commit = off")
                    with WATCHDOG.guard(conn, self.store._deadline):
                        conn.execute(f"NOTIFY {CHANNEL}")
                except _ERRORS as exc:
                    log.warning("cannot wake the workers (they poll): %s", _reason(exc))
                    with contextlib.suppress(Exception):
                        if conn is not None:
                            conn.close()
                    conn = None
                    time.sleep(1)
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()


class PostgresStore(Store):
    """The bridge's tables in one PostgreSQL database, shared by every instance."""

    backend = "postgresql"
    shared = True

    @classmethod
    def from_config(cls, cfg: Any) -> PostgresStore:
        """The store a ``config.Config`` describes (not yet set up)."""
        return cls(
            cfg.database_url,
            pool_size=cfg.store["pool_size"],
            connect_timeout=cfg.store["connect_timeout"],
            statement_timeout_ms=cfg.store["statement_timeout_ms"],
            application_name=f"gitlab2trello {cfg.instance}"[:63],
            group_commit=cfg.store["group_commit"],
        )

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        connect_timeout: float = 3.0,
        statement_timeout_ms: int = 5000,
        application_name: str = "gitlab2trello",
        group_commit: bool = True,
    ) -> None:
        self.url = url
        self.group_commit = group_commit
        self.label = redact_url(url)
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.statement_timeout_ms = statement_timeout_ms
        self.application_name = application_name
        # the server's own timeout fires first; the watchdog is for a server that cannot
        self._deadline = statement_timeout_ms / 1000 + 1.0
        self._pool: psycopg_pool.ConnectionPool | None = None
        self._pool_pid: int | None = None
        self._pool_lock = threading.Lock()
        # the claim session: advisory locks of the issues this process works on
        self._session: psycopg.Connection | None = None
        self._session_pid: int | None = None
        self._generation = 0
        self._session_lock = threading.Lock()
        self._held: set[str] = set()  # issues the claim session holds (its locks re-enter)
        self._group = GroupCommit(self._insert_batch)
        self._notifier = _Notifier(self)
        # when each pooled connection was last given back (see _check)
        self._returned_at: weakref.WeakKeyDictionary[psycopg.Connection, float] = (
            weakref.WeakKeyDictionary()
        )

    # ------------------------------------------------------------------ connections

    def _kwargs(self) -> dict[str, Any]:
        timeout = self.statement_timeout_ms
        return {
            "autocommit": True,
            "connect_timeout": max(1, math.ceil(self.connect_timeout)),
            "application_name": self.application_name,
            # a lost server is noticed within seconds on idle connections too
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 2,
            "tcp_user_timeout": timeout,
            "options": f"-c statement_timeout={timeout} -c lock_timeout={timeout}"
            f" -c idle_in_transaction_session_timeout={timeout * 2}",
        }

    def _get_pool(self) -> psycopg_pool.ConnectionPool:
        pid = os.getpid()
        if self._pool is not None and self._pool_pid == pid:
            return self._pool
        with self._pool_lock:
            if self._pool is None or self._pool_pid != pid:
                # a pool inherited across a fork is never used (nor closed: it is the parent's)
                self._pool = psycopg_pool.ConnectionPool(
                    self.url,
                    min_size=1,
                    max_size=self.pool_size,
                    kwargs=self._kwargs(),
                    timeout=max(1.0, self.connect_timeout + 1),
                    check=self._check,
                    reset=self._returned,
                    reconnect_timeout=0,
                    name=f"gitlab2trello-{pid}",
                    open=False,
                )
                self._pool.open(wait=False)
                self._pool_pid = pid
        return self._pool

    def _check(self, conn: psycopg.Connection) -> None:
        """Before a pooled connection that sat idle is handed out: one empty round trip (a
        connection of a restarted server fails here and is replaced, instead of failing a
        request). One given back less than ``CHECK_IDLE`` ago was working then: under load no
        request pays for the check."""
        if time.monotonic() - self._returned_at.get(conn, 0.0) < CHECK_IDLE:
            return
        with WATCHDOG.guard(conn, self._deadline):
            conn.execute("")

    def _returned(self, conn: psycopg.Connection) -> None:
        self._returned_at[conn] = time.monotonic()

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        """A pooled connection (autocommit: each statement is its own transaction)."""
        try:
            with self._get_pool().connection() as conn, WATCHDOG.guard(conn, self._deadline):
                yield conn
        except _ERRORS as exc:
            raise StoreError(f"PostgreSQL {self.label}: {_reason(exc)}") from exc

    @contextlib.contextmanager
    def _tx(self) -> Iterator[psycopg.Connection]:
        with self._connection() as conn, conn.transaction():
            yield conn

    def _read(self, sql: str, args: Sequence[Any] | dict[str, Any] = ()) -> list[tuple[Any, ...]]:
        with self._connection() as conn:
            return conn.execute(sql, args).fetchall()

    def _session_conn(self) -> psycopg.Connection:
        """The claim session of this process (reconnected, as a new generation, when lost)."""
        conn = self._session
        if (
            conn is not None
            and self._session_pid == os.getpid()
            and not conn.closed
            and not conn.broken
        ):
            return conn
        if conn is not None and self._session_pid == os.getpid():
            with contextlib.suppress(Exception):
                conn.close()
        self._session = None
        self._generation += 1
        self._held.clear()
        try:
            self._session = psycopg.connect(self.url, **self._kwargs())
        except _ERRORS as exc:
            raise StoreError(f"PostgreSQL {self.label}: {_reason(exc)}") from exc
        self._session_pid = os.getpid()
        return self._session

    @contextlib.contextmanager
    def _claim_session(self, claim: Claim | None = None) -> Iterator[psycopg.Connection]:
        """The claim session, for one transaction; ``claim`` must still be held by it."""
        with self._session_lock:
            if claim is not None and (
                claim.token != (os.getpid(), self._generation)
                or self._session is None
                or self._session.closed
            ):
                raise LostClaim(f"{claim.issue_key}: the session that claimed it has ended")
            conn = self._session_conn()
            try:
                with WATCHDOG.guard(conn, self._deadline), conn.transaction():
                    yield conn
            except _ERRORS as exc:
                # session-level advisory locks outlive a rolled-back transaction: end the
                # session rather than guess which locks it took; its claims are lost with it
                with contextlib.suppress(Exception):
                    conn.close()
                self._session = None
                raise StoreError(f"PostgreSQL {self.label}: {_reason(exc)}") from exc

    # ------------------------------------------------------------------ lifecycle

    def setup(self) -> None:
        """Create the tables, or bring them to ``SCHEMA_VERSION``, in one transaction."""
        try:
            with psycopg.connect(self.url, **self._kwargs()) as conn, conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
                version = self._version(conn)
                if version > SCHEMA_VERSION:
                    raise StoreError(
                        f"{self.label} has schema version {version}, newer than this code's "
                        f"{SCHEMA_VERSION}: upgrade gitlab2trello"
                    )
                for number in range(version + 1, SCHEMA_VERSION + 1):
                    conn.execute(MIGRATIONS[number])
                    conn.execute(
                        "INSERT INTO meta (key, value) VALUES ('schema_version', %s)"
                        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        (str(number),),
                    )
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('created_at', %s)"
                    " ON CONFLICT (key) DO NOTHING",
                    (str(time.time()),),
                )
        except _ERRORS as exc:
            raise StoreError(f"cannot use PostgreSQL {self.label}: {_reason(exc)}") from exc

    @staticmethod
    def _version(conn: psycopg.Connection) -> int:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row else 0

    def schema_version(self) -> int:
        with self._connection() as conn:
            exists = conn.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()
            return self._version(conn) if exists and exists[0] else 0

    def close(self) -> None:
        self._notifier.close()
        if self._pool is not None and self._pool_pid == os.getpid():
            self._pool.close()
        self._pool = None
        with self._session_lock:
            if self._session is not None and self._session_pid == os.getpid():
                with contextlib.suppress(Exception):
                    self._session.close()
            self._session = None

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
        """Store one delivery, committed before this returns; return (id, created).

        Concurrent callers of this process share one statement and one commit (group commit).
        """
        received = time.time() if now is None else now
        item = Pending(dedupe_key, issue_key, kind, updated_at, event_json, received)
        if self.group_commit:
            self._group.submit(item)
        else:
            try:
                self._insert_batch(lambda: [item])
            except Exception as exc:
                item.error = exc
        if isinstance(item.error, Exception):
            raise StoreError(f"PostgreSQL {self.label}: {_reason(item.error)}") from item.error
        if item.error is not None:
            raise item.error
        assert item.result is not None
        if item.result[1]:
            self._notifier.wanted()
        return item.result

    def _insert_batch(self, take: Callable[[], list[Pending]]) -> None:
        batch = take()
        rows = [item.row() for item in batch]
        found: dict[str, tuple[int, bool]] = {}
        for _ in range(3):
            found.update(self._insert_rows(rows, retry=not found))
            rows = [row for row in rows if row[0] not in found]
            if not rows:
                break
        seen: set[str] = set()
        for item in batch:
            if item.dedupe_key in found:
                row_id, created = found[item.dedupe_key]
                # the same key twice in one batch: the first is the new one
                item.result = (row_id, created and item.dedupe_key not in seen)
                seen.add(item.dedupe_key)

    def _insert_rows(
        self, rows: list[tuple[Any, ...]], *, retry: bool = True
    ) -> dict[str, tuple[int, bool]]:
        """Insert ``rows`` in one statement; {dedupe_key: (id, inserted now)}, repeats included.

        The common case, new deliveries, is one round trip; the ids of repeats take a second
        (a key stored by a transaction that then rolled back is in neither: the caller tries
        again).
        """
        sql, args = insert_rows_sql(len(rows)), [value for row in rows for value in row]
        while True:
            began, used = time.monotonic(), None
            try:
                with self._get_pool().connection() as conn, WATCHDOG.guard(conn, self._deadline):
                    used = conn
                    found = {key: (int(row_id), True) for row_id, key in conn.execute(sql, args)}
                    repeats = list({row[0] for row in rows if row[0] not in found})
                    if repeats:
                        for row_id, key in conn.execute(
                            "SELECT id, dedupe_key FROM deliveries WHERE dedupe_key = ANY(%s)",
                            (repeats,),
                        ):
                            found[key] = (int(row_id), False)
                return found
            except psycopg.OperationalError:
                # a connection used a moment ago is handed out unchecked: one that a restarted
                # server dropped fails at once, and the rows go again on a fresh one
                if not retry or used is None or not used.broken or time.monotonic() - began > 1:
                    raise
                retry = False

    def has_card(self, issue_key: str) -> bool:
        rows = self._read("SELECT card_id FROM issues WHERE issue_key = %s", (issue_key,))
        return bool(rows and rows[0][0])

    def health(self) -> dict[str, Any]:
        rows = self._read(
            "SELECT state, COUNT(*) FROM deliveries GROUP BY state"
            " UNION ALL SELECT '#cards', COUNT(*) FROM issues WHERE card_id IS NOT NULL"
        )
        counts = {state: int(count) for state, count in rows}
        return health_counts(counts, counts.get("#cards", 0))

    # ------------------------------------------------------------------ the worker

    def claim(self, now: float, busy: Iterable[str] = (), limit: int = 50) -> list[Claim]:
        """Due issues that no worker of any instance holds, locked by this process's session."""
        with self._claim_session() as conn:
            skip = list(set(busy) | self._held)
            scan = max(200, 20 * (limit + len(skip)))
            keys = [
                row[0]
                for row in conn.execute(
                    "WITH head AS (SELECT issue_key, id FROM deliveries WHERE state = 'pending'"
                    "  ORDER BY id LIMIT %(scan)s),"
                    " due AS MATERIALIZED (SELECT h.issue_key, min(h.id) AS first FROM head h"
                    "  LEFT JOIN issues i ON i.issue_key = h.issue_key"
                    "  WHERE (i.next_attempt_at IS NULL OR i.next_attempt_at <= %(now)s)"
                    "  AND NOT (h.issue_key = ANY(%(skip)s))"
                    "  GROUP BY h.issue_key ORDER BY first)"
                    # the lock is tried row by row, and LIMIT stops asking once it has enough
                    " SELECT issue_key FROM due"
                    " WHERE pg_try_advisory_lock(hashtextextended(issue_key, 0))"
                    " LIMIT %(limit)s",
                    {"scan": scan, "now": now, "skip": skip, "limit": limit},
                )
            ]
            if not keys:
                return []
            # read after the locks: whatever another worker recorded before letting go is seen
            pending = conn.execute(
                f"SELECT issue_key, {DELIVERY_COLUMNS} FROM deliveries"
                " WHERE issue_key = ANY(%s) AND state = 'pending' ORDER BY id",
                (keys,),
            ).fetchall()
            issues = conn.execute(
                f"SELECT {ISSUE_COLUMNS} FROM issues WHERE issue_key = ANY(%s)", (keys,)
            ).fetchall()
            token = (os.getpid(), self._generation)
            self._held.update(keys)
        claims = claims_from_rows(keys, pending, issues, json.loads, token)
        held = {c.issue_key for c in claims}
        for key in keys:  # finished by another worker between the queue read and the lock
            if key not in held:
                self._unlock(key, token)
        return claims

    def release(self, claim: Claim) -> None:
        self._unlock(claim.issue_key, claim.token)

    def _unlock(self, issue_key: str, token: Any) -> None:
        with self._session_lock:
            conn = self._session
            if conn is None or conn.closed or token != (os.getpid(), self._generation):
                return  # that session is gone, and its locks with it
            self._held.discard(issue_key)
            try:
                conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (issue_key,))
            except _ERRORS as exc:
                log.warning("cannot release %s: %s", issue_key, _reason(exc))
                with contextlib.suppress(Exception):
                    conn.close()
                self._session = None

    def issue(self, issue_key: str) -> IssueState | None:
        rows = self._read(f"SELECT {ISSUE_COLUMNS} FROM issues WHERE issue_key = %s", (issue_key,))
        return issue_from_row(rows[0], json.loads) if rows else None

    def issue_for_card(self, card_id: str) -> str | None:
        rows = self._read("SELECT issue_key FROM issues WHERE card_id = %s LIMIT 1", (card_id,))
        return rows[0][0] if rows else None

    def adopt_card(self, claim: Claim, issue_key: str, card_id: str, board_id: str | None) -> None:
        with self._claim_session(claim) as conn:
            conn.execute(
                "UPDATE deliveries SET issue_key = %s WHERE issue_key = %s AND state = 'pending'",
                (issue_key, claim.issue_key),
            )
            conn.execute(
                "INSERT INTO issues (issue_key, card_id, board_id, changed_at)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (issue_key) DO UPDATE SET"
                " card_id = COALESCE(issues.card_id, excluded.card_id),"
                " board_id = COALESCE(issues.board_id, excluded.board_id)",
                (issue_key, card_id, board_id, time.time()),
            )
            conn.execute(f"NOTIFY {CHANNEL}")

    def mark_creating(self, claim: Claim) -> None:
        now = time.time()
        with self._claim_session(claim) as conn:
            conn.execute(
                "INSERT INTO issues (issue_key, creating_at, changed_at) VALUES (%s, %s, %s)"
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
        with self._claim_session(claim) as conn:
            conn.execute(
                "INSERT INTO issues (issue_key, card_id, board_id, applied, applied_updated_at,"
                " attempts, first_failure_at, next_attempt_at, last_error, changed_at, creating_at)"
                " VALUES (%s, %s, %s, %s, %s, 0, NULL, NULL, NULL, %s, NULL)"
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
            _finish(conn, done, "done", now)
            if card_id is not None:
                woken = conn.execute(
                    "UPDATE deliveries SET state = 'pending'"
                    " WHERE issue_key = %s AND state = 'waiting'",
                    (claim.issue_key,),
                ).rowcount
                if woken:
                    conn.execute(f"NOTIFY {CHANNEL}")
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('last_delivery_at', %s)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(now),),
            )

    def wait_for_card(self, claim: Claim, delivery_ids: Sequence[int]) -> None:
        with self._claim_session(claim) as conn:
            conn.execute(
                "UPDATE deliveries SET state = 'waiting' WHERE id = ANY(%s) AND state = 'pending'",
                (list(delivery_ids),),
            )

    def mark_attempted(self, claim: Claim, delivery_id: int) -> None:
        with self._claim_session(claim) as conn:
            conn.execute(
                "UPDATE deliveries SET attempts = attempts + 1 WHERE id = %s", (delivery_id,)
            )

    def finish(
        self, claim: Claim, done: Iterable[tuple[int, str]], *, now: float | None = None
    ) -> None:
        with self._claim_session(claim) as conn:
            _finish(conn, done, "done", time.time() if now is None else now)

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
        with self._claim_session(claim) as conn:
            conn.execute(
                "INSERT INTO issues (issue_key, attempts, first_failure_at, next_attempt_at,"
                " last_error, changed_at) VALUES (%s, 1, %s, %s, %s, %s)"
                " ON CONFLICT (issue_key) DO UPDATE SET attempts = issues.attempts + 1,"
                " first_failure_at = COALESCE(issues.first_failure_at, excluded.first_failure_at),"
                " next_attempt_at = excluded.next_attempt_at, last_error = excluded.last_error,"
                " changed_at = excluded.changed_at",
                (claim.issue_key, now, next_attempt_at, error, now),
            )
            conn.execute(
                "UPDATE deliveries SET attempts = attempts + 1 WHERE id = ANY(%s)",
                (list(delivery_ids),),
            )

    def dead_letter(
        self, claim: Claim, delivery_ids: Sequence[int], reason: str, *, now: float | None = None
    ) -> None:
        now = time.time() if now is None else now
        with self._claim_session(claim) as conn:
            _finish(conn, [(i, reason) for i in delivery_ids], "dead", now)
            conn.execute(
                "UPDATE issues SET attempts = 0, first_failure_at = NULL, next_attempt_at = NULL,"
                " last_error = %s, changed_at = %s WHERE issue_key = %s",
                (reason, now, claim.issue_key),
            )

    # ------------------------------------------------------------------ coordination

    def listen(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        """A thread that waits on ``LISTEN`` and calls ``wake`` for every notification."""
        stopped = threading.Event()

        def loop() -> None:
            while not stopped.is_set():
                try:
                    with psycopg.connect(self.url, **self._kwargs()) as conn:
                        conn.execute(f"LISTEN {CHANNEL}")
                        wake()  # whatever was stored while not listening
                        while not stopped.is_set():
                            for _ in conn.notifies(timeout=1.0, stop_after=1):
                                wake()
                except _ERRORS as exc:
                    log.warning("not listening for new work: %s", _reason(exc))
                    stopped.wait(1)

        thread = threading.Thread(target=loop, name="listen", daemon=True)
        thread.start()
        return stopped.set

    @contextlib.contextmanager
    def exclusive(self, name: str) -> Iterator[bool]:
        """An advisory lock on the claim session: held by one process of all instances."""
        key = f"gitlab2trello-exclusive:{name}"
        with self._claim_session() as conn:
            row = conn.execute(
                "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (key,)
            ).fetchone()
            token = (os.getpid(), self._generation)
        held = bool(row and row[0])
        try:
            yield held
        finally:
            if held:
                self._unlock(key, token)

    def rate_window(self, name: str) -> SharedWindow:
        return SharedWindow(self, name)

    # ------------------------------------------------------------------ operators

    def dead_letters(self) -> list[dict[str, Any]]:
        rows = self._read(
            "SELECT id, issue_key, received_at, finished_at, outcome, attempts FROM deliveries"
            " WHERE state = 'dead' ORDER BY id"
        )
        names = ("id", "issue_key", "received_at", "failed_at", "reason", "attempts")
        return [dict(zip(names, row, strict=True)) for row in rows]

    def replay(self, ids: Sequence[int] | None = None) -> int:
        with self._tx() as conn:
            where = "state = 'dead'" + ("" if ids is None else " AND id = ANY(%s)")
            count = conn.execute(
                "UPDATE deliveries SET state = 'pending', outcome = NULL, finished_at = NULL,"
                f" attempts = 0 WHERE {where}",
                () if ids is None else (list(ids),),
            ).rowcount
            if count:
                conn.execute(f"NOTIFY {CHANNEL}")
            return count

    def meta(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM meta WHERE key = %s", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self._connection() as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (%s, %s)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def unfinished(self, delivery_ids: Sequence[int]) -> int:
        rows = self._read(
            "SELECT COUNT(*) FROM deliveries WHERE id = ANY(%s)"
            " AND state IN ('pending', 'waiting')",
            (list(delivery_ids),),
        )
        return int(rows[0][0])

    def delivery_states(self) -> dict[str, str]:
        return dict(self._read("SELECT dedupe_key, state FROM deliveries"))

    # ------------------------------------------------------------------ moving stores

    def export_rows(self, table: str) -> Iterator[tuple[Any, ...]]:
        columns = ", ".join(COPY_COLUMNS[table])
        where = " WHERE state != 'done'" if table == "deliveries" else ""
        order = " ORDER BY id" if table == "deliveries" else ""
        yield from self._read(f"SELECT {columns} FROM {table}{where}{order}")

    def count_rows(self, table: str) -> int:
        where = " WHERE state != 'done'" if table == "deliveries" else ""
        return int(self._read(f"SELECT COUNT(*) FROM {table}{where}")[0][0])

    def import_rows(self, table: str, rows: Sequence[tuple[Any, ...]]) -> int:
        columns = COPY_COLUMNS[table]
        marks = ", ".join(["%s"] * len(columns))
        added = 0
        with self._tx() as conn, conn.cursor() as cursor:
            for row in rows:
                cursor.execute(
                    f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"
                    " ON CONFLICT DO NOTHING",
                    row,
                )
                added += cursor.rowcount
            if table == "deliveries" and added:
                cursor.execute(f"NOTIFY {CHANNEL}")
        return added


def _finish(
    conn: psycopg.Connection, done: Iterable[tuple[int, str]], state: str, now: float
) -> None:
    rows = [(state, outcome, now, delivery_id) for delivery_id, outcome in done]
    if rows:
        with conn.cursor() as cursor:
            cursor.executemany(
                "UPDATE deliveries SET state = %s, outcome = %s, finished_at = %s"
                " WHERE id = %s AND state = 'pending'",
                rows,
            )


def _reason(exc: BaseException) -> str:
    """A driver's error in one line (never the URL, which may carry the password)."""
    if isinstance(exc, psycopg_pool.PoolTimeout):
        return "no connection to the database (timed out)"
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
