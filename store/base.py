"""The store's contract: what every backend offers, and the types it hands back.

Callers see only this: ``Store``'s methods, the row types below (deliveries come back decoded
into ``events.IssueEvent``) and ``StoreError``. They never see a driver's exception, never parse
stored JSON and never know which backend they talk to. ``store.sqlite`` (the embedded default)
and ``store.postgres`` (several instances on one database) implement it.

The worker side works through claims: ``claim`` hands out issues that no other worker (of any
instance) holds, each with its state and its pending deliveries read in one go; every write of
the outcome names the claim, and ``release`` lets the issue go. A backend may refuse a write
whose claim it no longer holds (``LostClaim``): another worker may have the issue by then.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from events import CardAction, IssueEvent, MergeRequestEvent

SCHEMA_VERSION = 2  # both backends; numbered migrations in each backend's module


class StoreError(Exception):
    """The database cannot be used (answered 503 at the edge)."""


class LostClaim(StoreError):
    """The issue's claim was lost (the database session that held it ended)."""


@dataclass(frozen=True)
class Delivery:
    """One stored delivery, its event decoded."""

    id: int
    kind: str  # "issue" | "note" | "mr" (from GitLab) | "card" (from Trello)
    event: Any  # IssueEvent for "issue" and "note", CardAction, MergeRequestEvent
    updated_at: float | None
    received_at: float
    attempts: int


@dataclass(frozen=True)
class IssueState:
    """What the store knows of one issue's card and of its failures."""

    issue_key: str
    card_id: str | None
    board_id: str | None
    applied: dict[str, Any] | None  # the card fields as last written
    applied_updated_at: float | None
    attempts: int
    first_failure_at: float | None
    # when a create was sent whose answer is not recorded: look on the board first
    creating_at: float | None = None


@dataclass(frozen=True)
class Claim:
    """One issue handed to one worker: its state and pending deliveries, read together."""

    issue_key: str
    issue: IssueState | None
    deliveries: tuple[Delivery, ...]
    token: Any = field(default=None, compare=False)  # the backend's proof of holding it


# the columns every backend reads for a claim, in this order
DELIVERY_COLUMNS = "id, kind, event, updated_at, received_at, attempts"
ISSUE_COLUMNS = (
    "issue_key, card_id, board_id, applied, applied_updated_at, attempts, first_failure_at,"
    " creating_at"
)
# what ``migrate`` copies, table by table, in this column order
COPY_COLUMNS: Mapping[str, tuple[str, ...]] = {
    "issues": (
        "issue_key",
        "card_id",
        "board_id",
        "applied",
        "applied_updated_at",
        "attempts",
        "first_failure_at",
        "next_attempt_at",
        "last_error",
        "changed_at",
        "creating_at",
    ),
    "deliveries": (
        "dedupe_key",
        "issue_key",
        "kind",
        "updated_at",
        "event",
        "received_at",
        "state",
        "outcome",
        "attempts",
        "finished_at",
    ),
    "meta": ("key", "value"),
}


def delivery_from_row(row: Sequence[Any]) -> Delivery:
    """A row of ``DELIVERY_COLUMNS`` as a ``Delivery`` (the one place events are decoded)."""
    decode = {"card": CardAction.from_json, "mr": MergeRequestEvent.from_json}.get(
        row[1], IssueEvent.from_json
    )
    return Delivery(int(row[0]), row[1], decode(row[2]), row[3], float(row[4]), int(row[5]))


def issue_from_row(row: Sequence[Any], decode: Callable[[str], Any]) -> IssueState:
    """A row of ``ISSUE_COLUMNS`` as an ``IssueState``."""
    return IssueState(
        row[0],
        row[1],
        row[2],
        decode(row[3]) if row[3] else None,
        row[4],
        int(row[5]),
        row[6],
        row[7],
    )


def health_counts(by_state: Mapping[str, int], cards: int) -> dict[str, Any]:
    """The counts ``/healthz`` and ``status`` show."""
    return {
        "pending": by_state.get("pending", 0),
        "waiting_for_card": by_state.get("waiting", 0),
        "dead_letters": by_state.get("dead", 0),
        "delivered": by_state.get("done", 0),
        "cards": cards,
    }


class Store(abc.ABC):
    """Every query of the bridge: the queue, the issue-to-card map, dead letters, meta, health."""

    backend: str  # "sqlite" | "postgresql"
    label: str  # what to show people: the file, or the URL without its password
    # True when several instances may share it (claims hold across processes and hosts)
    shared: bool = False

    # ------------------------------------------------------------------ lifecycle
    @abc.abstractmethod
    def setup(self) -> None:
        """Create or upgrade the schema to ``SCHEMA_VERSION``; raise ``StoreError``."""

    @abc.abstractmethod
    def schema_version(self) -> int:
        """The schema version the database carries (0 when it has none yet)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Let go of connections (the store opens them again when used)."""

    # ------------------------------------------------------------------ the edge
    @abc.abstractmethod
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
        """Store one delivery durably (committed on return); (id, False) for a repeat."""

    @abc.abstractmethod
    def has_card(self, issue_key: str) -> bool:
        """True when the issue has a card on Trello."""

    @abc.abstractmethod
    def health(self) -> dict[str, Any]:
        """Counts for ``/healthz``; raises ``StoreError`` when the database cannot be read."""

    # ------------------------------------------------------------------ the worker
    @abc.abstractmethod
    def claim(self, now: float, busy: Iterable[str] = (), limit: int = 50) -> list[Claim]:
        """Up to ``limit`` due issues (oldest delivery first) that no worker holds, held now."""

    @abc.abstractmethod
    def release(self, claim: Claim) -> None:
        """Let the issue go (other workers may claim it again)."""

    @abc.abstractmethod
    def issue(self, issue_key: str) -> IssueState | None:
        """The issue's state, or None when the store has never seen it."""

    @abc.abstractmethod
    def issue_for_card(self, card_id: str) -> str | None:
        """The issue key of the issue whose card this is, from the map."""

    @abc.abstractmethod
    def adopt_card(self, claim: Claim, issue_key: str, card_id: str, board_id: str | None) -> None:
        """Move the claim's pending deliveries (queued under a card's own key, its issue not
        known then) to ``issue_key``, and map the card to that issue unless it has one."""

    @abc.abstractmethod
    def mark_creating(self, claim: Claim) -> None:
        """Record, before a card is created, that a create is under way (``creating_at``)."""

    @abc.abstractmethod
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
        """Record the card, finish the deliveries it covers (id, outcome), end any back-off."""

    @abc.abstractmethod
    def wait_for_card(self, claim: Claim, delivery_ids: Sequence[int]) -> None:
        """Park comments of an issue that has no card; ``save_card`` wakes them."""

    @abc.abstractmethod
    def mark_attempted(self, claim: Claim, delivery_id: int) -> None:
        """Count an attempt before a call that must not be repeated blindly (a comment)."""

    @abc.abstractmethod
    def finish(
        self, claim: Claim, done: Iterable[tuple[int, str]], *, now: float | None = None
    ) -> None:
        """Mark deliveries done without touching the card (stale, or nothing to do)."""

    @abc.abstractmethod
    def retry_later(
        self,
        claim: Claim,
        delivery_ids: Sequence[int],
        error: str,
        next_attempt_at: float,
        *,
        now: float | None = None,
    ) -> None:
        """Back off the whole issue until ``next_attempt_at`` and remember the failure."""

    @abc.abstractmethod
    def dead_letter(
        self, claim: Claim, delivery_ids: Sequence[int], reason: str, *, now: float | None = None
    ) -> None:
        """Give up on these deliveries, keep them with the reason; the back-off ends."""

    # ------------------------------------------------------------------ coordination
    def listen(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        """Call ``wake`` whenever new work is stored; return a function that stops listening.

        None when the backend cannot tell (the worker then polls).
        """
        return None

    @contextlib.contextmanager
    def exclusive(self, name: str) -> Iterator[bool]:
        """Try to be the only holder of ``name`` (in every instance); yields whether it is."""
        yield True

    @contextlib.contextmanager
    def worker_slot(self, wait: bool = True) -> Iterator[bool]:
        """Whether this process may run a worker: always with a shared store; with a file, the
        one that holds its worker lock (waiting for it when ``wait``)."""
        yield True

    def rate_window(self, name: str) -> Any | None:
        """A call window shared by every instance (``take(limit, interval)`` and
        ``count(older, newer)``, as ``trello.LocalWindow``), or None."""
        return None

    # ------------------------------------------------------------------ operators
    @abc.abstractmethod
    def dead_letters(self) -> list[dict[str, Any]]:
        """Every dead letter: id, issue_key, received_at, failed_at, reason, attempts."""

    @abc.abstractmethod
    def replay(self, ids: Sequence[int] | None = None) -> int:
        """Put dead letters back in the queue (all of them when ``ids`` is None)."""

    @abc.abstractmethod
    def meta(self, key: str) -> str | None:
        """A value of the key-value table (watermarks, times)."""

    @abc.abstractmethod
    def set_meta(self, key: str, value: str) -> None:
        """Set a value of the key-value table."""

    @abc.abstractmethod
    def unfinished(self, delivery_ids: Sequence[int]) -> int:
        """How many of these deliveries are still pending or waiting."""

    @abc.abstractmethod
    def delivery_states(self) -> dict[str, str]:
        """dedupe key -> state, for tests and benchmarks that check what was stored."""

    # ------------------------------------------------------------------ moving stores
    @abc.abstractmethod
    def export_rows(self, table: str) -> Iterator[tuple[Any, ...]]:
        """Rows of ``table`` to copy (``COPY_COLUMNS`` order); deliveries not yet done only."""

    @abc.abstractmethod
    def count_rows(self, table: str) -> int:
        """How many rows ``export_rows`` yields."""

    @abc.abstractmethod
    def import_rows(self, table: str, rows: Sequence[tuple[Any, ...]]) -> int:
        """Insert rows (``COPY_COLUMNS`` order), keeping those already there; return how many
        were new."""


def claims_from_rows(
    keys: Sequence[str],
    pending: Iterable[Sequence[Any]],
    issues: Iterable[Sequence[Any]],
    decode: Callable[[str], Any],
    token: Any = None,
) -> list[Claim]:
    """Claims in ``keys`` order from rows of (issue_key, DELIVERY_COLUMNS) and ISSUE_COLUMNS."""
    by_key: dict[str, list[Any]] = {key: [] for key in keys}
    for row in pending:
        by_key[row[0]].append(delivery_from_row(row[1:]))
    states = {row[0]: issue_from_row(row, decode) for row in issues}
    return [Claim(key, states.get(key), tuple(by_key[key]), token) for key in keys if by_key[key]]
