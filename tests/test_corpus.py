"""Real GitLab payloads, GitLab 6.4 to 18 (``tests/fixtures/real/``), parsed and then sent
through the real service: each issue event becomes the right card, everything else is answered
200 ignored, and none is answered 4xx or 5xx.

``index.json`` beside the payloads says where each one comes from, the X-Gitlab-Event header it
came with (null: GitLab before 7.11 sent none) and what the bridge does with it.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import gitlab_hook
import sync
from tests.conftest import Service, issue_payload, wait_for
from tests.trello_emulator import TrelloEmulator

REAL = Path(__file__).resolve().parent / "fixtures" / "real"
INDEX: dict[str, Any] = json.loads((REAL / "index.json").read_text(encoding="utf-8"))
PAYLOADS: list[dict[str, Any]] = INDEX["payloads"]
BY_FILE = {entry["file"]: entry for entry in PAYLOADS}
# the description of the one issue in the corpus that has no link (GitLab 6.4 to 7.3)
OLDEST_DESCRIPTION = "Create new API for manipulations with repository"


def body_of(entry: dict[str, Any]) -> bytes:
    return (REAL / entry["file"]).read_bytes()


def headers_of(entry: dict[str, Any]) -> dict[str, str]:
    return {"X-Gitlab-Event": entry["header"]} if entry["header"] else {}


# ---------------------------------------------------------------------------- the corpus itself


def test_every_payload_file_is_in_the_index():
    """Every file of the corpus has its provenance in index.json, and every entry its file."""
    files = {path.name for path in REAL.glob("*.json")} - {"index.json"}
    assert files == set(BY_FILE)
    assert len(PAYLOADS) == len(BY_FILE)


@pytest.mark.parametrize("entry", PAYLOADS, ids=lambda entry: entry["file"])
def test_index_entry_names_source_version_and_header(entry):
    """Each index entry says where the payload comes from, which GitLab, which header."""
    assert entry["source"].startswith("https://github.com/")
    assert entry["gitlab"]
    assert entry["what"]
    assert "header" in entry
    assert entry["expect"]["outcome"] in ("card", "comment", "ignored")
    json.loads(body_of(entry))


def test_corpus_spans_gitlab_6_to_18_and_every_kind_of_event():
    """The corpus covers GitLab 6 to 18 and issues, notes on five things, MRs and pushes."""
    versions = {
        re.match(r"\d+", entry["gitlab"]).group()  # type: ignore[union-attr]
        for entry in PAYLOADS
        if entry["documented"]
    }
    assert {"6", "7", "8", "9", "10", "18"} <= versions
    kinds = {json.loads(body_of(entry)).get("object_kind") for entry in PAYLOADS}
    assert {"issue", "work_item", "note", "merge_request", "push", "tag_push"} <= kinds
    noteables = {
        json.loads(body_of(entry))["object_attributes"].get("noteable_type")
        for entry in PAYLOADS
        if json.loads(body_of(entry)).get("object_kind") == "note"
    }
    assert {"Issue", "MergeRequest", "Commit", "Snippet", "DesignManagement::Design"} <= noteables
    assert sum(entry["header"] is None for entry in PAYLOADS) >= 5
    assert len(PAYLOADS) >= 40


# ---------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("entry", PAYLOADS, ids=lambda entry: entry["file"])
def test_payload_parses_to_what_the_index_expects(entry):
    """Each real payload, with its own header, parses to the card, comment or Ignored expected."""
    expect = entry["expect"]
    result = gitlab_hook.parse_delivery(headers_of(entry), body_of(entry))
    if expect["outcome"] == "ignored":
        assert isinstance(result, gitlab_hook.Ignored)
        assert expect["reason"] in result.reason
        return
    assert isinstance(result, gitlab_hook.Delivery)
    event = result.event
    if expect["outcome"] == "comment":
        assert event.note is not None
        assert event.url == expect["issue_link"]
        return
    assert event.note is None
    assert event.issue_key == expect["key"]
    assert sync.issue_link(event) == expect["link"]
    assert event.state == ("closed" if expect["list"] == "done" else "opened")
    assert event.action in gitlab_hook.ACTIONS
    assert event.confidential is expect.get("confidential", False)
    title = "(confidential)" if event.confidential else event.title
    assert sync.card_name(event.iid, title) == expect["name"]
    if "assignees" in expect:
        assert list(event.assignees) == expect["assignees"]
    if "labels" in expect:
        assert [label.name for label in event.labels] == expect["labels"]
    if "due" in expect:
        assert event.due_date == expect["due"]


def test_every_real_timestamp_parses():
    """Every updated_at and created_at in the corpus is read, whatever its shape."""
    seen = set()
    for entry in PAYLOADS:
        data = json.loads(body_of(entry))
        for holder in (data.get("object_attributes") or {}, data.get("issue") or {}):
            for field in ("created_at", "updated_at"):
                if holder.get(field) is not None:
                    assert gitlab_hook.parse_time(holder[field]) is not None, (entry["file"], field)
                    seen.add(len(holder[field]))
    assert len(seen) >= 3  # with and without milliseconds, "UTC" suffix


# ---------------------------------------------------------------------------- the real service


def find_card(trello: TrelloEmulator, expect: dict[str, Any]) -> dict[str, Any]:
    """The one card of the expected issue: by its link, or (no link) by its name alone."""
    cards = trello.cards(board_id=trello.board_id)  # type: ignore[attr-defined]
    if expect["link"]:
        found = [c for c in cards if c["desc"].split("\n", 1)[0] == expect["link"]]
    else:
        found = [
            c for c in cards if c["name"] == expect["name"] and not c["desc"].startswith("http")
        ]
    assert len(found) == 1, (expect, [(c["name"], c["desc"][:80]) for c in cards])
    return found[0]


@pytest.mark.integration
def test_whole_corpus_through_the_service(
    make_service: Callable[..., Service], trello: TrelloEmulator
) -> None:
    """Every real payload, in order, is answered 202 or 200 (never 4xx/5xx), and every issue
    event leaves exactly one card with the right name, link, list, labels and due date."""
    done_list = trello.done_list_id  # type: ignore[attr-defined]
    todo_list = trello.list_id  # type: ignore[attr-defined]
    service = make_service(
        {"trello": {"done_list_id": done_list}, "gitlab": {"confidential": "redact"}}
    )
    problems: list[str] = []
    keys: set[str] = set()
    sent: set[str] = set()  # dedupe keys: a body sent before, or a comment copied before
    for entry in PAYLOADS:
        expect = entry["expect"]
        answer = service.post(body_of(entry), key=None, event=entry["header"])
        status = answer.json().get("status") if answer.status_code < 300 else answer.text
        wanted = (200, "ignored") if expect["outcome"] == "ignored" else (202, "queued")
        parsed = gitlab_hook.parse_delivery(headers_of(entry), body_of(entry))
        if isinstance(parsed, gitlab_hook.Delivery):
            if parsed.dedupe_key in sent:
                wanted = (200, "duplicate")
            sent.add(parsed.dedupe_key)
        if (answer.status_code, status) != wanted:
            problems.append(f"{entry['file']}: {answer.status_code} {status}, wanted {wanted}")
            continue
        if expect["outcome"] == "ignored":
            continue
        service.wait_idle()
        if expect["outcome"] == "comment":
            if expect.get("copied"):
                card = find_card(trello, {"link": expect["issue_link"]})
                text = json.loads(body_of(entry))["object_attributes"]["note"]
                if not any(text in c["text"] for c in trello.comments(card["id"])):
                    problems.append(f"{entry['file']}: comment not copied")
            continue
        keys.add(expect["key"])
        card = find_card(trello, expect)
        want_list = done_list if expect["list"] == "done" else todo_list
        got = {
            "name": card["name"],
            "list": card["idList"],
            "closed": card["closed"],
            "labels": sorted(label["name"] for label in card["labels"]),
            "due": (card["due"] or "")[:10] or None,
        }
        want = {
            "name": expect["name"],
            "list": want_list,
            "closed": False,
            "labels": sorted(expect.get("labels", [])) if not expect.get("confidential") else [],
            "due": expect.get("due"),
        }
        if got != want:
            problems.append(f"{entry['file']}: card {got}, wanted {want}")
        if not expect["link"] and card["desc"] != OLDEST_DESCRIPTION:
            problems.append(f"{entry['file']}: card without link has desc {card['desc'][:80]!r}")
        for name in expect.get("assignees", []):
            if not expect.get("confidential") and f"@{sync.ZWSP}{name}" not in card["desc"]:
                problems.append(f"{entry['file']}: assignee {name} missing from {card['desc']!r}")
    assert not problems, "\n".join(problems)
    assert len(trello.cards(board_id=trello.board_id)) == len(keys)  # type: ignore[attr-defined]
    assert "Traceback" not in service.log()


@pytest.mark.integration
def test_test_delivery_without_action_updates_the_existing_card(
    service: Service, trello: TrelloEmulator
) -> None:
    """A Test-button delivery with no action and no url, for an issue that has a card, updates
    that card and never creates a second one."""
    assert service.post(issue_payload(31, title="Before the test")).status_code == 202
    service.wait_idle()
    (before,) = trello.cards()
    test = copy.deepcopy(issue_payload(31, title="After the test"))
    test["object_attributes"].pop("action")
    test["object_attributes"].pop("url")
    test["object_attributes"]["updated_at"] = "2026-05-05 10:00:00 UTC"
    test["changes"] = {}
    answer = service.post(test)
    assert (answer.status_code, answer.json()["status"]) == (202, "queued")
    service.wait_idle()
    (after,) = trello.cards()
    assert after["id"] == before["id"]
    assert after["name"] == "[ ISSUE 31 ] After the test"
    assert after["desc"].startswith("https://gitlab.example.com/acme/widget-api/issues/31\n")


@pytest.mark.integration
def test_real_test_delivery_makes_one_card_and_a_resend_keeps_it(
    service: Service, trello: TrelloEmulator
) -> None:
    """GitLab.com's Test delivery of 2017 (no action, no url) makes a card; sent again with
    another body digest (a second press) it updates that card."""
    entry = BY_FILE["gitlabcom-2017-11-zulip-test-issue.json"]
    first = service.post(body_of(entry), key=None, event="Issue Hook")
    assert (first.status_code, first.json()["status"]) == (202, "queued")
    second = service.post(body_of(entry) + b"\n", key=None, event="Issue Hook")
    assert (second.status_code, second.json()["status"]) == (202, "queued")
    service.wait_idle()
    (card,) = trello.cards()
    assert card["name"] == "[ ISSUE 1 ] New issue that needs to be fixed"
    assert card["desc"] == "https://gitlab.com/eeshangarg/public-repo/issues/1"


@pytest.mark.integration
def test_unparseable_timestamp_is_accepted_and_logged(service: Service, trello: TrelloEmulator):
    """An updated_at no parser can read is answered 202, treated as absent, and logged."""
    payload = issue_payload(32, updated_at="sometime last week")
    answer = service.post(payload)
    assert answer.status_code == 202, answer.text
    service.wait_idle()
    assert [c["name"] for c in trello.cards()] == ["[ ISSUE 32 ] Issue number 32"]
    wait_for(lambda: "treated as absent" in service.log(), message="warning in the log")
