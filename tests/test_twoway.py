"""Two-way sync end to end: people act on the Trello emulator's board and in the GitLab
emulator, both fire their real webhooks at the real service (uWSGI, worker mule), and the
bridge writes to the other side; on SQLite and on PostgreSQL."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests

from tests.conftest import FIXTURES, ROOT, Service, wait_for
from tests.gitlab_emulator import GitLabEmulator

pytestmark = pytest.mark.integration

PROJECT = 42


@pytest.fixture
def gitlab():
    """The GitLab emulator: project acme/widget-api (42), people alice and bob."""
    with GitLabEmulator() as emulator:
        emulator.add_project("acme/widget-api", project_id=PROJECT)
        for name in ("alice", "bob"):
            emulator.add_user(name, name.title())
        yield emulator


@pytest.fixture
def board(trello):
    """The board of the trello fixture plus a "Doing" and a "Someday" list, alice and bob."""
    trello.doing_id = trello.add_list(trello.board_id, "Doing")["id"]
    trello.someday_id = trello.add_list(trello.board_id, "Someday")["id"]
    trello.add_member(trello.board_id, "alice", "Alice Moreau")
    trello.add_member(trello.board_id, "bob", "Bob Lindqvist")
    return trello


def store_meta(service: Service, key: str) -> str | None:
    from store.postgres import PostgresStore
    from store.sqlite import SqliteStore

    database = service.settings.get("store", {}).get("database")
    db = PostgresStore(database) if database else SqliteStore(service.database)
    try:
        return db.meta(key)
    finally:
        db.close()


def run_cli(service: Service, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "GITLAB2TRELLO_CONFIG": str(service.config_path)},
        timeout=120,
        cwd=ROOT,
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def make_bridge(request, make_service, board, gitlab) -> Callable[..., Service]:
    """Start the bridge with two-way sync on, its GitLab hook and its Trello webhook."""

    def make(**sections: dict[str, Any]) -> Service:
        settings: dict[str, dict[str, Any]] = {
            "trello": {"secret": board.secret, "done_list_id": board.done_list_id},
            "twoway": {"enabled": "true", "callback_url": "http://x", "actions_interval": 3600},
            "gitlab": {"url": gitlab.url, "private_token": gitlab.token},
            "lists": {"doing": board.doing_id},
        }
        if request.param == "postgresql":
            settings["store"] = {"database": request.getfixturevalue("pg_url")}
        for section, values in sections.items():
            settings.setdefault(section, {}).update(values)
        service = make_service(settings, start=False)
        service.settings["twoway"]["callback_url"] = service.url + "/trello"
        service.start()
        merge_requests = str(service.settings["gitlab"].get("merge_requests")) == "true"
        gitlab.add_hook(PROJECT, service.url + "/issue", merge_requests_events=merge_requests)
        registered = run_cli(service, "trello-webhook")
        assert registered.returncode == 0, registered.stdout + registered.stderr
        wait_for(lambda: store_meta(service, "trello_member_id"), 20, "the worker learned")
        return service

    return make


def card_of(trello, iid: int) -> dict | None:
    found = [c for c in trello.cards() if c["name"].startswith(f"[ ISSUE {iid} ]")]
    assert len(found) <= 1, found
    return found[0] if found else None


def settle(service: Service, trello, gitlab) -> None:
    """Until both sides' webhooks are delivered and the bridge's queue is empty, twice over."""
    for _ in range(3):
        trello.wait_webhooks_idle(20)
        gitlab.wait_hooks_idle(20)
        wait_for(lambda: service.health()["pending"] == 0, 30, "queue empty")
        time.sleep(0.3)


def open_issue(service, trello, gitlab, title: str) -> tuple[int, dict]:
    iid = gitlab.as_user("alice").open_issue(PROJECT, title)["iid"]
    card = wait_for(lambda: card_of(trello, iid), 20, f"card of #{iid}")
    settle(service, trello, gitlab)
    return iid, card


def issue(gitlab, iid: int) -> dict:
    return gitlab.issue(PROJECT, iid)


def trello_calls(trello) -> list:
    return list(trello.calls)


def test_a_card_moved_to_done_costs_one_gitlab_write_and_no_trello_call(make_bridge, board, gitlab):
    """A person moving a card to Done: 1 GitLab write, 0 Trello calls, then 10 quiet seconds."""
    service = make_bridge()
    iid, card = open_issue(service, board, gitlab, "Login times out")
    board.reset_calls()
    gitlab.reset_calls()
    board.as_person("alice").move_card(card["id"], board.done_list_id)
    wait_for(lambda: issue(gitlab, iid)["state"] == "closed", 20, "issue closed")
    settle(service, board, gitlab)
    time.sleep(10)
    assert gitlab.count_writes() == 1, gitlab.writes
    assert trello_calls(board) == []
    assert card_of(board, iid)["idList"] == board.done_list_id


def test_an_issue_closed_in_gitlab_costs_one_trello_call_and_no_gitlab_write(
    make_bridge, board, gitlab
):
    """A person closing the issue: 1 Trello call, 0 GitLab writes, then 10 quiet seconds."""
    service = make_bridge()
    iid, _card = open_issue(service, board, gitlab, "Export as CSV")
    board.reset_calls()
    gitlab.reset_calls()
    gitlab.as_user("bob").close_issue(PROJECT, iid)
    wait_for(lambda: card_of(board, iid)["idList"] == board.done_list_id, 20, "card in Done")
    settle(service, board, gitlab)
    time.sleep(10)
    assert [(c.method, c.path.split("/")[2]) for c in trello_calls(board)] == [("PUT", "cards")]
    assert gitlab.count_writes() == 0, gitlab.writes


def test_every_row_of_the_table_reaches_gitlab(make_bridge, board, gitlab):
    """Lists, done and back, members, a non-ASCII comment and due dates flow to the issue."""
    service = make_bridge()
    iid, card = open_issue(service, board, gitlab, "Every row")
    alice = board.as_person("alice")

    def step(act: Callable[[], Any], check: Callable[[dict], bool], what: str) -> None:
        act()
        wait_for(lambda: check(issue(gitlab, iid)), 20, what)
        settle(service, board, gitlab)

    def labels(found: dict) -> set[str]:
        return {(x if isinstance(x, str) else x["name"]) for x in found.get("labels") or ()}

    step(
        lambda: alice.move_card(card["id"], board.doing_id),
        lambda i: "doing" in labels(i),
        "+doing",
    )
    step(
        lambda: alice.move_card(card["id"], board.list_id),
        lambda i: not labels(i),
        "labels cleared",
    )
    before = gitlab.count_writes()
    alice.move_card(card["id"], board.someday_id)  # a list the configuration does not name
    settle(service, board, gitlab)
    assert gitlab.count_writes() == before and issue(gitlab, iid)["state"] == "opened"
    assert card_of(board, iid)["idList"] == board.someday_id  # and the card stays there
    step(
        lambda: alice.move_card(card["id"], board.done_list_id),
        lambda i: i["state"] == "closed",
        "closed",
    )
    step(
        lambda: alice.move_card(card["id"], board.list_id),
        lambda i: i["state"] == "opened",
        "reopened",
    )

    def assignees(found: dict) -> list[str]:
        return [a["username"] for a in found.get("assignees") or ()]

    step(lambda: alice.add_member(card["id"], "bob"), lambda i: assignees(i) == ["bob"], "assigned")
    step(lambda: alice.remove_member(card["id"], "bob"), lambda i: assignees(i) == [], "unassigned")
    step(
        lambda: alice.comment(card["id"], "Fix in progress – Grüße ✓"),
        lambda i: any(
            "on Trello: Fix in progress – Grüße ✓" in n["body"] for n in gitlab.notes(PROJECT, iid)
        ),
        "comment copied",
    )
    (note,) = [n for n in gitlab.notes(PROJECT, iid) if "on Trello" in n["body"]]
    assert note["body"].startswith("**Alice Moreau** (@alice) on Trello: ")
    assert "https://trello.com/c/" in note["body"]
    step(
        lambda: alice.set_due(card["id"], "2026-12-15T12:00:00.000Z"),
        lambda i: i["due_date"] == "2026-12-15",
        "due set",
    )
    step(lambda: alice.set_due(card["id"], None), lambda i: i["due_date"] is None, "due cleared")
    # the comment the bridge wrote in GitLab never comes back to the card
    assert [c["text"] for c in board.comments(card["id"])] == ["Fix in progress – Grüße ✓"]
    # a comment that reads like a GitLab quick action is copied as text, and runs nothing
    step(
        lambda: alice.comment(card["id"], "/close"),
        lambda i: len([n for n in gitlab.notes(PROJECT, iid) if "on Trello" in n["body"]]) == 2,
        "second comment copied",
    )
    assert issue(gitlab, iid)["state"] == "opened"
    assert service.health()["dead_letters"] == 0


def test_archiving_closes_when_there_is_no_done_list(make_bridge, board, gitlab):
    """Without a done list, archiving the card closes the issue and un-archiving reopens it."""
    service = make_bridge(trello={"done_list_id": ""})
    iid, card = open_issue(service, board, gitlab, "Archive me")
    board.as_person("bob").archive(card["id"])
    wait_for(lambda: issue(gitlab, iid)["state"] == "closed", 20, "closed")
    settle(service, board, gitlab)
    board.as_person("bob").unarchive(card["id"])
    wait_for(lambda: issue(gitlab, iid)["state"] == "opened", 20, "reopened")


def test_the_newer_change_wins_when_both_sides_changed(make_bridge, board, gitlab):
    """Card moved to Done, then the issue labelled in GitLab later: GitLab wins, card in line."""
    service = make_bridge()
    iid, card = open_issue(service, board, gitlab, "Both sides")
    service.stop()
    service.settings.setdefault("worker", {})["enabled"] = "false"  # taken, not yet applied
    service.start()
    board.as_person("bob").move_card(card["id"], board.done_list_id)
    board.wait_webhooks_idle(20)
    time.sleep(0.05)
    gitlab.as_user("alice").edit_issue(PROJECT, iid, labels=["doing"])
    gitlab.wait_hooks_idle(20)
    assert service.health()["pending"] == 2
    service.stop()
    service.settings["worker"]["enabled"] = "true"
    board.reset_calls()
    gitlab.reset_calls()
    service.start()
    settle(service, board, gitlab)
    assert card_of(board, iid)["idList"] == board.doing_id  # the later change (GitLab's)
    assert issue(gitlab, iid)["state"] == "opened"
    assert gitlab.count_writes() == 0
    moves = [c for c in board.calls if c.method == "PUT"]
    assert len(moves) == 1, moves  # brought in line once


def test_moves_while_the_bridge_is_down_reach_gitlab_by_catching_up(make_bridge, board, gitlab):
    """Cards moved while the bridge is down (Trello gives up on it): read back, applied once."""
    service = make_bridge(twoway={"actions_interval": 1})
    first, card1 = open_issue(service, board, gitlab, "Moved while down 1")
    second, card2 = open_issue(service, board, gitlab, "Moved while down 2")
    service.kill()
    board.as_person("alice").move_card(card1["id"], board.done_list_id)
    board.as_person("alice").move_card(card2["id"], board.doing_id)
    board.wait_webhooks_idle(30)  # delivered, failed, retried, dropped
    assert all(d.status != 202 for d in board.webhook_deliveries[-2:])
    gitlab.reset_calls()
    service.start()
    wait_for(lambda: issue(gitlab, first)["state"] == "closed", 30, "first closed")
    wait_for(lambda: "doing" in str(issue(gitlab, second)["labels"]), 30, "second labelled")
    settle(service, board, gitlab)
    time.sleep(2.5)  # two more passes over the board's actions
    settle(service, board, gitlab)
    assert gitlab.count_writes() == 2


def sign(secret: str, body: bytes, url: str) -> str:
    return base64.b64encode(
        hmac.new(secret.encode(), body + url.encode(), hashlib.sha1).digest()
    ).decode()


def test_the_webhook_refuses_bad_signatures_and_ignores_what_it_does_not_manage(
    make_bridge, board, gitlab
):
    """Bad or missing signature 401; a replayed action 200 duplicate; a foreign board ignored."""
    service = make_bridge()
    url = service.url + "/trello"
    assert requests.head(url, timeout=5).status_code == 200
    body = (FIXTURES / "trello" / "02-card-moved-to-done.json").read_bytes()
    for headers in ({}, {"X-Trello-Webhook": "bm9wZQ=="}):
        answer = requests.post(url, data=body, headers=headers, timeout=5)
        assert answer.status_code == 401 and "X-Trello-Webhook" in answer.text
    signed = {"X-Trello-Webhook": sign(board.secret, body, url)}
    foreign = requests.post(url, data=body, headers=signed, timeout=5)
    assert foreign.status_code == 200 and foreign.json()["status"] == "ignored"
    assert "not one the bridge manages" in foreign.json()["reason"]
    bad = b'{"action": 1}'
    answer = requests.post(
        url, data=bad, headers={"X-Trello-Webhook": sign(board.secret, bad, url)}, timeout=5
    )
    assert answer.status_code == 400
    iid, card = open_issue(service, board, gitlab, "Replayed")
    board.as_person("alice").move_card(card["id"], board.doing_id)
    board.wait_webhooks_idle(20)
    (delivery,) = [d for d in board.webhook_deliveries if d.status == 202][-1:]
    assert board.redeliver(delivery.action_id) == 1  # Trello delivers the same action again
    board.wait_webhooks_idle(20)
    assert [d.status for d in board.webhook_deliveries if d.action_id == delivery.action_id][
        -1
    ] == 200  # answered "duplicate"
    settle(service, board, gitlab)
    assert len([w for w in gitlab.writes if w.method == "PUT"]) == 1


def test_kill_9_during_a_burst_of_card_moves_applies_each_once(make_bridge, board, gitlab):
    """kill -9 of the bridge during a burst of moves and comments: each reaches GitLab once."""
    service = make_bridge(twoway={"actions_interval": 1})
    cards = [open_issue(service, board, gitlab, f"Burst {n}") for n in range(8)]
    alice = board.as_person("alice")
    for number, (_iid, card) in enumerate(cards):
        alice.move_card(card["id"], board.done_list_id)
        alice.comment(card["id"], f"moved {number}")
        if number == 3:
            time.sleep(0.2)
            service.kill()  # web and worker at once; Trello's deliveries to it now fail
    service.start()
    for iid, _card in cards:
        wait_for(lambda iid=iid: issue(gitlab, iid)["state"] == "closed", 40, f"#{iid} closed")
        wait_for(
            lambda iid=iid: any(
                "on Trello: moved" in n["body"] for n in gitlab.notes(PROJECT, iid)
            ),
            40,
            f"#{iid} comment",
        )
    settle(service, board, gitlab)
    time.sleep(2.5)  # more passes over the board's actions find nothing new
    settle(service, board, gitlab)
    for number, (iid, _card) in enumerate(cards):
        copied = [n for n in gitlab.notes(PROJECT, iid) if "on Trello" in n["body"]]
        assert len(copied) == 1 and f"moved {number}" in copied[0]["body"], copied
        closes = [
            r
            for r in gitlab.hook_requests
            if r.action == "close" and json.loads(r.body)["object_attributes"]["iid"] == iid
        ]
        assert len(closes) == 1, f"#{iid} closed {len(closes)} times"
    assert service.health()["dead_letters"] == 0


def test_a_read_only_gitlab_token_makes_a_dead_letter_in_plain_words(make_bridge, board, gitlab):
    """A token without the api scope: the move becomes a dead letter saying what to fix."""
    gitlab.add_token("glpat-read-only", scopes=("read_api",))
    service = make_bridge(gitlab={"private_token": "glpat-read-only"})
    iid, card = open_issue(service, board, gitlab, "Read only")
    board.as_person("alice").move_card(card["id"], board.done_list_id)
    wait_for(lambda: service.health()["dead_letters"] == 1, 20, "a dead letter")
    status = run_cli(service, "status")
    assert "needs the api scope" in status.stdout, status.stdout
    assert issue(gitlab, iid)["state"] == "opened"
    check = run_cli(service, "check")
    assert check.returncode == 1
    assert "writing to issues needs the api scope" in check.stdout


def test_gitlab_failing_for_a_while_is_retried_until_it_answers(make_bridge, board, gitlab):
    """GitLab answering 503 and resetting connections: the move is written once it recovers."""
    service = make_bridge(worker={"retry_initial_wait": 0.2, "retry_max_wait": 0.5})
    iid, card = open_issue(service, board, gitlab, "Flaky GitLab")
    gitlab.fault("status", status=503, count=6)
    gitlab.fault("reset", count=2)
    board.as_person("alice").move_card(card["id"], board.done_list_id)
    wait_for(lambda: issue(gitlab, iid)["state"] == "closed", 40, "closed in the end")
    settle(service, board, gitlab)
    assert service.health()["dead_letters"] == 0


def test_check_and_the_webhook_commands(make_bridge, board, gitlab):
    """check passes with two-way set up; trello-webhook reuses, lists and removes webhooks."""
    service = make_bridge()
    check = run_cli(service, "check")
    assert check.returncode == 0, check.stdout + check.stderr
    for line in (
        "ok: two-way: the bridge's Trello member: @",
        f"ok: two-way: board {board.board_id}: webhook",
        "ok: two-way: the bridge's GitLab user: @bridge",
        "ok: two-way: GitLab token can write: the token has the api scope",
    ):
        assert line in check.stdout, check.stdout
    again = run_cli(service, "trello-webhook")
    assert again.returncode == 0 and "already there, kept" in again.stdout
    assert len(board.webhooks()) == 1
    listed = run_cli(service, "trello-webhook", "--list")
    assert listed.returncode == 0 and "active" in listed.stdout
    assert service.url + "/trello" in listed.stdout
    removed = run_cli(service, "trello-webhook", "--remove")
    assert removed.returncode == 0 and "1 webhook(s) removed" in removed.stdout
    assert board.webhooks() == []
    missing = run_cli(service, "check")
    assert missing.returncode == 1 and "run ./gitlab2trello trello-webhook" in missing.stdout


def forget_the_map(service: Service) -> None:
    """Empty the issue-to-card map, as a database restored from an old backup would be."""
    database = service.settings.get("store", {}).get("database")
    if database:
        import psycopg

        with psycopg.connect(database, autocommit=True) as conn:
            conn.execute("DELETE FROM issues")
    else:
        import sqlite3

        with sqlite3.connect(service.database) as conn:
            conn.execute("DELETE FROM issues")


def test_a_card_the_map_lost_is_found_by_the_issue_url_in_its_description(
    make_bridge, board, gitlab
):
    """With the map lost, a move finds its issue by the card's description; no second card."""
    service = make_bridge()
    iid, card = open_issue(service, board, gitlab, "Map lost")
    service.stop()
    forget_the_map(service)
    service.start()
    gitlab.reset_calls()
    board.as_person("alice").move_card(card["id"], board.done_list_id)
    wait_for(lambda: issue(gitlab, iid)["state"] == "closed", 30, "closed")
    settle(service, board, gitlab)
    assert gitlab.count_writes() == 1
    assert [c["id"] for c in board.cards()] == [card["id"]]
    assert card_of(board, iid)["idList"] == board.done_list_id


def test_a_card_added_on_the_board_becomes_one_issue(make_bridge, board, gitlab):
    """A person's card in the new-card list becomes one issue, renamed and linked like others."""
    service = make_bridge(twoway={"create_issues": "true"}, gitlab={"default_project": PROJECT})
    made = board.as_person("alice").create_card(board.list_id, "Export board as CSV", "As CSV")
    wait_for(lambda: gitlab.issues(PROJECT), 20, "an issue")
    settle(service, board, gitlab)
    (created,) = gitlab.issues(PROJECT)
    short = made["shortLink"]
    assert created["title"] == "Export board as CSV"
    assert (
        created["description"] == f"As CSV\n\nCreated from Trello card https://trello.com/c/{short}"
    )
    (card,) = board.cards()
    assert card["id"] == made["id"]
    assert card["name"] == f"[ ISSUE {created['iid']} ] Export board as CSV"
    assert card["desc"].startswith(created["web_url"])
    # the same action again, a card in a list the configuration does not name: no new issue
    (action,) = [a for a in board.actions(card_id=made["id"]) if a["type"] == "createCard"]
    board.redeliver(action["id"])
    board.as_person("bob").create_card(board.someday_id, "Just a note")
    settle(service, board, gitlab)
    assert len(gitlab.issues(PROJECT)) == 1
    # and the issue lives on like any other: closing it moves its card
    gitlab.as_user("bob").close_issue(PROJECT, created["iid"])
    wait_for(lambda: card_of(board, created["iid"])["idList"] == board.done_list_id, 20, "Done")
    # the card the bridge itself creates in the new-card list for an issue opened in GitLab
    # becomes no second issue
    opened = gitlab.as_user("bob").open_issue(PROJECT, "Filed in GitLab")["iid"]
    wait_for(lambda: card_of(board, opened), 20, "its card")
    settle(service, board, gitlab)
    assert card_of(board, opened)["idList"] == board.list_id
    assert [i["iid"] for i in gitlab.issues(PROJECT)] == [created["iid"], opened]


def test_a_card_becomes_one_issue_across_a_failed_rename_and_a_kill(make_bridge, board, gitlab):
    """Issue created, rename failing, kill -9, restart: still one issue, the card renamed."""
    service = make_bridge(
        twoway={"create_issues": "true"},
        gitlab={"default_project": PROJECT},
        worker={"retry_initial_wait": 0.2, "retry_max_wait": 0.5},
    )
    board.fault("status", status=503, method="PUT", path_prefix="/cards", count=50)
    made = board.as_person("alice").create_card(board.list_id, "Fix the login timeout")
    wait_for(lambda: gitlab.issues(PROJECT), 20, "an issue")
    time.sleep(1)  # a few failed renames
    service.kill()
    board.clear_faults()
    service.start()
    wait_for(lambda: board.cards()[0]["name"].startswith("[ ISSUE "), 30, "the card renamed")
    settle(service, board, gitlab)
    assert len(gitlab.issues(PROJECT)) == 1
    assert [c["id"] for c in board.cards()] == [made["id"]]


def test_a_card_becomes_one_issue_when_gitlabs_answer_is_lost(make_bridge, board, gitlab):
    """The issue is created but its answer is lost; GitLab's open webhook reaches the bridge
    before the retry does: one issue, its card the one the person added, renamed."""
    service = make_bridge(
        twoway={"create_issues": "true"},
        gitlab={"default_project": PROJECT},
        worker={"retry_initial_wait": 1, "retry_max_wait": 1},
    )
    gitlab.fault("apply_then_reset", method="POST")
    made = board.as_person("alice").create_card(board.list_id, "Fix the login timeout")
    wait_for(lambda: board.card(made["id"])["name"].startswith("[ ISSUE "), 30, "renamed")
    settle(service, board, gitlab)
    (created,) = gitlab.issues(PROJECT)
    assert [c["id"] for c in board.cards()] == [made["id"]]
    assert board.card(made["id"])["name"] == f"[ ISSUE {created['iid']} ] Fix the login timeout"
    assert [c.status for c in gitlab.calls if c.method == "POST"] == [0]  # created once
    gitlab.as_user("bob").close_issue(PROJECT, created["iid"])
    wait_for(lambda: board.card(made["id"])["idList"] == board.done_list_id, 20, "Done")


# ---------------------------------------------------------------------------- labels: one call


def card_calls(trello) -> list:
    return [c for c in trello.calls if c.path.startswith("/1/cards")]


def label_names(trello, card_id: str) -> set[str]:
    by_id = {label["id"]: label["name"] for label in trello.labels(trello.board_id)}
    return {by_id[i] for i in trello.card(card_id)["idLabels"]}


def hand_labelled_issue(service, trello, gitlab, title: str) -> tuple[int, dict, str]:
    """An issue labelled bug in GitLab whose card bob also gave the label customer by hand."""
    iid = gitlab.as_user("alice").open_issue(PROJECT, title, labels=["bug"])["iid"]
    card = wait_for(lambda: card_of(trello, iid), 20, f"card of #{iid}")
    settle(service, trello, gitlab)
    customer = trello.add_label(trello.board_id, "customer", "red")["id"]
    return iid, card, customer


def test_a_label_swap_costs_one_call_and_keeps_the_hand_label(make_bridge, board, gitlab):
    """A person labels the card by hand; GitLab later swaps its labels and renames the issue:
    one PUT carries the title and the whole label set, the hand label still on the card."""
    service = make_bridge()
    iid, card, customer = hand_labelled_issue(service, board, gitlab, "Swap me")
    board.as_person("bob").add_label(card["id"], customer)
    settle(service, board, gitlab)
    board.reset_calls()
    gitlab.reset_calls()
    gitlab.as_user("alice").edit_issue(PROJECT, iid, title="Swapped", labels=["feature"])
    wait_for(lambda: "feature" in label_names(board, card["id"]), 20, "label swapped")
    settle(service, board, gitlab)
    assert label_names(board, card["id"]) == {"customer", "feature"}
    assert card_of(board, iid)["name"] == f"[ ISSUE {iid} ] Swapped"
    calls = card_calls(board)
    assert [(c.method, c.path) for c in calls] == [("PUT", f"/1/cards/{card['id']}")], calls
    assert gitlab.count_writes() == 0  # a label put on the card is not written back


def test_a_hand_label_whose_webhook_comes_late_is_put_back(make_bridge, board, gitlab):
    """The race: bob labels the card, its delivery fails (Trello would retry or the bridge
    would read it back from the board's actions), GitLab swaps labels meanwhile. The bridge's
    one PUT, sent without knowing of the hand label, takes it off; when the action arrives,
    dated before that PUT, the bridge puts the label back: one more call, and only then."""
    service = make_bridge()
    iid, card, customer = hand_labelled_issue(service, board, gitlab, "Race me")
    good_secret = board.secret
    board.webhook_retry_delays = ()
    board.secret = "0" * 64  # deliveries signed with the wrong secret: refused, dropped
    board.as_person("bob").add_label(card["id"], customer)
    board.wait_webhooks_idle(20)
    (late,) = [a for a in board.actions(card_id=card["id"]) if a["type"] == "addLabelToCard"][-1:]
    board.secret = good_secret
    board.reset_calls()
    gitlab.as_user("alice").edit_issue(PROJECT, iid, labels=["feature"])
    wait_for(lambda: "feature" in label_names(board, card["id"]), 20, "label swapped")
    settle(service, board, gitlab)
    assert label_names(board, card["id"]) == {"feature"}  # the stale view's PUT took it off
    assert board.redeliver(late["id"]) == 1  # as Trello's retry, or the catch-up, brings it
    wait_for(lambda: "customer" in label_names(board, card["id"]), 20, "hand label back")
    settle(service, board, gitlab)
    assert label_names(board, card["id"]) == {"customer", "feature"}
    assert [(c.method, c.path) for c in card_calls(board)] == [
        ("PUT", f"/1/cards/{card['id']}"),
        ("POST", f"/1/cards/{card['id']}/idLabels"),
    ]
    assert gitlab.count_writes() == 0


def test_a_hand_label_taken_off_before_the_swap_stays_off(make_bridge, board, gitlab):
    """bob takes his hand label off the card; its delivery comes after GitLab's swap, whose
    PUT sent the label again: the bridge takes it off again."""
    service = make_bridge()
    iid, card, customer = hand_labelled_issue(service, board, gitlab, "Untag me")
    board.as_person("bob").add_label(card["id"], customer)
    settle(service, board, gitlab)
    good_secret = board.secret
    board.webhook_retry_delays = ()
    board.secret = "0" * 64
    board.as_person("bob").remove_label(card["id"], customer)
    board.wait_webhooks_idle(20)
    late = [a for a in board.actions(card_id=card["id"]) if a["type"] == "removeLabelFromCard"]
    board.secret = good_secret
    gitlab.as_user("alice").edit_issue(PROJECT, iid, labels=["feature"])
    wait_for(lambda: "feature" in label_names(board, card["id"]), 20, "label swapped")
    settle(service, board, gitlab)
    assert label_names(board, card["id"]) == {"customer", "feature"}  # sent again
    board.redeliver(late[-1]["id"])
    wait_for(lambda: "customer" not in label_names(board, card["id"]), 20, "taken off again")
    settle(service, board, gitlab)
    assert label_names(board, card["id"]) == {"feature"}
