"""The delivery loop: claim, plan, run, record.

Runs inside the uWSGI service as a mule (``mule = worker:main``), so starting or restarting the
service starts or restarts it too. Issues are processed by a small thread pool: calls for different
issues overlap, the events of one issue are applied by one thread at a time, newest state first
(every issue event carries the whole issue, so the queued events of an issue merge into one).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import random
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import config as config_module
import observe
import reconcile
import sync
import trello
from events import IssueEvent
from store import PendingDelivery, Store, StoreError

log = logging.getLogger("gitlab2trello.worker")


@dataclass
class Board:
    """What the worker caches about one board: its labels, members and open cards by issue URL."""

    id: str
    labels: dict[str, str] | None = None  # lower-cased name -> label id
    members: dict[str, str] | None = None  # lower-cased username -> member id
    cards: dict[str, dict[str, Any]] | None = None  # issue URL -> card
    lock: threading.RLock = field(default_factory=threading.RLock)


class Worker:
    """Applies stored deliveries to Trello."""

    def __init__(
        self,
        config: config_module.Config,
        store: Store,
        client: trello.Client | None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.client = client
        self.clock = clock
        self._boards: dict[str, Board] = {}
        self._list_board: dict[str, str] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ the loop

    def run(self, stop: threading.Event, *, reconcile: bool = True) -> None:
        """Deliver until ``stop`` is set; in-flight issues are finished before returning."""
        concurrency = int(self.config.trello["concurrency"])
        poll = float(self.config.worker["poll_interval"])
        in_flight: set[str] = set()
        guard = threading.Lock()
        wake = threading.Event()

        def done(key: str) -> None:
            with guard:
                in_flight.discard(key)
            wake.set()

        reconciler = self._start_reconciler(stop) if reconcile else None
        with ThreadPoolExecutor(concurrency, thread_name_prefix="deliver") as pool:
            while not stop.is_set():
                with guard:
                    room = concurrency * 2 - len(in_flight)
                    busy = set(in_flight)
                try:
                    keys = self.store.due_issues(self.clock(), busy, room) if room > 0 else []
                except (StoreError, sqlite3.Error) as exc:
                    log.error("cannot read the queue: %s", exc)
                    keys = []
                    stop.wait(1)
                for key in keys:
                    with guard:
                        in_flight.add(key)
                    future = pool.submit(self.process, key)
                    future.add_done_callback(lambda _f, key=key: done(key))
                wake.wait(poll if not keys else 0.01)
                wake.clear()
            log.info("worker stopping: finishing %d issue(s) in flight", len(in_flight))
        if reconciler is not None:
            reconciler.join(5)

    def _start_reconciler(self, stop: threading.Event) -> threading.Thread | None:
        """Reconcile ``[gitlab] projects`` every ``reconcile_interval`` seconds, first at start."""
        interval = float(self.config.gitlab["reconcile_interval"])
        api = reconcile.api_from_config(self.config)
        if not interval or api is None or not self.config.gitlab["projects"]:
            return None

        def loop() -> None:
            while not stop.is_set():
                try:
                    outcome = reconcile.reconcile(self.config, self.store, api, self.clock())
                    observe.count_reconcile(True, outcome.queued)
                except Exception as exc:  # GitLab down or a bug: try again next time
                    observe.count_reconcile(False)
                    log.warning("reconciliation failed: %s", exc)
                stop.wait(interval)

        thread = threading.Thread(target=loop, name="reconcile", daemon=True)
        thread.start()
        return thread

    def process(self, issue_key: str) -> None:
        """Apply every pending delivery of one issue; never raises."""
        try:
            pending = self.store.pending_for(issue_key)
            if not pending:
                return
            observe.request_id.set(f"d{pending[0].id}")
            try:
                self._apply(issue_key, pending)
            except trello.TrelloError as exc:
                self._failed(issue_key, pending, exc, transient=exc.transient)
            except (StoreError, sqlite3.Error):
                raise
            except Exception as exc:  # a bug must not stop the loop: back off, keep the delivery
                log.exception("unexpected error applying %s", issue_key)
                self._failed(issue_key, pending, exc, transient=True)
        except (
            StoreError,
            sqlite3.Error,
        ) as exc:  # full disk, broken file: deliveries stay pending
            log.error("%s: the store failed (%s); trying again shortly", issue_key, exc)
            time.sleep(1)

    def _failed(
        self, issue_key: str, pending: list[PendingDelivery], exc: Exception, *, transient: bool
    ) -> None:
        ids = [p.id for p in pending]
        reason = str(exc) or type(exc).__name__
        now = self.clock()
        row = self.store.issue(issue_key)
        attempts = row.attempts if row else 0
        first = row.first_failure_at if row and row.first_failure_at else now
        give_up = float(self.config.worker["give_up_after"])
        if transient and now - first < give_up:
            initial = float(self.config.worker["retry_initial_wait"])
            cap = float(self.config.worker["retry_max_wait"])
            wait = min(cap, initial * 2**attempts) * random.uniform(0.5, 1.0)
            self.store.retry_later(issue_key, ids, reason, now + wait, now=now)
            log.warning("%s: %s; retry %d in %.1f s", issue_key, reason, attempts + 1, wait)
        else:
            if transient:
                reason = f"gave up after {now - first:.0f} s: {reason}"
            self.store.dead_letter(issue_key, ids, reason, now=now)
            log.error("%s: dead letter (%d deliveries): %s", issue_key, len(ids), reason)

    # ------------------------------------------------------------------ applying

    def _apply(self, issue_key: str, pending: list[PendingDelivery]) -> None:
        events = [(p, IssueEvent.from_json(p.event)) for p in pending if p.kind == "issue"]
        notes = [(p, IssueEvent.from_json(p.event)) for p in pending if p.kind == "note"]
        if events:
            self._apply_issue(issue_key, events)
        if notes:
            self._apply_notes(issue_key, notes)

    def _apply_notes(self, issue_key: str, notes: list[tuple[PendingDelivery, IssueEvent]]) -> None:
        """Copy comments, once each, in the order they arrived; park them while there is no card."""
        row = self.store.issue(issue_key)
        if row is None or row.card_id is None:
            self.store.wait_for_card([p.id for p, _ in notes])
            log.info("%s: %d comment(s) wait for the card", issue_key, len(notes))
            return
        if self.client is None:
            raise RuntimeError("Trello is not configured")
        for delivery, event in notes:
            assert event.note is not None
            if delivery.attempts and self.client.has_comment(row.card_id, event.note.url):
                outcome = "already copied"
            else:
                self.store.mark_attempted(delivery.id)
                self.client.add_comment(
                    row.card_id, sync.comment_text(event.note, event.project_url)
                )
                outcome = "commented"
            self.store.finish([(delivery.id, outcome)])
            observe.observe_latency([self.clock() - delivery.received_at])
            log.info("%s: %s -> %s on card %s", issue_key, event.describe, outcome, row.card_id)

    def _apply_issue(
        self, issue_key: str, events: list[tuple[PendingDelivery, IssueEvent]]
    ) -> None:
        newest_delivery, event = max(events, key=lambda pe: (pe[1].updated_at or 0.0, pe[0].id))
        row = self.store.issue(issue_key)
        if (
            row is not None
            and row.applied_updated_at is not None
            and event.updated_at is not None
            and event.updated_at < row.applied_updated_at
        ):
            self.store.finish([(p.id, "stale") for p, _ in events])
            log.info("%s: %d stale event(s) skipped", issue_key, len(events))
            return
        if self.client is None:
            raise RuntimeError("Trello is not configured")
        done = [(p.id, "applied" if p is newest_delivery else "merged") for p, _ in events]
        routing = self.config.routing(event.project_id, event.project_path)
        spec = sync.desired_card(event, routing, self.config.gitlab["confidential"])
        card_id = row.card_id if row else None
        applied = row.applied if row and row.card_id else None
        if spec is None or spec.list_id is None:
            # no visible card wanted (confidential, or nowhere to put it): archive one if it exists
            if card_id and applied and not applied.get("closed"):
                self.client.update_card(card_id, {"closed": True})
                applied = {**applied, "closed": True}
            self.store.save_card(
                issue_key,
                card_id,
                row.board_id if row else None,
                applied,
                event.updated_at,
                done=done,
            )
            return
        board = self._board_for_list(spec.list_id)
        if card_id is None:
            found = self._find_card(board, event.url)
            if found is not None:
                card_id = found["id"]
                applied = sync.found_state(found, {v: k for k, v in self._labels(board).items()})
                log.info("%s: found card %s on the board", issue_key, card_id)
        labels = self._ensure_labels(board, spec.labels)
        members = self._members(board) if spec.members else {}
        spec = sync.with_unmapped(event, spec, routing, members.keys())
        ops = sync.plan(spec, applied, labels, members)
        try:
            for op in ops:
                created = self._run(op, card_id)
                if created is not None:
                    card_id = created["id"]
                    with board.lock:
                        if board.cards is not None:  # just the id: the map has the rest
                            board.cards[event.url] = {"id": card_id, "idList": spec.list_id}
        except trello.TrelloError:
            with board.lock:
                # a lost answer may hide a created card or label, and a 4xx may come from a
                # label or member removed by hand: read the board again on the next attempt
                board.cards = board.labels = board.members = None
            raise
        self.store.save_card(
            issue_key,
            card_id,
            board.id,
            sync.applied_state(spec, labels, members, applied) if card_id else None,
            event.updated_at,
            done=done,
        )
        now = self.clock()
        observe.observe_latency(now - p.received_at for p, _ in events)
        log.info(
            "%s: %s -> card %s (%d call%s)",
            issue_key,
            event.describe,
            card_id or "none",
            len(ops),
            "" if len(ops) == 1 else "s",
        )

    def _run(self, op: sync.Op, card_id: str | None) -> dict[str, Any] | None:
        """Perform one operation; return the card when it was created."""
        assert self.client is not None
        if op.kind == "create":
            return self.client.create_card(op.fields)
        assert card_id is not None
        if op.kind == "update":
            self.client.update_card(card_id, op.fields)
        elif op.kind == "add_label":
            self.client.add_card_label(card_id, op.fields["value"])
        elif op.kind == "remove_label":
            self.client.remove_card_label(card_id, op.fields["id"])
        elif op.kind == "add_member":
            self.client.add_card_member(card_id, op.fields["value"])
        elif op.kind == "remove_member":
            self.client.remove_card_member(card_id, op.fields["id"])
        elif op.kind == "comment":
            self.client.add_comment(card_id, op.fields["text"])
        else:  # pragma: no cover - plan() makes no other kind
            raise ValueError(f"unknown operation {op.kind}")
        return None

    # ------------------------------------------------------------------ board cache

    def _board_for_list(self, list_id: str) -> Board:
        assert self.client is not None
        with self._lock:  # held while asking Trello, so a cold start asks once, not per thread
            board_id = self._list_board.get(list_id)
            if board_id is None:
                board_id = self.client.get_list(list_id)["idBoard"]
                self._list_board[list_id] = board_id
            return self._boards.setdefault(board_id, Board(board_id))

    def _find_card(self, board: Board, url: str) -> dict[str, Any] | None:
        """The open card whose description carries ``url``; the board is read once, then indexed."""
        assert self.client is not None
        with board.lock:
            if board.cards is None:
                index: dict[str, dict[str, Any]] = {}
                for card in self.client.board_cards(board.id):
                    for found in sync.issue_urls(card.get("desc") or ""):
                        index.setdefault(found, card)
                board.cards = index
            return board.cards.get(url)

    def _labels(self, board: Board) -> dict[str, str]:
        assert self.client is not None
        with board.lock:
            if board.labels is None:
                labels: dict[str, str] = {}
                for label in self.client.board_labels(board.id):
                    if label.get("name"):
                        labels.setdefault(label["name"].lower(), label["id"])
                board.labels = labels
            return board.labels

    def _ensure_labels(self, board: Board, wanted: tuple[Any, ...]) -> dict[str, str]:
        if not wanted:
            return {}
        assert self.client is not None
        with board.lock:
            labels = self._labels(board)
            for label in wanted:
                if label.name.lower() not in labels:
                    created = self.client.create_label(
                        board.id, label.name, sync.nearest_color(label.color)
                    )
                    labels[label.name.lower()] = created["id"]
            return dict(labels)

    def _members(self, board: Board) -> dict[str, str]:
        assert self.client is not None
        with board.lock:
            if board.members is None:
                board.members = {
                    m["username"].lower(): m["id"]
                    for m in self.client.board_members(board.id)
                    if m.get("username")
                }
            return dict(board.members)


# ---------------------------------------------------------------------- the process


@contextlib.contextmanager
def single_instance(path: str) -> Iterator[None]:
    """Hold an exclusive lock so that only one worker delivers from one database."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                log.warning("another worker holds %s; waiting", path)
                time.sleep(2)
        yield
    finally:
        os.close(fd)


def build(cfg: config_module.Config) -> Worker:
    """A worker wired to the configured store and Trello."""
    store = Store.from_config(cfg)
    store.setup()
    client = None
    if cfg.trello_configured:
        t = cfg.trello
        client = trello.Client(
            t["api_url"],
            t["key"],
            t["token"],
            connect_timeout=t["connect_timeout"],
            read_timeout=t["read_timeout"],
            pacer=trello.Pacer(limit=t["max_requests_per_10s"], interval=10.0),
            on_call=observe.count_trello_call,
        )
    return Worker(cfg, store, client)


def main() -> None:
    """Entry point of the uWSGI mule (``mule = worker.py``) and of ``python worker.py``."""
    cfg = config_module.load()
    observe.setup_logging(cfg.server["log_level"], observe.secrets_of(cfg))
    observe.setup_metrics(cfg.state_dir, cfg.server["instance"])
    stop = threading.Event()

    def request_stop(signum: int, _frame: Any) -> None:
        log.info("worker got signal %d", signum)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, request_stop)
    if not cfg.worker["enabled"]:
        log.info("worker disabled by [worker] enabled = false")
    elif not cfg.trello_configured:
        log.warning(
            "Trello is not configured ([trello] key, token, list_id): deliveries are stored "
            "and wait until it is"
        )
    else:
        _deliver_until(cfg, stop)
    stop.wait()
    log.info("worker stopped")


def _deliver_until(cfg: config_module.Config, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            worker = build(cfg)
            break
        except StoreError as exc:  # keep trying: the web side answers 503 meanwhile
            log.error("worker cannot start: %s", exc)
            stop.wait(5)
    else:
        return
    with single_instance(f"{cfg.database}.worker.lock"):
        log.info("worker started (pid %d)", os.getpid())
        worker.run(stop)


if __name__ == "__main__":
    main()
