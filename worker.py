"""The delivery loop: claim, plan, run, record.

Runs inside the uWSGI service as a mule (``mule = worker:main``), so starting or restarting the
service starts or restarts it too. Issues are processed by a small thread pool: calls for different
issues overlap, the events of one issue are applied by one thread at a time, newest state first
(every issue event carries the whole issue, so the queued events of an issue merge into one).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import config as config_module
import gitlab_client
import gitlab_hook
import memory
import observe
import reconcile
import retry
import sync
import sync_back
import trello
import trello_hook
from store import Claim, Delivery, IssueState, LostClaim, Store, StoreError, open_store

log = logging.getLogger("gitlab2trello.worker")

# what the bridge knows the card shows (``sync.card_view``), carried from one event to the next
_VIEW = ("card_labels", "card_members", "written")


class Worker:
    """Applies stored deliveries to Trello: claim, plan, run, record."""

    def __init__(
        self,
        config: config_module.Config,
        store: Store,
        client: trello.Client | None,
        *,
        gitlab: gitlab_client.Client | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.client = client
        self.gitlab = gitlab  # writes to GitLab (two-way sync)
        self.trello_member_id: str | None = None
        self.gitlab_username: str | None = None
        self.boards = trello.BoardCache(client) if client is not None else None
        self.clock = clock

    # ------------------------------------------------------------------ the loop

    def run(self, stop: threading.Event, *, reconcile: bool = True) -> None:
        """Deliver until ``stop`` is set; in-flight issues are finished before returning."""
        concurrency = int(self.config.trello["concurrency"])
        poll = float(self.config.worker["poll_interval"])
        in_flight: set[str] = set()
        guard = threading.Lock()
        wake = threading.Event()
        stop_listening = self.store.listen(wake.set)
        # with notifications, polling only catches back-offs that have run out
        idle = poll if stop_listening is None else max(poll, 2.0)

        def done(claim: Claim) -> None:
            try:
                self.store.release(claim)
            except StoreError as exc:
                log.warning("%s: not released: %s", claim.issue_key, exc)
            with guard:
                in_flight.discard(claim.issue_key)
            wake.set()

        reconciler = self._start_reconciler(stop) if reconcile else None
        catcher = self._start_two_way(stop, catch_up=reconcile)
        try:
            with ThreadPoolExecutor(concurrency, thread_name_prefix="deliver") as pool:
                while not stop.is_set():
                    with guard:
                        room = concurrency * 2 - len(in_flight)
                        busy = set(in_flight)
                    wake.clear()
                    try:
                        claims = self.store.claim(self.clock(), busy, room) if room > 0 else []
                    except StoreError as exc:
                        log.error("cannot read the queue: %s", exc)
                        claims = []
                        stop.wait(1)
                    for claim in claims:
                        with guard:
                            in_flight.add(claim.issue_key)
                        future = pool.submit(self.process, claim)
                        future.add_done_callback(lambda _f, claim=claim: done(claim))
                    wake.wait(idle if not claims else 0.01)
                log.info("worker stopping: finishing %d issue(s) in flight", len(in_flight))
        finally:
            if stop_listening is not None:
                stop_listening()
        for thread in (reconciler, catcher):
            if thread is not None:
                thread.join(5)

    def _start_reconciler(self, stop: threading.Event) -> threading.Thread | None:
        """Reconcile ``[gitlab] projects`` every ``reconcile_interval`` seconds, first at start.

        One instance at a time: the others skip the pass; the watermark is in the store.
        """
        interval = float(self.config.gitlab["reconcile_interval"])
        api = reconcile.api_from_config(self.config)
        if not interval or api is None or not self.config.gitlab["projects"]:
            return None

        def loop() -> None:
            while not stop.is_set():
                try:
                    with self.store.exclusive("reconcile") as mine:
                        last = float(self.store.meta("last_reconcile_at") or 0)
                        if not mine:
                            log.debug("another instance is reconciling: pass skipped")
                        elif self.clock() - last < interval / 2:
                            log.debug(
                                "reconciled %.0f s ago elsewhere: pass skipped", self.clock() - last
                            )
                        else:
                            outcome = reconcile.reconcile(
                                self.config, self.store, api, self.clock()
                            )
                            observe.count_reconcile(True, outcome.queued)
                except Exception as exc:  # GitLab or the store down, or a bug: next time
                    observe.count_reconcile(False)
                    log.warning("reconciliation failed: %s", exc)
                stop.wait(interval)

        thread = threading.Thread(target=loop, name="reconcile", daemon=True)
        thread.start()
        return thread

    def _start_two_way(self, stop: threading.Event, *, catch_up: bool) -> threading.Thread | None:
        """With ``[twoway] enabled``: learn who the bridge is on both sides and which boards it
        manages (for the edge), then read the boards' recent actions every ``actions_interval``
        seconds, so that actions whose webhook deliveries Trello gave up on still arrive."""
        if not self.config.twoway["enabled"] or self.client is None or self.boards is None:
            return None
        interval = float(self.config.twoway["actions_interval"])

        def loop() -> None:
            learned = False
            while not stop.is_set():
                try:
                    if not learned:
                        self.learn()
                        learned = True
                    if catch_up and interval:
                        with self.store.exclusive("trello-actions") as mine:
                            if mine:
                                self.catch_up()
                except Exception as exc:  # Trello, GitLab or the store down: next time
                    log.warning("two-way sync: %s", exc)
                stop.wait(interval if learned and interval else 5)

        thread = threading.Thread(target=loop, name="two-way", daemon=True)
        thread.start()
        return thread

    def managed_boards(self) -> list[str]:
        """The boards of every configured list."""
        assert self.boards is not None
        lists = {
            list_id
            for routing in self.config.routings()
            for list_id in (routing.list_id, routing.done_list_id, *routing.lists.values())
            if list_id
        }
        return sorted({self.boards.board_of(list_id) for list_id in lists})

    def learn(self) -> None:
        """Write down the bridge's own Trello member and GitLab user, and its boards."""
        assert self.client is not None
        self.trello_member_id = str(self.client.me()["id"])
        self.store.set_meta("trello_member_id", self.trello_member_id)
        self.store.set_meta("trello_boards", json.dumps(self.managed_boards()))
        if self.gitlab is not None:
            self.gitlab_username = str(self.gitlab.me()["username"])
            self.store.set_meta("gitlab_username", self.gitlab_username)

    def catch_up(self) -> int:
        """Queue the boards' actions since the last look (with overlap) that are not queued
        yet (deduped on the action id); return how many were new."""
        assert self.client is not None
        synced = self.config.twoway["sync"]
        boards = self.managed_boards()
        queued = 0
        for board_id in boards:
            mark_key = f"trello_actions_since:{board_id}"
            mark = self.store.meta(mark_key)
            now = self.clock()
            if mark is None:  # the first look: from now on
                self.store.set_meta(mark_key, str(now))
                continue
            since = gitlab_hook.format_time(float(mark) - reconcile.OVERLAP)
            newest = float(mark)
            for raw in self.client.board_actions(board_id, trello_hook.SYNCED_TYPES, since=since):
                try:
                    action = trello_hook.parse_action(raw)
                except trello_hook.BadDelivery as exc:
                    log.warning("board %s: unreadable action: %s", board_id, exc)
                    continue
                if isinstance(action, trello_hook.Ignored):
                    continue
                newest = max(newest, action.date)
                if trello_hook.ignored_reason(
                    action,
                    synced,
                    own_member=self.trello_member_id,
                    boards=frozenset(boards),
                    new_card_lists=self._new_card_lists(),
                ):
                    continue
                key = self.store.issue_for_card(action.card_id) or f"trello-card:{action.card_id}"
                _id, created = self.store.add_delivery(
                    f"trello:{action.id}",
                    key,
                    action.to_json(),
                    kind="card",
                    updated_at=action.date,
                )
                queued += created
            self.store.set_meta(mark_key, str(max(newest, now - reconcile.OVERLAP)))
        if queued:
            log.info("caught up on %d Trello action(s) the webhook did not bring", queued)
        return queued

    def process(self, claim: Claim) -> None:
        """Apply every pending delivery of one claimed issue; never raises."""
        try:
            if not claim.deliveries:
                return
            observe.request_id.set(f"d{claim.deliveries[0].id}")
            try:
                self._apply(claim)
            except (trello.TrelloError, gitlab_client.GitLabError) as exc:
                self._failed(claim, exc, transient=exc.transient)
            except StoreError:
                raise
            except Exception as exc:  # a bug must not stop the loop: back off, keep the delivery
                log.exception("unexpected error applying %s", claim.issue_key)
                self._failed(claim, exc, transient=True)
        except LostClaim as exc:
            log.warning("%s; its deliveries stay queued", exc)
        except StoreError as exc:  # full disk, database down: deliveries stay pending
            log.error("%s: the store failed (%s); trying again shortly", claim.issue_key, exc)
            time.sleep(1)

    def _failed(self, claim: Claim, exc: Exception, *, transient: bool) -> None:
        ids = [d.id for d in claim.deliveries]
        now = self.clock()
        row = claim.issue
        decision = retry.decide(
            reason=str(exc) or type(exc).__name__,
            transient=transient,
            attempts=row.attempts if row else 0,
            first_failure_at=row.first_failure_at if row else None,
            now=now,
            policy=self.config.worker,
        )
        if isinstance(decision, retry.Backoff):
            self.store.retry_later(claim, ids, str(exc), decision.at, now=now)
            log.warning(
                "%s: %s; retry %d in %.1f s",
                claim.issue_key,
                exc,
                (row.attempts if row else 0) + 1,
                decision.wait,
            )
        else:
            self.store.dead_letter(claim, ids, decision.reason, now=now)
            log.error(
                "%s: dead letter (%d deliveries): %s", claim.issue_key, len(ids), decision.reason
            )

    # ------------------------------------------------------------------ applying

    def _apply(self, claim: Claim) -> None:
        events = [d for d in claim.deliveries if d.kind == "issue"]
        notes = [d for d in claim.deliveries if d.kind == "note"]
        actions = [d for d in claim.deliveries if d.kind == "card"]
        requests = [d for d in claim.deliveries if d.kind == "mr"]
        if claim.issue_key.startswith("mr:"):
            self._fan_out_merge_requests(claim, requests)
            return
        row = claim.issue
        if actions:  # first: their times decide what an older issue event may still change
            newest = max((d.event.updated_at or 0.0 for d in events), default=None)
            row = self._apply_card_actions(claim, actions, newest)
        card_id = row.card_id if row else None
        if events:
            card_id = self._apply_issue(claim, events, row)
        if notes:
            self._apply_notes(claim, notes, card_id)
        if requests:
            self._apply_merge_requests(claim, requests)

    # ------------------------------------------------------------------ merge requests

    def _fan_out_merge_requests(self, claim: Claim, requests: Sequence[Delivery]) -> None:
        """Ask GitLab which issues each merge request will close, and queue it on each of
        those that has a card (so that it is applied in the order of that issue's events)."""
        if self.gitlab is None:
            raise RuntimeError("merge requests need [gitlab] url and private_token")
        for delivery in requests:
            mr = delivery.event
            closes = self.gitlab.closes_issues(mr.project_id, mr.iid)
            keys = [
                f"{gitlab_hook.instance_of(i['web_url'])}|{i['project_id']}|{i['iid']}"
                for i in closes
                if i.get("web_url")
            ]
            synced = [key for key in keys if self.store.has_card(key)]
            # the issues it was on before and no longer closes (its description was edited)
            remembered = f"closes:{mr.key}"
            before = json.loads(self.store.meta(remembered) or "[]")
            dropped = [key for key in before if key not in synced]
            for key, event in [(k, mr) for k in synced] + [
                (k, dataclasses.replace(mr, closes=False)) for k in dropped
            ]:
                self.store.add_delivery(
                    f"mr:{delivery.id}:{key}",
                    key,
                    event.to_json(),
                    kind="mr",
                    updated_at=mr.updated_at,
                )
            if synced or before:
                self.store.set_meta(remembered, json.dumps(sorted(synced)))
            outcome = f"on {len(synced)} card(s)" if synced else "closes no synced issue"
            if dropped:
                outcome += f", no longer closes {len(dropped)}"
            self.store.finish(claim, [(delivery.id, outcome)])
            log.info("%s: %s -> %s", claim.issue_key, mr.describe, outcome)

    def _apply_merge_requests(self, claim: Claim, requests: Sequence[Delivery]) -> None:
        """Attach each merge request to the card once; with ``[trello] review_list_id``, the
        card waits there while an open merge request will close it, and goes back to its list
        when that request is closed without being merged."""
        assert self.client is not None
        row = self.store.issue(claim.issue_key)  # the issue's events may have just changed it
        if row is None or row.card_id is None:
            self.store.finish(claim, [(d.id, "the issue has no card") for d in requests])
            return
        applied = dict(row.applied or {})
        review = self.config.trello["review_list_id"]
        for delivery in sorted(requests, key=lambda d: ((d.event.updated_at or 0.0), d.id)):
            mr = delivery.event
            mrs = dict(applied.get("mrs") or {})
            seen = mr.url in mrs or (
                delivery.attempts > 0 and mr.url in self.client.attachment_urls(row.card_id)
            )
            if not seen and mr.closes:
                self.store.mark_attempted(claim, delivery.id)
                self.client.add_attachment(row.card_id, mr.url, mr.name)
            # a request that no longer closes the issue keeps its attachment, not the card
            mrs[mr.url] = mr.state if mr.closes else "unlinked"
            applied["mrs"] = mrs
            if review and not applied.get("closed"):
                reviewing = any(state == "opened" for state in mrs.values())
                left = mr.state == "closed" or not mr.closes
                if reviewing and applied.get("list") != review:
                    self.client.update_card(row.card_id, {"idList": review})
                    applied["list"] = review
                elif not reviewing and applied.get("list") == review and left:
                    back = self._list_by_labels(claim.issue_key)
                    if back and back != review:
                        # a card a person moved out of review by hand stays where they put it
                        if self.client.get_card(row.card_id).get("idList") == review:
                            self.client.update_card(row.card_id, {"idList": back})
                        applied["list"] = back
            self.store.save_card(
                claim,
                row.card_id,
                row.board_id,
                applied,
                row.applied_updated_at,
                done=[(delivery.id, f"merge request {mr.state if mr.closes else 'unlinked'}")],
            )
            log.info("%s: %s on card %s", claim.issue_key, mr.describe, row.card_id)

    def _list_by_labels(self, issue_key: str) -> str | None:
        """The list the issue's labels put its card in (asked of GitLab: the issue now)."""
        assert self.gitlab is not None
        _instance, project, iid = issue_key.rsplit("|", 2)
        data = self.gitlab.issue(int(project), int(iid))
        event = gitlab_client.issue_from_rest(data, {"id": int(project)})
        return sync.target_list(event, self.config.routing(event.project_id, None))

    # ------------------------------------------------------------------ Trello -> GitLab

    def _apply_card_actions(
        self, claim: Claim, actions: Sequence[Delivery], newest_gitlab: float | None
    ) -> IssueState | None:
        """Write what people did on the card to its issue, one action at a time, in the order
        they happened; return the issue's state with what the card now shows."""
        row = claim.issue
        if claim.issue_key.startswith("trello-card:"):
            self._find_issue_of_card(claim, actions[0].event)
            return row
        if row is None or row.card_id is None:
            reason = "not a card of the bridge (or its issue is not in the map)"
            self.store.finish(claim, [(d.id, reason) for d in actions])
            log.info("%s: %d card action(s) ignored: %s", claim.issue_key, len(actions), reason)
            return row
        if self.gitlab is None:
            raise RuntimeError("two-way sync needs [gitlab] url and private_token")
        _instance, project, iid = claim.issue_key.rsplit("|", 2)
        project_id, issue_iid = int(project), int(iid)
        applied = row.applied
        routing = self.config.routing(project_id, (applied or {}).get("project_path"))
        synced = self.config.twoway["sync"]
        for delivery in sorted(actions, key=lambda d: (d.event.date, d.id)):
            action = delivery.event
            if action.member_id == self.trello_member_id:
                outcome = "made by the bridge itself"
            elif (
                newest_gitlab is not None
                and newest_gitlab > action.date
                and action.what in sync_back.CONCERNS
            ):
                # GitLab changed the issue after the person changed the card: GitLab wins, and
                # its event (applied next) brings the card in line
                outcome = "older than the issue's own change"
            else:
                write = sync_back.plan(action, routing, synced)
                outcome = self._write_gitlab(claim, delivery, project_id, issue_iid, write)
            redo = (
                sync_back.undone(action, applied)
                if action.member_id != self.trello_member_id
                and (action.what == "labels" or outcome != "older than the issue's own change")
                else None
            )
            if redo is not None:
                # the bridge's last whole-set write went out before it heard of this change
                self._run(redo, row.card_id)
                outcome += "; made again on the card (a write sent before it was known undid it)"
            applied = sync_back.card_after(action, applied, routing)
            self.store.save_card(
                claim,
                row.card_id,
                row.board_id,
                applied,
                row.applied_updated_at,
                done=[(delivery.id, outcome)],
            )
            observe.observe_latency([self.clock() - delivery.received_at])
            log.info("%s: %s -> %s", claim.issue_key, action.describe, outcome)
        return dataclasses.replace(row, applied=applied)

    def _new_card_lists(self) -> frozenset[str]:
        if not self.config.twoway["create_issues"]:
            return frozenset()
        return frozenset(self.config.new_card_lists())

    def _find_issue_of_card(self, claim: Claim, action: Any) -> None:
        """A card the map does not know (lost, or not the bridge's): its issue is the issue URL
        in its description. Its actions then move to that issue's own key (and its order)."""
        assert self.client is not None
        card = self.client.get_card(action.card_id)
        urls = sync.issue_urls(card.get("desc") or "")
        issue_key = self._issue_key_of(urls[0]) if urls else None
        created = [d for d in claim.deliveries if d.event.what == "created"]
        if issue_key is None and created and action.member_id != self.trello_member_id:
            issue_key = self._issue_from_card(claim, created[0], card)
        if issue_key is None:
            reason = "not a card of the bridge (no issue URL in its description)"
            self.store.finish(claim, [(d.id, reason) for d in claim.deliveries])
            log.info("card %s: %s", action.card_id, reason)
            return
        self.store.adopt_card(claim, issue_key, action.card_id, card.get("idBoard"))
        log.info("card %s belongs to %s (found by its description)", action.card_id, issue_key)

    def _issue_from_card(
        self, claim: Claim, delivery: Delivery, card: dict[str, Any]
    ) -> str | None:
        """A card a person added in a new-card list becomes an issue of that list's project
        (once: an issue already carrying the card's URL is the one), and the card is renamed as
        if the issue had been opened in GitLab. Returns the issue's key."""
        assert self.client is not None and self.gitlab is not None
        action = delivery.event
        project = self._new_card_lists() and self.config.new_card_lists().get(action.list_id or "")
        if not project:
            return None
        project_id = int(project) if project.isdigit() else self.gitlab.project_id(project)
        card_url = (
            card.get("shortUrl") or f"https://trello.com/c/{card.get('shortLink') or card['id']}"
        )
        issue = self.gitlab.find_issue(project_id, card_url)
        if issue is None:
            text = (card.get("desc") or "").strip()
            description = (f"{text}\n\n" if text else "") + f"Created from Trello card {card_url}"
            issue = self.gitlab.create_issue(project_id, card.get("name") or card_url, description)
            log.info("card %s -> issue #%s of project %s", card["id"], issue["iid"], project)
        event = gitlab_client.issue_from_rest(
            issue,
            {
                "id": project_id,
                "path_with_namespace": str(project) if not project.isdigit() else None,
            },
        )
        routing = self.config.routing(project_id, event.project_path)
        spec = sync.desired_card(event, routing, self.config.gitlab["confidential"])
        if spec is not None:
            self.client.update_card(card["id"], {"name": spec.name, "desc": spec.desc})
        self.store.finish(claim, [(delivery.id, f"issue #{issue['iid']} created")])
        return event.issue_key

    def _issue_key_of(self, url: str) -> str | None:
        """``instance|project id|iid`` of an issue URL (the project's id asked of GitLab)."""
        match = re.match(r"^(https?://[^/]+)/(.+?)(?:/-)?/issues/(\d+)$", url)
        if match is None or self.gitlab is None:
            return None
        try:
            project_id = self.gitlab.project_id(match.group(2))
        except gitlab_client.GitLabNotFound:
            return None
        return f"{gitlab_hook.instance_of(url)}|{project_id}|{int(match.group(3))}"

    def _write_gitlab(
        self, claim: Claim, delivery: Delivery, project_id: int, iid: int, write: sync_back.Write
    ) -> str:
        """Perform ``write`` on the issue; return the delivery's outcome."""
        assert self.gitlab is not None
        if write.empty:
            return f"nothing to write: {write.reason}"
        fields = dict(write.fields)
        name = write.assign or write.unassign
        if name:
            user_id = self.gitlab.user_id(name)
            if user_id is None:
                log.info("%s: no GitLab user %s: assignees left alone", claim.issue_key, name)
                if not fields and not write.note:
                    return f"no GitLab user {name}"
            else:
                issue = self.gitlab.issue(project_id, iid)
                current = [int(a["id"]) for a in issue.get("assignees") or () if "id" in a]
                wanted = (
                    [*current, user_id]
                    if write.assign and user_id not in current
                    else [i for i in current if i != user_id]
                    if write.unassign
                    else current
                )
                if wanted != current:
                    fields["assignee_ids"] = wanted
        if fields:
            self.gitlab.update_issue(project_id, iid, fields)
        if write.note:
            if delivery.attempts and self.gitlab.has_note(project_id, iid, write.note):
                return "comment already copied"
            self.store.mark_attempted(claim, delivery.id)
            self.gitlab.add_note(project_id, iid, write.note)
        return "written" if fields or write.note else "nothing to change"

    def _apply_notes(self, claim: Claim, notes: Sequence[Delivery], card_id: str | None) -> None:
        """Copy comments, once each, in the order they arrived; park them while there is no card."""
        if card_id is None:
            self.store.wait_for_card(claim, [d.id for d in notes])
            log.info("%s: %d comment(s) wait for the card", claim.issue_key, len(notes))
            return
        if self.client is None:
            raise RuntimeError("Trello is not configured")
        for delivery in notes:
            event = delivery.event
            assert event.note is not None
            if delivery.attempts and self.client.has_comment(card_id, event.note.url):
                outcome = "already copied"
            else:
                self.store.mark_attempted(claim, delivery.id)
                self.client.add_comment(card_id, sync.comment_text(event.note, event.project_url))
                outcome = "commented"
            self.store.finish(claim, [(delivery.id, outcome)])
            observe.observe_latency([self.clock() - delivery.received_at])
            log.info("%s: %s -> %s on card %s", claim.issue_key, event.describe, outcome, card_id)

    def _apply_issue(
        self, claim: Claim, events: Sequence[Delivery], row: IssueState | None
    ) -> str | None:
        """Bring the card to the newest state of the issue; return the card's id, if any."""
        newest = max(events, key=lambda d: (d.event.updated_at or 0.0, d.id))
        event = newest.event
        if (
            row is not None
            and row.applied_updated_at is not None
            and event.updated_at is not None
            and event.updated_at < row.applied_updated_at
        ):
            self.store.finish(claim, [(d.id, "stale") for d in events])
            log.info("%s: %d stale event(s) skipped", claim.issue_key, len(events))
            return row.card_id
        if self.client is None or self.boards is None:
            raise RuntimeError("Trello is not configured")
        done = [(d.id, "applied" if d is newest else "merged") for d in events]
        routing = self.config.routing(event.project_id, event.project_path)
        spec = sync.desired_card(event, routing, self.config.gitlab["confidential"])
        review = self.config.trello["review_list_id"]
        open_mrs = row is not None and any(
            state == "opened" for state in ((row.applied or {}).get("mrs") or {}).values()
        )
        if spec is not None and review and open_mrs and event.state != "closed":
            spec = dataclasses.replace(spec, list_id=review)  # in review while a request is open
        if spec is not None and row is not None:
            # what a person changed on the card after this event stays as they left it
            newer = sync_back.newer_on_card(row.applied, event.updated_at)
            if self.gitlab_username and event.author == self.gitlab_username:
                # GitLab's webhooks for the bridge's own writes, which come from the card: the
                # card already shows their lists, members and due date (GitLab may send an
                # intermediate state first, e.g. a reopen before the label change it came with)
                newer |= {"lists", "members", "due"}
            spec = sync.keep_card_values(spec, row.applied, newer)
        card_id = row.card_id if row else None
        applied = row.applied if row and row.card_id else None
        if card_id is not None and applied is None:
            # mapped by its description only (adopt_card): what the card shows, as if written
            card = self.client.get_card(card_id)
            board_labels = (
                self.boards.labels(card.get("idBoard") or "") if card.get("idBoard") else {}
            )
            applied = sync.found_state(card, {v: k for k, v in board_labels.items()})
        if spec is None or spec.list_id is None:
            # no visible card wanted (confidential, or nowhere to put it): archive one if it exists
            if card_id and applied and not applied.get("closed"):
                self.client.update_card(card_id, {"closed": True})
                applied = {**applied, "closed": True}
            self.store.save_card(
                claim, card_id, row.board_id if row else None, applied, event.updated_at, done=done
            )
            return card_id
        board_id = self.boards.board_of(spec.list_id)
        born = sync.card_of_issue(event.description) if card_id is None else None
        if born is not None:
            # an issue made from a card (its description says which): that card is its card
            with contextlib.suppress(trello.TrelloNotFound):
                found_card = self.client.get_card(born)
                card_id = found_card["id"]
                by_id = {v: k for k, v in self.boards.labels(board_id).items()}
                applied = sync.found_state(found_card, by_id)
        if card_id is None and sync.issue_link(event):
            # a create may have been sent before (by a worker that died, here or elsewhere):
            # then the board is read again rather than trusted from the cache, once that
            # create can no longer be on its way
            fresh = bool(row and row.creating_at)
            if row and row.creating_at:
                self._wait_out_create(row.creating_at)
            found = self.boards.find_card(board_id, event.url, sync.issue_urls, fresh=fresh)
            if found is not None:
                card_id = found["id"]
                by_id = {v: k for k, v in self.boards.labels(board_id).items()}
                applied = sync.found_state(found, by_id)
                log.info("%s: found card %s on the board", claim.issue_key, card_id)
        labels = self.boards.ensure_labels(
            board_id, [(label.name, sync.nearest_color(label.color)) for label in spec.labels]
        )
        members = self.boards.members(board_id) if spec.members else {}
        spec = sync.with_unmapped(event, spec, routing, members.keys())
        ops = sync.plan(spec, applied, labels, members, self._replaced_sets())
        view = {k: v for k, v in (applied or {}).items() if k in _VIEW}
        try:
            for op in ops:
                if op.kind == "create":
                    self.store.mark_creating(claim)
                answer = self._run(op, card_id)
                view = sync.card_view(view, op, answer, self.clock())
                if op.kind == "create":
                    card_id = answer["id"]
                    # just the id: the map has the rest
                    self.boards.remember_card(
                        board_id, event.url, {"id": card_id, "idList": spec.list_id}
                    )
        except trello.TrelloError:
            # a lost answer may hide a created card or label, and a 4xx may come from a
            # label or member removed by hand: read the board again on the next attempt
            self.boards.forget(board_id)
            raise
        self.store.save_card(
            claim,
            card_id,
            board_id,
            {**sync.applied_state(spec, labels, members, applied, event.project_path), **view}
            if card_id
            else None,
            event.updated_at,
            done=done,
        )
        now = self.clock()
        observe.observe_latency(now - d.received_at for d in events)
        log.info(
            "%s: %s -> card %s (%d call%s)",
            claim.issue_key,
            event.describe,
            card_id or "none",
            len(ops),
            "" if len(ops) == 1 else "s",
        )
        return card_id

    def _wait_out_create(self, creating_at: float) -> None:
        """Sleep until a create sent at ``creating_at`` has been answered or has timed out."""
        t = self.config.trello
        grace = creating_at + float(t["connect_timeout"]) + float(t["read_timeout"]) + 1.0
        wait = grace - self.clock()
        if wait > 0:
            log.info(
                "a create sent %.1f s ago may still land: waiting %.1f s",
                self.clock() - creating_at,
                wait,
            )
            time.sleep(min(wait, 60.0))

    def _replaced_sets(self) -> frozenset[str]:
        """The card's sets ``sync.plan`` may replace whole: with two-way sync, the bridge hears
        of every label a person puts on or takes off a card, and of every member when members
        are synced, so it knows what the card shows; without, it adds and removes one by one."""
        if not self.config.twoway["enabled"]:
            return frozenset()
        synced = self.config.twoway["sync"]
        return frozenset({"labels", "members"} if "members" in synced else {"labels"})

    def _run(self, op: sync.Op, card_id: str | None) -> Any:
        """Perform one operation; return Trello's answer (the card, for a create or update)."""
        assert self.client is not None
        if op.kind == "create":
            return self.client.create_card(op.fields)
        assert card_id is not None
        if op.kind == "update":
            return self.client.update_card(card_id, op.fields)
        if op.kind == "add_label":
            return self.client.add_card_label(card_id, op.fields["value"])
        if op.kind == "remove_label":
            return self.client.remove_card_label(card_id, op.fields["id"])
        if op.kind == "add_member":
            return self.client.add_card_member(card_id, op.fields["value"])
        if op.kind == "remove_member":
            return self.client.remove_card_member(card_id, op.fields["id"])
        if op.kind == "comment":
            return self.client.add_comment(card_id, op.fields["text"])
        raise ValueError(f"unknown operation {op.kind}")  # pragma: no cover - plan() makes no other


# ---------------------------------------------------------------------- the process


def build(cfg: config_module.Config) -> Worker:
    """A worker wired to the configured store and Trello."""
    store = open_store(cfg)
    store.setup()
    client = None
    if cfg.trello_configured:
        t = cfg.trello
        # one budget per token, shared by every instance when the store is
        budget = "trello:" + hashlib.sha256(t["token"].encode()).hexdigest()[:16]
        client = trello.Client(
            t["api_url"],
            t["key"],
            t["token"],
            connect_timeout=t["connect_timeout"],
            read_timeout=t["read_timeout"],
            pacer=trello.Pacer(
                limit=t["max_requests_per_10s"],
                interval=10.0,
                window=store.rate_window(budget),
            ),
            on_call=observe.count_trello_call,
        )
    writer = None
    if cfg.twoway["enabled"] and cfg.gitlab["url"] and cfg.gitlab["private_token"]:
        writer = gitlab_client.Client(
            cfg.gitlab["url"], cfg.gitlab["private_token"], timeout=t["read_timeout"] or 10
        )
    return Worker(cfg, store, client, gitlab=writer)


def main() -> None:
    """Entry point of the uWSGI mule (``mule = worker.py``) and of ``python worker.py``."""
    memory.limit_malloc_arenas()
    cfg = config_module.load()
    observe.setup_logging(cfg.server["log_level"], observe.secrets_of(cfg))
    observe.setup_metrics(cfg.metrics_dir, cfg.server["instance"])
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
    with worker.store.worker_slot():  # with a SQLite file: one worker per file
        log.info("worker started (pid %d, %s)", os.getpid(), worker.store.label)
        worker.run(stop)


if __name__ == "__main__":
    main()
