"""Unit tests of the Trello side: the webhook's signature and parsing (trello_hook.py) and the
rules of the Trello -> GitLab direction (sync_back.py), on Trello's realistic deliveries."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path

import pytest

import sync
import sync_back
import trello_hook
from config import Routing
from events import CardAction

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "trello"
VECTORS = json.loads((FIXTURES / "signatures.json").read_text(encoding="utf-8"))
SECRET, CALLBACK = VECTORS["secret"], VECTORS["callback_url"]
TODO, DOING, DONE = (
    "5f0c1a2b3c4d5e6f70819202",
    "5f0c1a2b3c4d5e6f70819203",
    "5f0c1a2b3c4d5e6f70819204",
)
ROUTING = Routing(list_id=TODO, done_list_id=DONE, lists={"doing": DOING}, members={"bob.l": "bob"})
ALL = frozenset(("lists", "members", "comments", "due"))


def body(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def action(name: str) -> CardAction:
    parsed = trello_hook.parse(body(name))
    assert isinstance(parsed, CardAction), parsed
    return parsed


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["file"])
def test_trellos_signatures_verify(vector):
    """Every stored delivery verifies with the X-Trello-Webhook header Trello sent for it."""
    headers = {"X-Trello-Webhook": vector["x_trello_webhook"]}
    trello_hook.verify(headers, body(vector["file"]), secret=SECRET, callback_url=CALLBACK)


def test_a_wrong_missing_or_other_url_signature_is_refused():
    """A changed body, a missing header, another secret or another callback URL: Unauthorized."""
    good = {"X-Trello-Webhook": VECTORS["vectors"][0]["x_trello_webhook"]}
    raw = body(VECTORS["vectors"][0]["file"])
    for headers, payload, secret, url in (
        (good, raw + b" ", SECRET, CALLBACK),
        ({}, raw, SECRET, CALLBACK),
        (good, raw, "other-secret", CALLBACK),
        (good, raw, SECRET, CALLBACK + "/"),
    ):
        with pytest.raises(trello_hook.Unauthorized):
            trello_hook.verify(headers, payload, secret=secret, callback_url=url)


def test_non_ascii_text_signed_as_a_binary_string_verifies():
    """Text past U+00FF signed by its low 8 bits (Trello's binary string) still verifies."""
    raw = json.dumps({"action": {"data": {"text": "done ✓ 完成"}}}, ensure_ascii=False).encode()
    low = bytes(ord(c) & 0xFF for c in raw.decode() + CALLBACK)
    signature = base64.b64encode(hmac.new(SECRET.encode(), low, hashlib.sha1).digest()).decode()
    trello_hook.verify({"X-Trello-Webhook": signature}, raw, secret=SECRET, callback_url=CALLBACK)


def test_each_delivery_parses_into_what_it_changed():
    """Moves, archiving, comments, members and due dates parse into their concern."""
    moved = action("02-card-moved-to-done.json")
    assert (moved.what, moved.list_id, moved.list_before) == ("list", DONE, DOING)
    assert (moved.username, moved.full_name) == ("alice", "Alice Moreau")
    assert action("03-card-archived.json").closed is True
    comment = action("04-comment.json")
    assert comment.what == "comment" and "Grüße" in (comment.text or "")
    added = action("05-member-added.json")
    assert (added.what, added.target_username) == ("members", "bob")
    due = action("07-due-set.json")
    assert (due.what, due.due) == ("due", "2026-12-15T12:00:00.000Z")
    assert action("10-card-renamed.json").renamed
    assert CardAction.from_json(moved.to_json()) == moved


def test_unsynced_and_malformed_deliveries():
    """A card created counts only in a new-card list; an unknown type is ignored; not JSON or
    no action: BadDelivery."""
    created = action("08-card-created-by-person.json")
    assert (created.what, created.list_id) == ("created", TODO)
    assert trello_hook.ignored_reason(created, ALL, own_member=None, boards=None)
    assert (
        trello_hook.ignored_reason(
            created, ALL, own_member=None, boards=None, new_card_lists=frozenset({TODO})
        )
        is None
    )
    other = {"action": {"id": "a", "type": "addChecklistToCard", "data": {}}}
    assert isinstance(trello_hook.parse(json.dumps(other).encode()), trello_hook.Ignored)
    for bad in (b"{", b"[]", b'{"action": 3}', b'{"action": {"type": "updateCard"}}'):
        with pytest.raises(trello_hook.BadDelivery):
            trello_hook.parse(bad)


def test_the_bridges_own_actions_and_foreign_boards_are_ignored():
    """The bridge's member, an unmanaged board, a rename, an unsynced concern: not synced."""
    by_bridge = action("09-card-moved-by-bridge.json")
    own = by_bridge.member_id
    boards = frozenset({by_bridge.board_id})
    assert trello_hook.ignored_reason(by_bridge, ALL, own_member=own, boards=boards)
    moved = action("02-card-moved-to-done.json")
    assert trello_hook.ignored_reason(moved, ALL, own_member=own, boards=boards) is None
    assert trello_hook.ignored_reason(moved, ALL, own_member=own, boards=frozenset({"x"}))
    assert trello_hook.ignored_reason(moved, frozenset({"due"}), own_member=own, boards=None)
    renamed = action("10-card-renamed.json")
    assert "stay GitLab's" in trello_hook.ignored_reason(renamed, ALL, own_member=own, boards=None)


def test_moves_close_reopen_and_swap_mapped_labels():
    """Done closes; out of Done reopens; a [lists] list swaps labels; the new-card list clears."""
    assert sync_back.plan(action("02-card-moved-to-done.json"), ROUTING, ALL).fields == {
        "state_event": "close"
    }
    moved = action("01-card-moved-to-doing.json")
    assert sync_back.plan(moved, ROUTING, ALL).fields == {"add_labels": "doing"}
    back = CardAction(**{**moved.__dict__, "list_id": TODO, "list_before": DONE})
    assert sync_back.plan(back, ROUTING, ALL).fields == {
        "state_event": "reopen",
        "remove_labels": "doing",
    }
    nowhere = CardAction(**{**moved.__dict__, "list_id": "f" * 24})
    assert sync_back.plan(nowhere, ROUTING, ALL).empty


def test_archive_closes_only_without_a_done_list():
    """Archiving closes the issue when there is no done list; with one, it changes nothing."""
    archived = action("03-card-archived.json")
    assert sync_back.plan(archived, ROUTING, ALL).empty
    no_done = Routing(list_id=TODO, done_list_id="")
    assert sync_back.plan(archived, no_done, ALL).fields == {"state_event": "close"}
    back = CardAction(**{**archived.__dict__, "closed": False})
    assert sync_back.plan(back, no_done, ALL).fields == {"state_event": "reopen"}


def test_members_comments_and_due_dates():
    """Members map through [members] backwards; comments name the person; due is a UTC date."""
    assert sync_back.plan(action("05-member-added.json"), ROUTING, ALL).assign == "bob.l"
    assert sync_back.plan(action("06-member-removed.json"), ROUTING, ALL).unassign
    note = sync_back.plan(action("04-comment.json"), ROUTING, ALL).note or ""
    assert note.startswith("**Alice Moreau** (@alice) on Trello: Reproduced on staging")
    assert "(https://trello.com/c/cR7tZ1pQ)" in note
    assert sync_back.plan(action("07-due-set.json"), ROUTING, ALL).fields == {
        "due_date": "2026-12-15"
    }
    assert sync_back.due_date("2026-12-31T23:30:00-02:00") == "2027-01-01"
    assert sync_back.due_date(None) == ""
    assert sync_back.plan(action("07-due-set.json"), ROUTING, frozenset({"lists"})).empty


def test_what_the_card_shows_after_a_person_changed_it():
    """card_after records the new list (known lists only), due and members, with their times."""
    applied = {"list": DOING, "closed": False, "due": None, "members": {}}
    done = sync_back.card_after(action("02-card-moved-to-done.json"), applied, ROUTING)
    assert done["list"] == DONE and done["changed_at"]["lists"] > 0
    nowhere = CardAction(**{**action("01-card-moved-to-doing.json").__dict__, "list_id": "f" * 24})
    assert sync_back.card_after(nowhere, applied, ROUTING)["list"] == DOING
    due = sync_back.card_after(action("07-due-set.json"), applied, ROUTING)
    assert due["due"] == "2026-12-15"
    member = sync_back.card_after(action("05-member-added.json"), applied, ROUTING)
    assert member["members"] == {"bob": "5b0b00000000000000000002"}
    assert sync_back.newer_on_card(done, done["changed_at"]["lists"] - 1) == {"lists"}
    assert sync_back.newer_on_card(done, done["changed_at"]["lists"] + 1) == set()


def test_a_comment_line_is_never_a_gitlab_quick_action():
    """A comment's line starting with / (a GitLab quick action) is copied as text."""
    comment = CardAction(
        **{**action("04-comment.json").__dict__, "text": "done\n/close\n /assign @x"}
    )
    note = sync_back.note_text(comment)
    assert "\n/close" not in note and "\u200b/close" in note
    assert "\u200b /assign" in note


# ---------------------------------------------------------------------------- labels on the card

BUG, HAND = "5c0000000000000000000b01", "5c0000000000000000000b02"


def label_action(kind: str, label_id: str, date: str, member: str = "alice") -> CardAction:
    """A person's addLabelToCard / removeLabelFromCard as Trello's webhook sends it."""
    delivery = json.loads(body("05-member-added.json"))
    stamp = date[17:19] + date[20:23] + kind[:1]  # a distinct 24-hex-like id per action
    delivery["action"].update(type=kind, date=date, id=f"6c{stamp:0>22}")
    data = delivery["action"]["data"]
    del data["idMember"], data["member"], delivery["action"]["member"]
    data.update(label={"id": label_id, "name": "customer", "color": "red"}, text="customer")
    delivery["action"]["memberCreator"]["username"] = member
    parsed = trello_hook.parse(json.dumps(delivery).encode())
    assert isinstance(parsed, CardAction), parsed
    return parsed


def test_a_label_changed_by_a_person_is_queued_never_written_back_and_kept_in_the_view():
    """Label actions parse, pass the edge whatever [twoway] sync says, write nothing to GitLab,
    and change the card's label set the bridge knows (when it knows one)."""
    added = label_action("addLabelToCard", HAND, "2026-11-30T09:16:30.000Z")
    assert (added.what, added.label_id, added.label_name) == ("labels", HAND, "customer")
    assert trello_hook.ignored_reason(added, frozenset(), own_member=None, boards=None) is None
    assert sync_back.plan(added, ROUTING, ALL).empty
    known = {"labels": {"bug": BUG}, "card_labels": [BUG]}
    assert sync_back.card_after(added, known, ROUTING)["card_labels"] == [BUG, HAND]
    removed = label_action("removeLabelFromCard", BUG, "2026-11-30T09:16:31.000Z")
    assert sync_back.card_after(removed, known, ROUTING)["card_labels"] == []
    assert "card_labels" not in sync_back.card_after(added, {"labels": {}}, ROUTING)
    assert {"addLabelToCard", "removeLabelFromCard"} <= set(trello_hook.SYNCED_TYPES)


def test_a_change_the_bridges_whole_set_write_undid_is_made_again():
    """A label a person added before the bridge's replace (which did not know of it) is put
    back; one added after it, or one the bridge meant to remove, is not; a label the person
    took off that the replace sent again is taken off again."""
    at = trello_hook.parse_time("2026-11-30T09:16:30.000Z")
    ux = "5c0000000000000000000b03"
    applied = {
        "card_labels": [ux],
        "written": {"labels": {"at": at, "sent": [ux], "added": [ux], "removed": [BUG]}},
    }
    before = label_action("addLabelToCard", HAND, "2026-11-30T09:16:29.900Z")
    assert sync_back.undone(before, applied) == sync.Op("add_label", {"value": HAND})
    after = label_action("addLabelToCard", HAND, "2026-11-30T09:16:30.100Z")
    assert sync_back.undone(after, applied) is None
    meant = label_action("addLabelToCard", BUG, "2026-11-30T09:16:29.900Z")
    assert sync_back.undone(meant, applied) is None
    kept = {**applied, "written": {"labels": {**applied["written"]["labels"], "added": []}}}
    taken_off = label_action("removeLabelFromCard", ux, "2026-11-30T09:16:29.000Z")
    assert sync_back.undone(taken_off, kept) == sync.Op("remove_label", {"id": ux})
    assert sync_back.undone(taken_off, applied) is None  # the bridge meant to add it
    assert sync_back.undone(before, {"card_labels": [ux]}) is None  # no whole-set write yet
