"""The whole issue life on the board, through the running service and the emulator."""

from __future__ import annotations

import copy

import pytest

from tests.conftest import issue_payload, load_fixture, wait_for

pytestmark = pytest.mark.integration

URL = "https://gitlab.example.com/acme/widget-api/-/issues/{}"


def stamp(minute: int) -> str:
    """An updated_at that grows with ``minute``."""
    return f"2026-05-04T10:{minute:02d}:00.000Z"


def label(title: str, color: str = "#428bca") -> dict:
    return {"id": abs(hash(title)) % 10000, "title": title, "color": color, "type": "ProjectLabel"}


def user(username: str) -> dict:
    return {"id": abs(hash(username)) % 10000, "name": username.title(), "username": username}


def event(iid: int, minute: int, **attrs) -> dict:
    """An issue event for issue ``iid`` at ``minute``, other fields as given."""
    assignees = attrs.pop("assignees", None)
    labels = attrs.pop("labels", [])
    payload = issue_payload(iid, updated_at=stamp(minute), labels=labels, **attrs)
    if assignees is not None:
        payload["assignees"] = [user(name) for name in assignees]
        payload["object_attributes"]["assignee_ids"] = [u["id"] for u in payload["assignees"]]
    return payload


def note(iid: int, note_id: int, text: str) -> dict:
    payload = copy.deepcopy(load_fixture("07-note-on-issue.json"))
    payload["object_attributes"].update(
        id=note_id, note=text, url=URL.format(iid) + f"#note_{note_id}"
    )
    payload["issue"].update(iid=iid, url=URL.format(iid))
    return payload


@pytest.fixture
def board(trello):
    """A board with To Do, Doing and Done lists, two members and a "bug" label."""
    trello.doing_id = trello.add_list(trello.board_id, "Doing")["id"]
    trello.add_member(trello.board_id, "alice")
    trello.add_member(trello.board_id, "lee.trello")
    trello.add_label(trello.board_id, "bug", "red")
    return trello


@pytest.fixture
def bridge(make_service, board):
    return make_service(
        {
            "trello": {"done_list_id": board.done_list_id},
            "lists": {"Doing": board.doing_id},
            "members": {"lpark": "lee.trello"},
        }
    )


def only_card(trello) -> dict:
    (card,) = trello.cards()
    return card


def label_names(card: dict) -> list[str]:
    return sorted(label["name"] for label in card["labels"])


def test_issue_life_from_open_to_reopen(bridge, board):
    """Open, edit, labels, assignees, due date, comment, close, reopen: the card follows."""
    t = board
    bridge.post(event(118, 1, labels=[label("bug", "#d9534f")]))
    bridge.wait_idle()
    card = only_card(t)
    assert (card["name"], card["idList"]) == ("[ ISSUE 118 ] Issue number 118", t.list_id)
    assert label_names(card) == ["bug"]
    assert len(t.labels(t.board_id)) == 1, "the existing board label is reused"

    t.reset_calls()
    bridge.post(event(118, 2, title="Renamed", description="New text", labels=[label("bug")]))
    bridge.wait_idle()
    card = only_card(t)
    assert card["name"] == "[ ISSUE 118 ] Renamed"
    assert card["desc"] == URL.format(118) + "\n\nNew text"
    assert t.count_calls() == 1, "name and description change in one PUT"
    assert t.count_calls(method="PUT") == 1

    bridge.post(
        event(
            118,
            3,
            title="Renamed",
            description="New text",
            labels=[label("Doing"), label("needs-design", "#8fbc8f")],
        )
    )
    bridge.wait_idle()
    card = only_card(t)
    assert card["idList"] == t.doing_id, "a mapped label moves the card"
    assert label_names(card) == ["Doing", "needs-design"]
    colors = {lab["name"]: lab["color"] for lab in t.labels(t.board_id)}
    assert colors["needs-design"] == "green"

    doing = [label("Doing")]
    bridge.post(event(118, 4, title="Renamed", labels=doing, assignees=["lpark", "ghost"]))
    bridge.wait_idle()
    card = only_card(t)
    members = {m["username"]: m["id"] for m in t.state()["members"]}
    assert card["idMembers"] == [members["lee.trello"]]
    assert "ghost" in card["desc"] and "no Trello member" in card["desc"]

    bridge.post(event(118, 5, title="Renamed", labels=doing, due_date="2026-06-30"))
    bridge.wait_idle()
    assert only_card(t)["due"].startswith("2026-06-30")
    assert only_card(t)["idMembers"] == [], "unassigned people leave the card"
    bridge.post(event(118, 6, title="Renamed", labels=doing, due_date=None))
    bridge.wait_idle()
    assert only_card(t)["due"] is None

    answer = bridge.post(
        note(118, 1204, "Seen by @dortiz, see ![s](/uploads/ab/s.png)"), event="Note Hook"
    )
    assert answer.status_code == 202
    bridge.wait_idle()
    (comment,) = t.comments(only_card(t)["id"])
    assert comment["text"].startswith("**lpark** on GitLab: Seen by @\u200bdortiz")
    assert "https://gitlab.example.com/acme/widget-api/uploads/ab/s.png" in comment["text"]
    assert comment["text"].endswith(URL.format(118) + "#note_1204")

    bridge.post(event(118, 7, title="Renamed", labels=doing, action="close"))
    bridge.wait_idle()
    assert only_card(t)["idList"] == t.done_list_id

    bridge.post(event(118, 8, title="Renamed", labels=doing, action="reopen"))
    bridge.wait_idle()
    card = only_card(t)
    assert (card["idList"], card["closed"]) == (t.doing_id, False)


def test_close_without_done_list_archives_and_reopen_restores(make_service, trello):
    """Without done_list_id a close archives the card, a reopen un-archives it."""
    bridge = make_service()
    bridge.post(event(5, 1))
    bridge.wait_idle()
    bridge.post(event(5, 2, action="close"))
    bridge.wait_idle()
    (card,) = trello.cards()
    assert card["closed"] is True
    bridge.post(event(5, 3, action="reopen"))
    bridge.wait_idle()
    (card,) = trello.cards()
    assert (card["closed"], card["idList"]) == (False, trello.list_id)


def test_moved_issue_gets_a_line_with_its_new_place(bridge, board):
    """A close that carries moved_to_id says in the description that the issue moved."""
    bridge.post(event(6, 1))
    bridge.wait_idle()
    bridge.post(event(6, 2, action="close", moved_to_id=777))
    bridge.wait_idle()
    assert "Moved to another project" in only_card(board)["desc"]
    assert "777" in only_card(board)["desc"]


def test_card_moved_by_hand_stays_through_an_edit(bridge, board):
    """A person's move on Trello is not undone by a title edit."""
    bridge.post(event(7, 1))
    bridge.wait_idle()
    board.move_card(only_card(board)["id"], board.doing_id)
    bridge.post(event(7, 2, title="Edited"))
    bridge.wait_idle()
    card = only_card(board)
    assert (card["name"], card["idList"]) == ("[ ISSUE 7 ] Edited", board.doing_id)


def test_hand_labels_stay(bridge, board):
    """Labels put on the card by hand, whose names GitLab never had, survive label changes."""
    bridge.post(event(8, 1, labels=[label("bug")]))
    bridge.wait_idle()
    hand = board.add_label(board.board_id, "customer", "pink")
    card_id = only_card(board)["id"]
    import requests

    requests.post(
        f"{board.url}/cards/{card_id}/idLabels",
        params={"key": board.key, "token": board.token, "value": hand["id"]},
        timeout=5,
    ).raise_for_status()
    bridge.post(event(8, 2, labels=[label("frontend")]))
    bridge.wait_idle()
    assert label_names(only_card(board)) == ["customer", "frontend"]


def test_stale_update_changes_nothing(bridge, board):
    """An update older than the newest applied event (arriving late) does not undo a close."""
    bridge.post(event(9, 1, title="Original"))
    bridge.wait_idle()
    bridge.post(event(9, 5, title="Final", action="close"))
    bridge.wait_idle()
    board.reset_calls()
    bridge.post(event(9, 3, title="Middle"))
    bridge.wait_idle()
    card = only_card(board)
    assert (card["name"], card["idList"]) == ("[ ISSUE 9 ] Final", board.done_list_id)
    assert board.count_calls() == 0


def test_two_projects_feed_two_boards(make_service, trello):
    """[project:...] sections route projects to their own boards; same iid, separate cards."""
    other = trello.add_board("Other")
    other_list = trello.add_list(other["id"], "Inbox")["id"]
    bridge = make_service({"project:acme/gadgets": {"list_id": other_list}})
    bridge.post(event(5, 1))
    bridge.post(issue_payload(5, project_id=77, path="acme/gadgets", title="Gadget five"))
    bridge.wait_idle()
    (widget,) = trello.cards(board_id=trello.board_id)
    (gadget,) = trello.cards(board_id=other["id"])
    assert widget["name"] == "[ ISSUE 5 ] Issue number 5"
    assert gadget["name"] == "[ ISSUE 5 ] Gadget five"
    assert gadget["idList"] == other_list


@pytest.mark.parametrize("policy", ["skip", "redact", "mirror"])
def test_confidential_policies(make_service, trello, policy):
    """skip: no card (200 ignored); redact: a card with only the link; mirror: a normal card."""
    bridge = make_service({"gitlab": {"confidential": policy}})
    answer = bridge.post(
        event(10, 1, title="Secret plan", confidential=True), event="Confidential Issue Hook"
    )
    bridge.wait_idle()
    cards = trello.cards()
    if policy == "skip":
        assert answer.json()["status"] == "ignored"
        assert cards == []
    elif policy == "redact":
        (card,) = cards
        assert card["name"] == "[ ISSUE 10 ] (confidential)"
        assert "Secret plan" not in card["desc"] and card["desc"].startswith(URL.format(10))
    else:
        (card,) = cards
        assert card["name"] == "[ ISSUE 10 ] Secret plan"


def test_issue_becoming_confidential_is_archived_then_restored(make_service, trello):
    """With skip, a card whose issue turns confidential is archived; it returns when public."""
    bridge = make_service()
    bridge.post(event(11, 1, title="Public"))
    bridge.wait_idle()
    answer = bridge.post(event(11, 2, title="Public", confidential=True))
    assert answer.status_code == 202
    bridge.wait_idle()
    assert trello.cards(include_closed=False) == []
    bridge.post(event(11, 3, title="Public again"))
    bridge.wait_idle()
    (card,) = trello.cards(include_closed=False)
    assert card["name"] == "[ ISSUE 11 ] Public again"


def test_burst_of_edits_is_merged(make_service, trello):
    """20 edits to one issue queued together cost far fewer calls than one call per edit."""
    bridge = make_service()
    trello.set_latency(0.3)
    bridge.post(event(12, 0))
    for minute in range(1, 21):
        bridge.post(event(12, minute, title=f"Edit {minute}"))
    bridge.wait_idle(timeout=60)
    (card,) = trello.cards()
    assert card["name"] == "[ ISSUE 12 ] Edit 20"
    writes = trello.count_calls(method="POST") + trello.count_calls(method="PUT")
    assert writes <= 4, f"{writes} write calls for 21 events"


def test_work_item_types_follow_configuration(make_service, trello):
    """Tasks are ignored by default and synced when [gitlab] types lists them."""
    default = make_service()
    assert default.post(event(13, 1, type="Task")).json()["status"] == "ignored"
    with_tasks = make_service({"gitlab": {"types": "Issue, Task"}})
    assert with_tasks.post(event(13, 1, type="Task")).status_code == 202
    with_tasks.wait_idle()
    assert len(trello.cards()) == 1


def test_comment_waits_for_its_card_and_is_copied_once(bridge, board):
    """A comment on an issue with no card waits; it is copied once when the card exists."""
    first = bridge.post(note(14, 501, "early comment"), event="Note Hook")
    again = bridge.post(
        note(14, 501, "early comment"), event="Note Hook"
    )  # another hook, another key
    assert (first.status_code, again.json()["status"]) == (202, "duplicate")
    internal = note(14, 502, "internal")
    internal["object_attributes"]["internal"] = True
    assert bridge.post(internal, event="Note Hook").json()["status"] == "ignored"
    wait_for(lambda: bridge.health()["waiting_for_card"] == 1, 20, "the comment waiting")
    assert board.cards() == []
    bridge.post(event(14, 1))
    bridge.wait_idle()
    card = only_card(board)
    texts = [c["text"] for c in board.comments(card["id"])]
    assert len(texts) == 1 and "early comment" in texts[0]


def test_calls_per_action(make_service, trello):
    """Open, edit, close and reopen cost one Trello call each once the lists are known."""
    bridge = make_service({"trello": {"done_list_id": trello.done_list_id}})
    costs = {}
    steps = [
        ("warm-up open", event(1, 1)),
        ("warm-up close", event(1, 2, action="close")),
        ("open", event(2, 1)),
        ("edit", event(2, 2, title="Edited", description="new text")),
        ("close", event(2, 3, title="Edited", description="new text", action="close")),
        ("reopen", event(2, 4, title="Edited", description="new text", action="reopen")),
    ]
    for name, payload in steps:
        trello.reset_calls()
        bridge.post(payload)
        bridge.wait_idle()
        costs[name] = [f"{c.method} {c.path.split('/')[2]}" for c in trello.calls]
    assert costs["warm-up open"] == ["GET lists", "GET boards", "POST cards"]
    assert costs["warm-up close"] == ["GET lists", "PUT cards"]  # learns the done list's board
    assert costs["open"] == ["POST cards"]
    assert costs["edit"] == ["PUT cards"]
    assert costs["close"] == ["PUT cards"]
    assert costs["reopen"] == ["PUT cards"]
    (card,) = [c for c in trello.cards() if c["name"].startswith("[ ISSUE 2 ]")]
    assert (card["idList"], card["closed"]) == (trello.list_id, False)
