"""The bridge's own event types, and their one encoding for the store.

Inbound hooks (``gitlab_hook``) and reconciliation turn what they read into these; the store keeps
them as JSON and hands them back decoded; the rules (``sync``) read them.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson


@dataclass(frozen=True)
class Label:
    name: str
    color: str | None = None


@dataclass(frozen=True)
class Note:
    """A comment on an issue."""

    id: int
    body: str
    author: str
    url: str
    internal: bool = False


@dataclass(frozen=True)
class IssueEvent:
    """One issue as a delivery (or the REST API) described it, normalised."""

    instance: str
    project_id: int
    iid: int
    title: str
    url: str
    action: str
    state: str
    updated_at: float | None  # seconds since the epoch, UTC
    description: str = ""
    project_path: str | None = None
    project_url: str | None = None
    labels: tuple[Label, ...] = ()
    assignees: tuple[str, ...] = ()
    due_date: str | None = None
    confidential: bool = False
    moved_to_id: int | None = None
    work_item_type: str = "Issue"
    author: str | None = None
    note: Note | None = None

    @property
    def issue_key(self) -> str:
        """Identity of the issue across instances and projects."""
        return f"{self.instance}|{self.project_id}|{self.iid}"

    @property
    def describe(self) -> str:
        """Short human description for log lines."""
        where = self.project_path or f"project {self.project_id}"
        what = "note on issue" if self.note else f"{self.action} issue"
        return f"{self.author or '?'} {what} #{self.iid} in {where}"

    def to_json(self) -> str:
        # orjson encodes dataclasses (and the labels and note inside) natively
        return orjson.dumps(self).decode()

    @classmethod
    def from_json(cls, text: str) -> IssueEvent:
        data = orjson.loads(text)
        data["labels"] = tuple(Label(**label) for label in data.get("labels") or ())
        data["assignees"] = tuple(data.get("assignees") or ())
        if data.get("note"):
            data["note"] = Note(**data["note"])
        return cls(**data)


@dataclass(frozen=True)
class CardAction:
    """One change a person (or the bridge) made on a card, as Trello's webhook or its board
    actions describe it, normalised; ``what`` says which of the synced concerns it touches."""

    id: str  # Trello's action id: the dedupe key
    type: str  # updateCard, commentCard, add/removeMemberToCard, add/removeLabel..., createCard
    date: float  # seconds since the epoch, UTC
    board_id: str
    card_id: str
    member_id: str  # who made the change
    username: str | None = None
    full_name: str | None = None
    card_name: str = ""
    card_short_link: str | None = None
    list_id: str | None = None  # the card's list after the change
    list_before: str | None = None  # set when the card moved
    closed: bool | None = None  # set when the card was archived (True) or un-archived (False)
    due: str | None = None
    due_changed: bool = False
    text: str | None = None  # a comment's text
    target_member_id: str | None = None  # the member added or removed
    target_username: str | None = None
    renamed: bool = False  # name or description changed (never written back)
    label_id: str | None = None  # the label added or removed
    label_name: str | None = None

    @property
    def what(self) -> str:
        """The concern it touches: list, archive, members, labels, comment, due, created, or
        ''."""
        if self.type == "commentCard":
            return "comment"
        if self.type in ("addMemberToCard", "removeMemberFromCard"):
            return "members"
        if self.type in ("addLabelToCard", "removeLabelFromCard"):
            return "labels"
        if self.type == "createCard":
            return "created"
        if self.list_before is not None:
            return "list"
        if self.closed is not None:
            return "archive"
        if self.due_changed:
            return "due"
        return ""

    @property
    def card_url(self) -> str:
        return f"https://trello.com/c/{self.card_short_link or self.card_id}"

    @property
    def describe(self) -> str:
        """Short human description for log lines."""
        who = self.username or self.member_id
        return f"{who} {self.type} ({self.what or 'other'}) on card {self.card_id}"

    def to_json(self) -> str:
        return orjson.dumps(self).decode()

    @classmethod
    def from_json(cls, text: str) -> CardAction:
        return cls(**orjson.loads(text))


@dataclass(frozen=True)
class MergeRequestEvent:
    """One merge request as its webhook described it, normalised."""

    instance: str
    project_id: int
    iid: int
    title: str
    url: str
    state: str  # opened, closed, merged, locked
    action: str  # open, update, close, reopen, merge, ...
    updated_at: float | None
    author: str | None = None
    # False on the copy queued to an issue it closed before and no longer closes
    closes: bool = True

    @property
    def key(self) -> str:
        """Its queue key (its own: the issues it closes are asked of GitLab by the worker)."""
        return f"mr:{self.instance}|{self.project_id}|{self.iid}"

    @property
    def name(self) -> str:
        """How it is named on a card: ``!<iid> <title>``."""
        return f"!{self.iid} {self.title}"

    @property
    def describe(self) -> str:
        return f"{self.author or '?'} {self.action} merge request !{self.iid}"

    def to_json(self) -> str:
        return orjson.dumps(self).decode()

    @classmethod
    def from_json(cls, text: str) -> MergeRequestEvent:
        return cls(**orjson.loads(text))
