"""Group commit: deliveries that arrive while one transaction commits share the next one.

Each web process runs many request threads. The first thread to arrive leads: it commits
whatever has queued up by the time it holds the database, in one transaction (one fsync on
SQLite, one round trip and one WAL flush on PostgreSQL). Threads that arrive meanwhile wait for
the next leader. Every caller returns only once its own row is committed, or with the error of
the transaction it was in, so the answer to GitLab still follows the commit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class Pending:
    """One delivery waiting for its transaction: the row, then (id, created) or the error."""

    dedupe_key: str
    issue_key: str
    kind: str
    updated_at: float | None
    event: str
    received_at: float
    result: tuple[int, bool] | None = None
    error: BaseException | None = None

    def row(self) -> tuple[str, str, str, float | None, str, float]:
        return (
            self.dedupe_key,
            self.issue_key,
            self.kind,
            self.updated_at,
            self.event,
            self.received_at,
        )


# commit(take): take() hands over the batch; call it once the database is held, so that the
# callers that arrived while waiting for it join. Set ``result`` on every item taken.
Commit = Callable[[Callable[[], list[Pending]]], None]


class GroupCommit:
    """Run ``commit`` for batches of concurrent callers (see the module's docstring).

    A caller that finds a leader at work waits on a lock of its own, which the leader releases
    when the caller's row is committed (or failed), or to hand it the lead of the next batch:
    each waiting thread wakes once, when there is something for it, and not for every batch.
    """

    def __init__(self, commit: Commit) -> None:
        self._commit = commit
        self._lock = threading.Lock()
        self._queue: list[Pending] = []  # arrived since the current batch was taken
        self._waiting: dict[int, threading.Lock] = {}  # id(item) -> the lock its caller waits on
        self._leader = False

    def submit(self, item: Pending) -> Pending:
        """Queue ``item`` and return it once committed (``result``) or failed (``error``)."""
        with self._lock:
            self._queue.append(item)
            if self._leader:
                wake = self._waiting[id(item)] = threading.Lock()
                wake.acquire()
            else:
                self._leader = True
                wake = None
        if wake is not None:
            wake.acquire()  # done, or the lead is handed over
            if item.result is not None or item.error is not None:
                return item
        self._lead()
        return item

    def _lead(self) -> None:
        taken: list[Pending] = []

        def take() -> list[Pending]:
            with self._lock:
                batch, self._queue = self._queue, []
            taken.extend(batch)
            return batch

        try:
            self._commit(take)
            if not taken:
                raise RuntimeError("the commit took no batch")
            for each in taken:
                if each.result is None and each.error is None:
                    each.error = RuntimeError("the batch's commit gave this delivery no id")
        except BaseException as exc:  # every caller of the batch sees the failure
            for each in taken or take():
                each.error = exc
        finally:
            with self._lock:
                done = [self._waiting.pop(id(each), None) for each in taken]
                if self._queue:  # arrived during the commit: the first leads the next batch
                    self._waiting.pop(id(self._queue[0])).release()
                else:
                    self._leader = False
            for wake in done:
                if wake is not None:
                    wake.release()
