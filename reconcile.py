"""Backfill and reconciliation from the GitLab REST API.

GitLab drops events while a hook is disabled and never resends them; a bridge that only listens
drifts. Both commands read issues through the REST API and queue each one that the board does
not reflect yet as an ordinary delivery, so the worker applies it with the same rules (and the
same "newest wins" ordering) as a webhook event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import sync
from config import Config
from events import IssueEvent
from gitlab_client import GitLabAPI
from store import Store

log = logging.getLogger("gitlab2trello.reconcile")

OVERLAP = 120.0  # seconds read again before the watermark: clocks and commits are not exact


@dataclass
class Outcome:
    """What one pass over a project's issues did."""

    seen: int = 0
    queued: int = 0
    up_to_date: int = 0
    ignored: int = 0
    delivery_ids: list[int] = field(default_factory=list)
    would: list[str] = field(default_factory=list)  # dry run: one line per planned change


def rest_key(event: IssueEvent) -> str:
    """Dedupe key of an issue state read from the REST API."""
    return f"rest:{event.issue_key}@{event.updated_at}"


def queue_issues(
    cfg: Config,
    store: Store,
    events: Iterable[IssueEvent],
    *,
    dry_run: bool = False,
    progress: Callable[[IssueEvent, str], None] | None = None,
) -> Outcome:
    """Queue every issue whose newest state the board does not have yet."""
    outcome = Outcome()
    types = tuple(cfg.gitlab["types"])
    policy = cfg.gitlab["confidential"]
    for event in events:
        outcome.seen += 1
        row = store.issue(event.issue_key)
        if event.work_item_type not in types or (
            event.confidential and policy == "skip" and not (row and row.card_id)
        ):
            outcome.ignored += 1
            verdict = "ignored"
        elif (
            row is not None
            and row.applied_updated_at is not None
            and event.updated_at is not None
            and event.updated_at <= row.applied_updated_at
        ):
            outcome.up_to_date += 1
            verdict = "up to date"
        elif dry_run:
            verdict = _would(cfg, event, row.applied if row and row.card_id else None)
            outcome.would.append(f"#{event.iid}: {verdict}")
            outcome.queued += 1
        else:
            delivery_id, created = store.add_delivery(
                rest_key(event), event.issue_key, event.to_json(), updated_at=event.updated_at
            )
            if created:
                outcome.queued += 1
                outcome.delivery_ids.append(delivery_id)
                verdict = "queued"
            else:
                verdict = "already queued"
        if progress is not None:
            progress(event, verdict)
    return outcome


def _would(cfg: Config, event: IssueEvent, applied: dict | None) -> str:
    spec = sync.desired_card(
        event, cfg.routing(event.project_id, event.project_path), cfg.gitlab["confidential"]
    )
    if applied is None:
        if spec is None or spec.closed:
            return "would make no card (closed or confidential)"
        return f"would create card {spec.name!r}"
    if spec is None:
        return "would archive the card (confidential)"
    changed = sync.changed_fields(spec, applied)
    return f"would update {', '.join(changed)}" if changed else "would change nothing"


def reconcile(cfg: Config, store: Store, api: GitLabAPI, now: float | None = None) -> Outcome:
    """One pass over ``[gitlab] projects``: queue what changed since the last pass."""
    now = time.time() if now is None else now
    total = Outcome()
    for ref in cfg.gitlab["projects"]:
        project = api.project(ref)
        mark_key = f"reconcile_watermark:{project['id']}"
        mark = float(store.meta(mark_key) or store.meta("created_at") or now)
        outcome = queue_issues(
            cfg, store, api.issues(project, state="all", updated_after=mark - OVERLAP)
        )
        store.set_meta(mark_key, str(now))
        log.info(
            "reconciled %s: %d issue(s) changed since %s, %d queued",
            project.get("path_with_namespace", ref),
            outcome.seen,
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(mark - OVERLAP)),
            outcome.queued,
        )
        total.seen += outcome.seen
        total.queued += outcome.queued
        total.up_to_date += outcome.up_to_date
        total.ignored += outcome.ignored
        total.delivery_ids += outcome.delivery_ids
    store.set_meta("last_reconcile_at", str(now))
    return total


def api_from_config(cfg: Config) -> GitLabAPI | None:
    """The REST client ``[gitlab] url`` and ``private_token`` describe, if both are set."""
    if not cfg.gitlab["url"] or not cfg.gitlab["private_token"]:
        return None
    return GitLabAPI(cfg.gitlab["url"], cfg.gitlab["private_token"])
