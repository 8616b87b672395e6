"""Merge requests on their cards, end to end: people open, edit, close, reopen and merge
merge requests in the GitLab emulator, its real ``Merge Request Hook`` reaches the real service
(uWSGI, worker mule), and the worker asks GitLab which issues each one closes; on SQLite and on
PostgreSQL (the ``make_bridge`` fixture of the two-way tests)."""

from __future__ import annotations

import pytest
import requests

import gitlab_client
from tests import test_twoway as twoway
from tests.conftest import wait_for
from tests.test_twoway import PROJECT, card_of, issue, open_issue, settle

board, gitlab, make_bridge = twoway.board, twoway.gitlab, twoway.make_bridge  # fixtures

pytestmark = pytest.mark.integration


@pytest.fixture
def review(board) -> str:
    """An "In review" list on the board."""
    return board.add_list(board.board_id, "In review")["id"]


def bridge_with_merge_requests(make_bridge, review: str | None):
    trello = {"review_list_id": review} if review else {}
    return make_bridge(gitlab={"merge_requests": "true"}, trello=trello)


def merge_request_attachments(board, card_id: str) -> list[dict]:
    return [a for a in board.attachments(card_id) if "/-/merge_requests/" in a["url"]]


def test_an_open_merge_request_is_attached_once_and_holds_the_card_in_review(
    make_bridge, board, gitlab, review
):
    service = bridge_with_merge_requests(make_bridge, review)
    iid, card = open_issue(service, board, gitlab, "Login times out")
    gitlab.as_user("alice").edit_issue(PROJECT, iid, add_labels=["doing"])
    wait_for(lambda: card_of(board, iid)["idList"] == board.doing_id, 20, "in Doing")
    bob = gitlab.as_user("bob")
    mr = bob.open_merge_request(PROJECT, "Fix login timeout", f"Closes #{iid}")
    wait_for(lambda: merge_request_attachments(board, card["id"]), 20, "the attachment")
    settle(service, board, gitlab)
    (attached,) = merge_request_attachments(board, card["id"])
    assert attached["name"] == f"!{mr['iid']} Fix login timeout"
    assert attached["url"] == mr["web_url"]
    assert card_of(board, iid)["idList"] == review

    # the same delivery again (GitLab's "Resend request"), then an edit: still one attachment
    sent = [r for r in gitlab.hook_requests if r.event == "Merge Request Hook"][0]
    again = requests.post(sent.url, data=sent.body, headers=sent.headers, timeout=10)
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    bob.edit_merge_request(PROJECT, mr["iid"], description=f"Closes #{iid}, with a test")
    settle(service, board, gitlab)
    assert len(merge_request_attachments(board, card["id"])) == 1
    assert card_of(board, iid)["idList"] == review

    # an issue event while the request is open does not take the card out of review
    gitlab.as_user("alice").edit_issue(PROJECT, iid, title="Login times out on slow networks")
    wait_for(lambda: "slow networks" in card_of(board, iid)["name"], 20, "renamed")
    settle(service, board, gitlab)
    assert card_of(board, iid)["idList"] == review

    # closed without being merged: back to the list its labels give; reopened: in review again
    bob.close_merge_request(PROJECT, mr["iid"])
    wait_for(lambda: card_of(board, iid)["idList"] == board.doing_id, 20, "back in Doing")
    bob.reopen_merge_request(PROJECT, mr["iid"])
    wait_for(lambda: card_of(board, iid)["idList"] == review, 20, "in review again")

    # merged: the issue's close event moves the card to Done, and nothing is attached twice
    bob.merge(PROJECT, mr["iid"])
    wait_for(lambda: issue(gitlab, iid)["state"] == "closed", 20, "closed by the merge")
    wait_for(lambda: card_of(board, iid)["idList"] == board.done_list_id, 20, "in Done")
    settle(service, board, gitlab)
    assert card_of(board, iid)["idList"] == board.done_list_id
    assert len(merge_request_attachments(board, card["id"])) == 1
    assert service.health()["dead_letters"] == 0


def test_a_merge_request_closing_two_issues_is_on_both_cards(make_bridge, board, gitlab):
    """Without a review list the cards stay where they are; each gets the attachment once."""
    service = bridge_with_merge_requests(make_bridge, None)
    first, card1 = open_issue(service, board, gitlab, "Login times out")
    second, card2 = open_issue(service, board, gitlab, "Logout is slow")
    mr = gitlab.as_user("bob").open_merge_request(
        PROJECT, "Session fixes", f"Closes #{first}\n\nFixes #{second}"
    )
    for card in (card1, card2):
        wait_for(lambda c=card: merge_request_attachments(board, c["id"]), 20, "attached")
    settle(service, board, gitlab)
    for card in (card1, card2):
        (attached,) = merge_request_attachments(board, card["id"])
        assert attached["name"] == f"!{mr['iid']} Session fixes"
        assert board.card(card["id"])["idList"] == board.list_id


def test_a_card_moved_by_hand_during_review_stays_where_the_person_put_it(
    make_bridge, board, gitlab, review
):
    service = bridge_with_merge_requests(make_bridge, review)
    iid, card = open_issue(service, board, gitlab, "Login times out")
    bob = gitlab.as_user("bob")
    mr = bob.open_merge_request(PROJECT, "Fix login timeout", f"Closes #{iid}")
    wait_for(lambda: card_of(board, iid)["idList"] == review, 20, "in review")
    settle(service, board, gitlab)
    board.as_person("alice").move_card(card["id"], board.someday_id)
    settle(service, board, gitlab)
    bob.close_merge_request(PROJECT, mr["iid"])
    settle(service, board, gitlab)
    assert card_of(board, iid)["idList"] == board.someday_id
    assert len(merge_request_attachments(board, card["id"])) == 1
    # and an issue event that changes neither its state nor its labels leaves it there
    gitlab.as_user("alice").edit_issue(PROJECT, iid, title="Login times out on slow networks")
    wait_for(lambda: "slow networks" in card_of(board, iid)["name"], 20, "renamed")
    settle(service, board, gitlab)
    assert card_of(board, iid)["idList"] == board.someday_id


def test_a_merge_request_that_no_longer_closes_the_issue_lets_its_card_go(
    make_bridge, board, gitlab, review
):
    """Its description edited so that it closes nothing: the card leaves review (the attachment
    stays, once); edited back: in review again, still one attachment."""
    service = bridge_with_merge_requests(make_bridge, review)
    iid, card = open_issue(service, board, gitlab, "Login times out")
    bob = gitlab.as_user("bob")
    mr = bob.open_merge_request(PROJECT, "Fix login timeout", f"Closes #{iid}")
    wait_for(lambda: card_of(board, iid)["idList"] == review, 20, "in review")
    bob.edit_merge_request(PROJECT, mr["iid"], description=f"Related to #{iid}")
    wait_for(lambda: card_of(board, iid)["idList"] == board.list_id, 20, "out of review")
    settle(service, board, gitlab)
    assert len(merge_request_attachments(board, card["id"])) == 1
    bob.edit_merge_request(PROJECT, mr["iid"], description=f"Closes #{iid}")
    wait_for(lambda: card_of(board, iid)["idList"] == review, 20, "in review again")
    settle(service, board, gitlab)
    assert len(merge_request_attachments(board, card["id"])) == 1
    assert "no longer closes 1" in service.log()


def test_merge_requests_that_close_no_synced_issue_change_nothing(make_bridge, board, gitlab):
    service = bridge_with_merge_requests(make_bridge, None)
    iid, card = open_issue(service, board, gitlab, "Login times out")
    unsynced = gitlab.add_issue(PROJECT, title="Filed before the bridge")["iid"]
    bob = gitlab.as_user("bob")
    gitlab.reset_hook_deliveries()
    board_calls = len(board.calls)
    # into another branch: GitLab closes nothing, which the payload alone tells
    bob.open_merge_request(PROJECT, "Backport", f"Closes #{iid}", target_branch="stable")
    # no closing keyword, and one closing an issue without a card: the worker asks GitLab
    bob.open_merge_request(PROJECT, "Refactor", f"Related to #{iid}")
    bob.open_merge_request(PROJECT, "Old fix", f"Closes #{unsynced}")
    settle(service, board, gitlab)
    statuses = [d.status for d in gitlab.hook_deliveries if d.event == "Merge Request Hook"]
    assert statuses == [200, 202, 202]
    (backport,) = [r for r in gitlab.hook_requests if b"Backport" in r.body]
    answer = requests.post(backport.url, data=backport.body, headers=backport.headers, timeout=10)
    assert answer.json()["status"] == "ignored"
    assert "not the default branch" in answer.json()["reason"]
    assert service.log().count("closes no synced issue") == 2
    assert merge_request_attachments(board, card["id"]) == []
    assert [c for c in board.calls[board_calls:] if c.method != "GET"] == []


def test_closes_issues_reads_every_page(gitlab):
    """A merge request closing more issues than one page holds: the client follows the pages."""
    for number in range(1, 131):
        gitlab.add_issue(PROJECT, title=f"Issue {number}")
    closing = ", ".join(f"#{n}" for n in range(1, 131))
    mr = gitlab.as_user("bob").open_merge_request(PROJECT, "Everything", f"Closes {closing}")
    client = gitlab_client.Client(gitlab.url, gitlab.token)
    closes = client.closes_issues(PROJECT, mr["iid"])
    assert sorted(i["iid"] for i in closes) == list(range(1, 131))


def test_an_attachment_whose_answer_was_lost_is_not_attached_twice(make_bridge, board, gitlab):
    """Trello applies the attachment and the connection drops: the retry finds it, adds none."""
    service = make_bridge(
        gitlab={"merge_requests": "true"},
        worker={"retry_initial_wait": 0.2, "retry_max_wait": 0.5},
    )
    iid, card = open_issue(service, board, gitlab, "Login times out")
    board.fault("apply_then_reset", method="POST", path_prefix=f"/cards/{card['id']}/attachments")
    gitlab.as_user("bob").open_merge_request(PROJECT, "Fix login timeout", f"Closes #{iid}")
    wait_for(lambda: merge_request_attachments(board, card["id"]), 20, "the attachment")
    settle(service, board, gitlab)
    assert len(merge_request_attachments(board, card["id"])) == 1
    path = f"/1/cards/{card['id']}/attachments"
    sent = [c.method for c in board.calls if c.path == path]
    assert sent.count("POST") == 1 and "GET" in sent  # the retry looked, and did not resend
    assert service.health()["dead_letters"] == 0
