"""The rules of the other direction, as pure functions: what a person's change on a card means
for its GitLab issue, and what the card now shows.

| on the card | on the issue |
|---|---|
| moved into the done list, or archived when there is no done list | closed |
| moved out of the done list, or un-archived | reopened |
| moved into a list of ``[lists]`` | that label added, the other mapped labels removed |
| moved into the new-card list | the mapped labels removed |
| moved into a list the configuration does not know | nothing |
| member added / removed | assignee added / removed |
| comment | a note ``**Full Name** (@username) on Trello: text`` with a link to the card |
| due date set / cleared | ``due_date`` set (the date of the due time in UTC) / cleared |

Titles and descriptions stay GitLab's: a rename on Trello is never written back, and neither is
a label added or removed on the card (the bridge only notes it: ``card_after`` keeps the card's
label set, from which ``sync.plan`` replaces the set in one call; ``undone`` tells when such a
replace, sent before the action was known, undid it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from config import Routing
from events import CardAction
from sync import Op

CONCERNS = {"list": "lists", "archive": "lists", "members": "members", "due": "due"}


@dataclass(frozen=True)
class Write:
    """What GitLab should be told about one card action.

    ``fields`` go in one ``PUT`` of the issue; ``assign``/``unassign`` name a GitLab user whose
    assignment changes (the worker reads the current assignees to build the new list); ``note``
    is a comment to add. ``reason`` says why nothing is written when all are empty.
    """

    fields: Mapping[str, Any] = field(default_factory=dict)
    assign: str | None = None
    unassign: str | None = None
    note: str | None = None
    reason: str = ""

    @property
    def empty(self) -> bool:
        return not (self.fields or self.assign or self.unassign or self.note)


def gitlab_username(trello_username: str, routing: Routing) -> str:
    """``[members]`` read backwards (GitLab user = Trello user), else the same name."""
    for gitlab_name, trello_name in routing.members.items():
        if trello_name.lower() == trello_username.lower():
            return gitlab_name
    return trello_username


def note_text(action: CardAction) -> str:
    name = action.full_name or action.username or "Someone"
    who = f"**{name}** (@{action.username})" if action.username else f"**{name}**"
    # a line of the comment starting with "/" would be run by GitLab as a quick action
    # (/close, /assign...): a zero-width space in front keeps it text
    text = "\n".join(
        f"\u200b{line}" if line.lstrip().startswith("/") else line
        for line in (action.text or "").split("\n")
    )
    return f"{who} on Trello: {text}\n\n[Card on Trello]({action.card_url})"


def due_date(iso: str | None) -> str:
    """The date (UTC) of a Trello due time, or '' to clear GitLab's."""
    if not iso:
        return ""
    try:
        stamp = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return iso[:10]
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.astimezone(UTC).date().isoformat()


def plan(action: CardAction, routing: Routing, synced: frozenset[str]) -> Write:
    """What to write to the issue after ``action`` (by a person) on its card."""
    what = action.what
    if what == "labels":
        return Write(reason="labels stay GitLab's: a label changed on the card is not written back")
    concern = "comments" if what == "comment" else CONCERNS.get(what)
    if concern is None:
        return Write(reason=f"{action.type} is not synced")
    if concern not in synced:
        return Write(reason=f"[twoway] sync leaves out {concern}")
    if what == "comment":
        return Write(note=note_text(action))
    if what == "due":
        return Write(fields={"due_date": due_date(action.due)})
    if what == "members":
        username = action.target_username
        if not username:
            return Write(reason="the member's username is not known")
        name = gitlab_username(username, routing)
        if action.type == "addMemberToCard":
            return Write(assign=name)
        return Write(unassign=name)
    if what == "archive":
        if routing.done_list_id:
            return Write(reason="archived, but the done list says when an issue is closed")
        return Write(fields={"state_event": "close" if action.closed else "reopen"})
    return _moved(action, routing)


def _moved(action: CardAction, routing: Routing) -> Write:
    to, came_from = action.list_id, action.list_before
    fields: dict[str, Any] = {}
    done = routing.done_list_id
    if done and to == done:
        return Write(fields={"state_event": "close"})
    if done and came_from == done:
        fields["state_event"] = "reopen"
    mapped = {list_id: label for label, list_id in routing.lists.items()}
    if to in mapped:
        fields["add_labels"] = mapped[to]
        others = sorted(label for list_id, label in mapped.items() if list_id != to)
        if others:
            fields["remove_labels"] = ",".join(others)
    elif to == routing.list_id:
        if mapped:
            fields["remove_labels"] = ",".join(sorted(mapped.values()))
    elif not fields:
        return Write(reason=f"moved into list {to}, which the configuration does not name")
    return Write(fields=fields)


def known_list(list_id: str | None, routing: Routing) -> bool:
    """True for the lists the configuration names (new-card, done, ``[lists]``)."""
    return bool(list_id) and list_id in {
        routing.list_id,
        routing.done_list_id,
        *routing.lists.values(),
    }


def card_after(
    action: CardAction,
    applied: Mapping[str, Any] | None,
    routing: Routing,
    member_ids: Mapping[str, str] | None = None,
) -> dict[str, Any] | None:
    """What the card shows after ``action``, in the form of the bridge's ``applied`` state, with
    the time of the change per concern (``changed_at``), so that the issue event GitLab sends
    back for the same change costs no call, and an older GitLab event does not undo it.

    A move into a list the configuration does not know is not recorded: the card stays where
    the person put it, as it does for any card moved by hand.
    """
    if applied is None:
        return None
    after = dict(applied)
    changed = dict(after.get("changed_at") or {})
    what = action.what
    for kind, key, ident in (
        ("Label", "card_labels", action.label_id),
        ("Member", "card_members", action.target_member_id),
    ):
        on_card = after.get(key)
        if ident and isinstance(on_card, list) and action.type.endswith(f"{kind}ToCard"):
            after[key] = [*on_card, ident] if ident not in on_card else on_card
        elif ident and isinstance(on_card, list) and action.type.endswith(f"{kind}FromCard"):
            after[key] = [i for i in on_card if i != ident]
    if what == "list" and known_list(action.list_id, routing):
        after["list"] = action.list_id
        changed["lists"] = action.date
    elif what == "archive" and action.closed is not None:
        after["closed"] = action.closed
        changed["lists"] = action.date
    elif what == "due":
        after["due"] = due_date(action.due) or None
        changed["due"] = action.date
    elif what == "members" and action.target_username:
        members = dict(after.get("members") or {})
        key = action.target_username.lower()
        if action.type == "addMemberToCard":
            members[key] = (member_ids or {}).get(key, action.target_member_id or "")
        else:
            members.pop(key, None)
        after["members"] = members
        changed["members"] = action.date
    else:
        return after
    after["changed_at"] = changed
    return after


def undone(action: CardAction, applied: Mapping[str, Any] | None) -> Op | None:
    """The call that makes ``action`` (a label or member a person added or removed) again, when
    the bridge's last whole-set write of the card (``written``, see ``sync.card_view``) was sent
    after it happened, without knowing of it, and so undid it; None when nothing was undone.

    A label the person added that the write left out, other than one the bridge meant to
    remove, is put back; one the person removed that the write sent again, other than one the
    bridge meant to add, is taken off again. Times are Trello's (the action's date, the
    card's ``dateLastActivity`` in the answer to the write); a tie counts as undone (adding or
    removing again is harmless: Trello answers that it already is or is not there).
    """
    concern = action.what
    ident = action.label_id if concern == "labels" else action.target_member_id
    if concern not in ("labels", "members") or not ident or not applied:
        return None
    written = (applied.get("written") or {}).get(concern)
    if not written or action.date > float(written.get("at") or 0):
        return None
    kind = "label" if concern == "labels" else "member"
    sent, added, removed = (written.get(k) or () for k in ("sent", "added", "removed"))
    if action.type in ("addLabelToCard", "addMemberToCard"):
        if ident not in sent and ident not in removed:
            return Op(f"add_{kind}", {"value": ident})
    elif ident in sent and ident not in added:
        return Op(f"remove_{kind}", {"id": ident})
    return None


def newer_on_card(applied: Mapping[str, Any] | None, updated_at: float | None) -> set[str]:
    """The concerns (lists, members, due) a person changed on the card after ``updated_at``:
    an issue event older than that change must leave them as the card shows them."""
    if applied is None or updated_at is None:
        return set()
    changed = applied.get("changed_at") or {}
    return {concern for concern, when in changed.items() if when and when > updated_at}
