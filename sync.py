"""The rules, as pure functions: which card an issue should have, and which calls get it there.

``desired_card`` turns an ``IssueEvent`` and the project's ``Routing`` into a ``CardSpec``;
``plan`` compares it with what the bridge last wrote on the card and returns the smallest list of
``Op`` that brings the card there. Nothing here performs I/O.
"""

from __future__ import annotations

import colorsys
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from config import Routing
from events import IssueEvent, Label, Note
from gitlab_hook import parse_time
from trello import MAX_TEXT

NAME_FORMAT = "[ ISSUE {iid} ] {title}"
ZWSP = "\u200b"
_MENTION = re.compile(r"@(?=[\w.\-])")
_RELATIVE_UPLOAD = re.compile(r"(?<=[(\s\"'=])/uploads/")


@dataclass(frozen=True)
class CardSpec:
    """What the card of an issue should look like. ``list_id`` None: the issue needs no card."""

    name: str
    desc: str
    list_id: str | None
    closed: bool
    due: str | None = None
    labels: tuple[Label, ...] = ()
    members: tuple[str, ...] = ()  # Trello usernames


@dataclass(frozen=True)
class Op:
    """One Trello call: ``kind`` is create, update, add_label, remove_label, add_member,
    remove_member or comment."""

    kind: str
    fields: Mapping[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------- rendering


def neutralise_mentions(text: str) -> str:
    """``@name`` would notify the Trello member of that name; a zero-width space stops it."""
    return _MENTION.sub("@" + ZWSP, text)


def absolute_uploads(text: str, project_url: str | None) -> str:
    """GitLab's relative ``/uploads/...`` links, made absolute against the project URL."""
    if not project_url:
        return text
    return _RELATIVE_UPLOAD.sub(project_url.rstrip("/") + "/uploads/", text)


def truncate(text: str, url: str | None, limit: int = MAX_TEXT) -> str:
    """``text`` cut to ``limit`` characters, saying so and (with a URL) where the full text is."""
    if len(text) <= limit:
        return text
    note = (f"\n\n... truncated, full text: {url}" if url else "\n\n... truncated")[:limit]
    return text[: limit - len(note)] + note


def issue_link(event: IssueEvent) -> str | None:
    """The issue's http(s) URL, or None when its payload gave no way to link to it (GitLab
    before 7.4 sent neither the issue URL nor the project's)."""
    return event.url if event.url.startswith(("http://", "https://")) else None


def card_name(iid: int, title: str) -> str:
    """``[ ISSUE 23 ] New API: create/update/delete file``, within Trello's limit."""
    name = NAME_FORMAT.format(iid=iid, title=neutralise_mentions(" ".join(title.split())))
    if len(name) <= MAX_TEXT:
        return name
    note = " ... (truncated)"
    return name[: MAX_TEXT - len(note)] + note


def card_desc(event: IssueEvent, unmapped_assignees: Sequence[str] = ()) -> str:
    """The issue URL first (when there is one), then notes of the bridge, then the issue's own
    description."""
    link = issue_link(event)
    head = [link] if link else []
    if unmapped_assignees:
        names = ", ".join(neutralise_mentions("@" + name) for name in unmapped_assignees)
        head.append(f"Assigned in GitLab (no Trello member): {names}")
    if event.moved_to_id is not None:
        head.append(f"Moved to another project in GitLab (new issue id {event.moved_to_id}).")
    body = neutralise_mentions(absolute_uploads(event.description, event.project_url)).strip()
    text = "\n\n".join([*head, body] if body else head)
    return truncate(text, link)


def redacted_desc(event: IssueEvent) -> str:
    link = issue_link(event)
    notice = "Confidential issue: open it in GitLab to read it."
    return truncate(f"{link}\n\n{notice}" if link else notice, link)


# ---------------------------------------------------------------------------- the rules


def target_list(event: IssueEvent, routing: Routing) -> str | None:
    """Closed: the done list (None: archive in place); else the first mapped label; else default."""
    if event.state == "closed":
        return routing.done_list_id or None
    carried = {label.name.lower() for label in event.labels}
    for label, list_id in routing.lists.items():
        if label in carried:
            return list_id
    return routing.list_id or None


def desired_card(
    event: IssueEvent, routing: Routing, confidential: str = "skip"
) -> CardSpec | None:
    """The card this issue should have, or None when it should have no visible card."""
    if event.confidential and confidential == "skip":
        return None
    members = tuple(routing.members.get(name, name) for name in event.assignees)
    closed = event.state == "closed"
    list_id = target_list(event, routing)
    if event.confidential and confidential == "redact":
        return CardSpec(
            name=card_name(event.iid, "(confidential)"),
            desc=redacted_desc(event),
            list_id=list_id or routing.list_id,
            closed=closed and not routing.done_list_id,
        )
    return CardSpec(
        name=card_name(event.iid, event.title),
        desc=card_desc(event),
        list_id=list_id or routing.list_id,
        closed=closed and not routing.done_list_id,
        due=event.due_date,
        labels=_unique_labels(event.labels),
        members=members,
    )


def with_unmapped(
    event: IssueEvent, spec: CardSpec, routing: Routing, known_members: Collection[str]
) -> CardSpec:
    """Assignees with no Trello member leave the member set and are listed in the description."""
    if not spec.members:
        return spec
    missing = [
        name
        for name in event.assignees
        if routing.members.get(name, name).lower() not in known_members
    ]
    if not missing:
        return spec
    keep = tuple(name for name in spec.members if name.lower() in known_members)
    return replace(spec, desc=card_desc(event, missing), members=keep)


def _unique_labels(labels: Sequence[Label]) -> tuple[Label, ...]:
    seen: set[str] = set()
    result = []
    for label in labels:
        key = label.name.lower()
        if key and key not in seen:
            seen.add(key)
            result.append(label)
    return tuple(result)


def applied_state(
    spec: CardSpec,
    label_ids: Mapping[str, str],
    member_ids: Mapping[str, str],
    previous: Mapping[str, Any] | None = None,
    project_path: str | None = None,
) -> dict[str, Any]:
    """What the bridge writes down after applying ``spec`` (compared on the next event), with
    the project's path (two-way sync routes by it) and the card's own change times."""
    archived_in_place = spec.closed and previous is not None
    state = {
        "name": spec.name,
        "desc": spec.desc,
        "list": previous.get("list") if archived_in_place else spec.list_id,
        "closed": spec.closed,
        "due": spec.due,
        "labels": {label.name.lower(): label_ids[label.name.lower()] for label in spec.labels},
        "members": {name.lower(): member_ids[name.lower()] for name in spec.members},
    }
    # the card's own change times; its merge requests; what it shows (``card_view``)
    for kept in ("changed_at", "mrs", "card_labels", "card_members", "written"):
        if previous and previous.get(kept):
            state[kept] = previous[kept]
    if project_path or (previous and previous.get("project_path")):
        state["project_path"] = project_path or previous["project_path"]  # type: ignore[index]
    return state


def keep_card_values(
    spec: CardSpec, applied: Mapping[str, Any] | None, concerns: Collection[str]
) -> CardSpec:
    """``spec`` with the concerns a person changed on the card more recently than the event
    (``sync_back.newer_on_card``) left as the card shows them."""
    if not applied or not concerns:
        return spec
    if "lists" in concerns:
        spec = replace(
            spec, list_id=applied.get("list") or spec.list_id, closed=bool(applied.get("closed"))
        )
    if "due" in concerns:
        spec = replace(spec, due=applied.get("due"))
    if "members" in concerns:
        spec = replace(spec, members=tuple(applied.get("members") or {}))
    return spec


_ISSUE_URL = re.compile(r"https?://[^\s)\]>\"']+/issues/\d+(?!\d)")


_CARD_OF_ISSUE = re.compile(r"Created from Trello card https://trello\.com/c/([A-Za-z0-9]+)")


def card_of_issue(description: str) -> str | None:
    """The card (its short link) an issue was made from, named in its description."""
    match = _CARD_OF_ISSUE.search(description or "")
    return match.group(1) if match else None


def issue_urls(text: str) -> list[str]:
    """The GitLab issue URLs a card description carries."""
    return _ISSUE_URL.findall(text)


def found_state(card: Mapping[str, Any], labels_by_id: Mapping[str, str]) -> dict[str, Any]:
    """A card found on the board (not in the map), as if the bridge had written it."""
    return {
        "name": card.get("name", ""),
        "desc": card.get("desc", ""),
        "list": card.get("idList"),
        "closed": bool(card.get("closed")),
        "due": (card.get("due") or "")[:10] or None,
        "labels": {labels_by_id[i]: i for i in card.get("idLabels", ()) if i in labels_by_id},
        "members": {},
        "card_labels": [str(i) for i in card.get("idLabels") or ()],
        "card_members": [str(i) for i in card.get("idMembers") or ()],
    }


def plan(
    spec: CardSpec,
    applied: Mapping[str, Any] | None,
    label_ids: Mapping[str, str],
    member_ids: Mapping[str, str],
    replace: Collection[str] = (),
) -> list[Op]:
    """The calls that take the card from ``applied`` (None: no card yet) to ``spec``.

    ``label_ids`` and ``member_ids`` map lower-cased names to the board's ids; every label and
    member of ``spec`` must be in them. Field changes are folded into one ``update``. Labels and
    members that people put on the card by hand stay: for the sets named in ``replace``
    ("labels", "members") whose content on the card the bridge knows (``card_labels``,
    ``card_members`` of ``applied``), the new whole set goes in that same ``update`` (the
    card's set with the bridge's own changes made to it); otherwise they are added and removed
    one by one.
    """
    want_labels = {label.name.lower(): label_ids[label.name.lower()] for label in spec.labels}
    want_members = {name.lower(): member_ids[name.lower()] for name in spec.members}
    if applied is None:
        fields: dict[str, Any] = {
            "idList": spec.list_id,
            "name": spec.name,
            "desc": spec.desc,
            "pos": "bottom",
        }
        if spec.due:
            fields["due"] = spec.due
        if want_labels:
            fields["idLabels"] = ",".join(want_labels.values())
        if want_members:
            fields["idMembers"] = ",".join(want_members.values())
        # a closed issue with no done list needs no card; one is not created just to archive it
        return [] if spec.closed else [Op("create", fields)]

    changes: dict[str, Any] = {}
    if spec.name != applied.get("name"):
        changes["name"] = spec.name
    if spec.desc != applied.get("desc"):
        changes["desc"] = spec.desc
    if spec.list_id and spec.list_id != applied.get("list") and not spec.closed:
        # an archived card (closed, no done list) stays in the list it was in
        changes["idList"] = spec.list_id
    if spec.closed != bool(applied.get("closed")):
        changes["closed"] = spec.closed
    if spec.due != applied.get("due"):
        changes["due"] = spec.due
    one_by_one: list[Op] = []
    for concern, want, trello_field, view, add, remove in (
        ("labels", want_labels, "idLabels", "card_labels", "add_label", "remove_label"),
        ("members", want_members, "idMembers", "card_members", "add_member", "remove_member"),
    ):
        had: Mapping[str, str] = applied.get(concern) or {}
        added = [i for n, i in want.items() if n not in had]
        removed = [i for n, i in had.items() if n not in want]
        on_card = applied.get(view)
        if not (added or removed):
            continue
        if concern in replace and isinstance(on_card, list):
            kept = [i for i in on_card if i not in removed]
            changes[trello_field] = ",".join(kept + [i for i in added if i not in kept])
        else:
            one_by_one += [Op(add, {"value": i}) for i in added]
            one_by_one += [Op(remove, {"id": i}) for i in removed]
    return ([Op("update", changes)] if changes else []) + one_by_one


def card_view(view: Mapping[str, Any], op: Op, answer: Any, now: float) -> dict[str, Any]:
    """What the bridge knows the card shows after ``op`` and Trello's ``answer`` to it.

    ``view`` holds ``card_labels`` and ``card_members`` (the card's label and member ids, when
    known) and ``written`` (per set, the last whole set the bridge sent: when, by Trello's
    clock, what it sent, and what it added to and removed from the set it knew then; see
    ``sync_back.undone``). A card as Trello answers it (create, update) is the truth for both
    sets; an add or a remove changes a known set.
    """
    result = dict(view)
    written = dict(view.get("written") or {})
    for concern, trello_field, key in (
        ("labels", "idLabels", "card_labels"),
        ("members", "idMembers", "card_members"),
    ):
        before = view.get(key)
        if op.kind == "update" and trello_field in op.fields and isinstance(before, list):
            sent = [i for i in str(op.fields[trello_field]).split(",") if i]
            stamp = answer.get("dateLastActivity") if isinstance(answer, dict) else None
            written[concern] = {
                "at": _trello_time(stamp) or now,
                "sent": sent,
                "added": [i for i in sent if i not in before],
                "removed": [i for i in before if i not in sent],
            }
        if isinstance(answer, dict) and isinstance(answer.get(trello_field), list):
            result[key] = [str(i) for i in answer[trello_field]]
        elif isinstance(before, list) and op.kind == f"add_{concern[:-1]}":
            result[key] = (
                [*before, op.fields["value"]] if op.fields["value"] not in before else before
            )
        elif isinstance(before, list) and op.kind == f"remove_{concern[:-1]}":
            result[key] = [i for i in before if i != op.fields["id"]]
    if written:
        result["written"] = written
    return result


def _trello_time(value: Any) -> float | None:
    try:
        return parse_time(value) if isinstance(value, str) else None
    except ValueError:
        return None


def changed_fields(spec: CardSpec, applied: Mapping[str, Any]) -> list[str]:
    """Names of the card's fields that ``spec`` would change (for dry runs and logs)."""
    changed = [
        name
        for name, value, before in (
            ("name", spec.name, applied.get("name")),
            ("description", spec.desc, applied.get("desc")),
            ("list", spec.list_id, applied.get("list")),
            ("archived", spec.closed, bool(applied.get("closed"))),
            ("due date", spec.due, applied.get("due")),
        )
        if value != before
    ]
    if {label.name.lower() for label in spec.labels} != set(applied.get("labels") or {}):
        changed.append("labels")
    if {name.lower() for name in spec.members} != set(applied.get("members") or {}):
        changed.append("members")
    return changed


def comment_text(note: Note, project_url: str | None = None) -> str:
    """A GitLab comment as a Trello comment: author, text, link back."""
    body = neutralise_mentions(absolute_uploads(note.body, project_url)).strip()
    text = f"**{neutralise_mentions(note.author)}** on GitLab: {body}\n\n{note.url}"
    return truncate(text, note.url)


# Trello's saturated label colours by hue (degrees); "black" takes the greys
TRELLO_HUES = {
    "red": 0,
    "orange": 30,
    "yellow": 55,
    "lime": 90,
    "green": 140,
    "sky": 195,
    "blue": 215,
    "purple": 265,
    "pink": 320,
}


def nearest_color(hex_color: str | None) -> str | None:
    """The Trello label colour closest in hue to a GitLab ``#rrggbb`` colour.

    Greys and near-black colours become "black"; None when the value is not a colour.
    """
    if not hex_color or not re.fullmatch(r"#?[0-9a-fA-F]{6}", hex_color.strip()):
        return None
    value = hex_color.strip().lstrip("#")
    red, green, blue = (int(value[i : i + 2], 16) / 255 for i in (0, 2, 4))
    hue, saturation, brightness = colorsys.rgb_to_hsv(red, green, blue)
    if saturation < 0.15 or brightness < 0.2:
        return "black"
    degrees = hue * 360
    return min(
        TRELLO_HUES,
        key=lambda name: min(
            abs(degrees - TRELLO_HUES[name]), 360 - abs(degrees - TRELLO_HUES[name])
        ),
    )
