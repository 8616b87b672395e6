"""The bridge's own event types, and their one encoding for the store.

Inbound hooks (``gitlab_io``) and reconciliation turn what they read into these; the store keeps
them as JSON and hands them back decoded; the rules (``sync``) read them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


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
        # by hand rather than dataclasses.asdict, which costs a quarter of a webhook request
        data = dict(self.__dict__)
        data["labels"] = [vars(label) for label in self.labels]
        data["note"] = vars(self.note) if self.note else None
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> IssueEvent:
        data = json.loads(text)
        data["labels"] = tuple(Label(**label) for label in data.get("labels") or ())
        data["assignees"] = tuple(data.get("assignees") or ())
        if data.get("note"):
            data["note"] = Note(**data["note"])
        return cls(**data)
