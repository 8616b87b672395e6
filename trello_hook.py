"""Trello's webhook: verifying and parsing what Trello sends into the bridge's ``CardAction``.

Verify first (``X-Trello-Webhook``: base64 of HMAC-SHA1 over the raw body plus the callback URL
as registered, keyed with the API key's secret), then parse. What is parsed is only what the
bridge syncs back to GitLab: moves, archiving, members, comments and due dates; everything else
is a well-formed action the bridge answers 200 ``ignored``. Labels a person adds or removes on a
card are queued too: they are not written back, but they keep the bridge's view of the card's
labels up to date (``sync.plan`` replaces the card's label set from it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from events import CardAction
from gitlab_hook import parse_time

SYNCED_TYPES = (
    "updateCard",
    "commentCard",
    "addMemberToCard",
    "removeMemberFromCard",
    "addLabelToCard",
    "removeLabelFromCard",
    "createCard",
)


class Unauthorized(Exception):
    """The signature does not check out (answered 401)."""


class BadDelivery(ValueError):
    """The body is not a Trello webhook delivery; the message says why (answered 400)."""


@dataclass(frozen=True)
class Ignored:
    """A well-formed action the bridge does not sync (answered 200)."""

    reason: str


def _digest(secret: str, message: bytes) -> bytes:
    return base64.b64encode(hmac.new(secret.encode(), message, hashlib.sha1).digest())


def verify(headers: Mapping[str, str], body: bytes, *, secret: str, callback_url: str) -> None:
    """Raise ``Unauthorized`` unless ``X-Trello-Webhook`` signs ``body`` + ``callback_url``.

    Trello signs a "binary string": characters past U+00FF may be signed by their low 8 bits
    only, so a body that fails over its UTF-8 bytes is tried that way too (constant time both).
    """
    given = headers.get("X-Trello-Webhook", "").strip().encode("ascii", "replace")
    if not given:
        raise Unauthorized("missing X-Trello-Webhook signature")
    url = callback_url.encode()
    if hmac.compare_digest(given, _digest(secret, body + url)):
        return
    text = body.decode("utf-8", "replace") + callback_url
    low_bytes = bytes(ord(char) & 0xFF for char in text)
    if hmac.compare_digest(given, _digest(secret, low_bytes)):
        return
    raise Unauthorized("X-Trello-Webhook signature does not match")


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def parse(body: bytes) -> CardAction | Ignored:
    """One webhook body (``{"action": ..., "model": ..., "webhook": ...}``) as a card action."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadDelivery(f"body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadDelivery("body must be a JSON object")
    if not isinstance(data.get("action"), dict):
        raise BadDelivery("action must be an object")
    return parse_action(data["action"])


def parse_action(action: Mapping[str, Any]) -> CardAction | Ignored:
    """One Trello action (from a webhook or ``GET /boards/{id}/actions``) as a card action."""
    action_id, kind = _str(action.get("id")), _str(action.get("type"))
    if action_id is None or kind is None:
        raise BadDelivery("action.id and action.type must be strings")
    data = _obj(action.get("data"))
    card, board = _obj(data.get("card")), _obj(data.get("board"))
    if kind not in SYNCED_TYPES:
        return Ignored(f"{kind} actions are not synced")
    if not _str(card.get("id")) or not _str(board.get("id")):
        raise BadDelivery(f"{kind} action without data.card.id or data.board.id")
    when = parse_time(action.get("date"))
    if when is None:
        raise BadDelivery("action.date must be an ISO time")
    creator = _obj(action.get("memberCreator"))
    member_id = _str(action.get("idMemberCreator")) or _str(creator.get("id"))
    if member_id is None:
        raise BadDelivery("action.idMemberCreator must be a string")
    old = _obj(data.get("old"))
    list_after = _str(_obj(data.get("listAfter")).get("id"))
    list_id = list_after or _str(card.get("idList")) or _str(_obj(data.get("list")).get("id"))
    fields: dict[str, Any] = {}
    if kind == "updateCard":
        if list_after and _str(_obj(data.get("listBefore")).get("id")):
            fields["list_before"] = data["listBefore"]["id"]
        elif "closed" in old and isinstance(card.get("closed"), bool):
            fields["closed"] = card["closed"]
        elif "due" in old:
            fields.update(due=_str(card.get("due")), due_changed=True)
        elif "name" in old or "desc" in old:
            fields["renamed"] = True
        else:
            return Ignored("this card change is not synced")
    elif kind == "commentCard":
        text = data.get("text")
        if not isinstance(text, str):
            raise BadDelivery("commentCard action without data.text")
        fields["text"] = text
    elif kind == "createCard":
        list_id = _str(_obj(data.get("list")).get("id")) or list_id
    elif kind in ("addLabelToCard", "removeLabelFromCard"):
        label = _obj(data.get("label"))
        label_id = _str(label.get("id")) or _str(data.get("idLabel"))
        if label_id is None:
            raise BadDelivery(f"{kind} action without data.label.id")
        fields.update(label_id=label_id, label_name=_str(label.get("name")))
    else:  # addMemberToCard, removeMemberFromCard
        target = _obj(action.get("member"))
        target_id = _str(data.get("idMember")) or _str(target.get("id"))
        if target_id is None:
            raise BadDelivery(f"{kind} action without data.idMember")
        fields.update(target_member_id=target_id, target_username=_str(target.get("username")))
    return CardAction(
        id=action_id,
        type=kind,
        date=when,
        board_id=board["id"],
        card_id=card["id"],
        member_id=member_id,
        username=_str(creator.get("username")),
        full_name=_str(creator.get("fullName")),
        card_name=_str(card.get("name")) or "",
        card_short_link=_str(card.get("shortLink")),
        list_id=list_id,
        **fields,
    )


def ignored_reason(
    action: CardAction,
    synced: frozenset[str],
    *,
    own_member: str | None,
    boards: frozenset[str] | None,
    new_card_lists: frozenset[str] = frozenset(),
) -> str | None:
    """Why a well-formed card action is not synced, or None when it must be.

    ``own_member`` is the bridge's own Trello member (its changes never go back to GitLab) and
    ``boards`` the boards it manages; None when not known yet (the worker checks again).
    ``new_card_lists``: where a card created by a person becomes an issue (empty: nowhere).
    """
    if own_member is not None and action.member_id == own_member:
        return "made by the bridge itself"
    if boards is not None and action.board_id not in boards:
        return f"board {action.board_id} is not one the bridge manages"
    if action.what == "created":
        if action.list_id not in new_card_lists:
            return "cards created in this list do not become issues ([twoway] create_issues)"
        return None
    if action.renamed:
        return "titles and descriptions stay GitLab's: a rename on Trello is not written back"
    if action.what == "labels":
        return None  # never written back, but it keeps the bridge's view of the card's labels
    concern = {"list": "lists", "archive": "lists", "comment": "comments"}.get(
        action.what, action.what
    )
    if concern not in synced:
        return f"[twoway] sync leaves out {concern}"
    return None
