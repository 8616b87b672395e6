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
    """Run ``commit`` for batches of concurrent callers (see the module's docstring)."""

    def __init__(self, commit: Commit) -> None:
        self._commit = commit
        self._cond = threading.Condition()
        self._queue: list[Pending] = []
        self._leader = False

    def submit(self, item: Pending) -> Pending:
        """Queue ``item`` and return it once committed (``result``) or failed (``error``)."""
        with self._cond:
            self._queue.append(item)
            while item.result is None and item.error is None and self._leader:
                self._cond.wait()
            if item.result is not None or item.error is not None:
                return item
            self._leader = True
        taken: list[Pending] = []

        def take() -> list[Pending]:
            with self._cond:
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
            with self._cond:
                self._leader = False
                self._cond.notify_all()
        return item
