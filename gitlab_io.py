"""Every GitLab detail: webhook headers, token and signature checks, payload shapes, timestamps,
and the REST API (through python-gitlab) for backfill and reconciliation.

``parse_delivery`` turns one webhook request (headers + raw body) into either an ``IssueEvent``
to store, an ``Ignored`` answer, or raises ``BadDelivery`` naming what is wrong. Both the 2013
payload of the original write-up and today's payload are accepted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import stamina

from events import IssueEvent, Label, Note

ISSUE_EVENTS = ("Issue Hook", "Confidential Issue Hook")
NOTE_EVENTS = ("Note Hook", "Confidential Note Hook")
ACTIONS = ("open", "update", "close", "reopen")
_HTTP_URL = re.compile(
    r"^https?://(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?/\S*$", re.ASCII
)


class BadDelivery(ValueError):
    """The delivery is malformed; the message names the problem (answered 400)."""


class Unauthorized(Exception):
    """The delivery's token or signature does not check out (answered 401)."""


@dataclass(frozen=True)
class Ignored:
    """A well-formed delivery the bridge deliberately does not sync (answered 200)."""

    reason: str


@dataclass(frozen=True)
class Delivery:
    """What the HTTP edge stores: the event plus its dedupe key."""

    dedupe_key: str
    event: IssueEvent
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------- authentication


def check_token(headers: Mapping[str, str], secret: str) -> None:
    """Raise ``Unauthorized`` unless ``X-Gitlab-Token`` equals ``secret`` (constant time)."""
    given = headers.get("X-Gitlab-Token")
    if given is None:
        raise Unauthorized("missing X-Gitlab-Token")
    if not hmac.compare_digest(given.encode("utf-8", "replace"), secret.encode("utf-8")):
        raise Unauthorized("invalid X-Gitlab-Token")


def signing_key(signing_token: str) -> bytes:
    """The HMAC key a ``whsec_...`` signing token encodes."""
    encoded = signing_token.removeprefix("whsec_")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("signing_token must be whsec_ followed by base64") from None


def check_signature(
    headers: Mapping[str, str], body: bytes, signing_token: str, now: float, tolerance: float = 300
) -> None:
    """Verify a Standard Webhooks ``webhook-signature``; raise ``Unauthorized`` if it fails."""
    msg_id = headers.get("webhook-id")
    stamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not msg_id or not stamp or not signatures:
        raise Unauthorized("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        sent_at = int(stamp)
    except ValueError:
        raise Unauthorized("invalid webhook-timestamp") from None
    if abs(now - sent_at) > tolerance:
        raise Unauthorized("webhook-timestamp outside the tolerance")
    digest = hmac.new(
        signing_key(signing_token), f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256
    ).digest()
    expected = base64.b64encode(digest)
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected):
            return
    raise Unauthorized("invalid webhook-signature")


def authenticate(
    headers: Mapping[str, str],
    body: bytes,
    *,
    secret_token: str,
    signing_token: str,
    now: float,
    tolerance: float = 300,
) -> None:
    """Apply the configured checks.

    With a secret token, ``X-Gitlab-Token`` must match. With a signing token, a request that
    carries ``webhook-signature`` must verify; one without it passes only on a matching secret
    token (so a signing token alone makes the signature mandatory).
    """
    if secret_token:
        check_token(headers, secret_token)
    if signing_token and (headers.get("webhook-signature") or not secret_token):
        check_signature(headers, body, signing_token, now, tolerance)


# ---------------------------------------------------------------------------- timestamps

_TIME = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})"
    r"(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?\s*(Z|UTC|[+-]\d{2}:?\d{2})?)?$",
    re.ASCII,
)


def parse_time(value: Any) -> float | None:
    """A GitLab timestamp in any of its formats, as seconds since the epoch (UTC); None for null."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"not a timestamp: {value!r}")
    match = _TIME.match(value.strip())
    if not match:
        raise ValueError(f"not a timestamp: {value!r}")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    micros = int((fraction or "0")[:6].ljust(6, "0"))
    stamp = datetime(
        int(year),
        int(month),
        int(day),
        int(hour or 0),
        int(minute or 0),
        int(second or 0),
        micros,
        tzinfo=UTC,
    )
    offset = 0
    if zone and zone not in ("Z", "UTC"):
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        hours, minutes = int(digits[:2]), int(digits[2:])
        if hours > 23 or minutes > 59:
            raise ValueError(f"not a timestamp: {value!r}")
        offset = sign * (hours * 3600 + minutes * 60)
    return stamp.timestamp() - offset


def format_time(stamp: float | None) -> str | None:
    """Seconds since the epoch as ISO 8601 UTC, for logs and the REST API."""
    if stamp is None:
        return None
    return datetime.fromtimestamp(stamp, UTC).isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------------------- payloads


def dedupe_key(headers: Mapping[str, str], body: bytes) -> str:
    """``Idempotency-Key`` when GitLab sends one, else the digest of the body."""
    key = (headers.get("Idempotency-Key") or "").strip()
    if key:
        return "key:" + key[:200]
    return "sha256:" + hashlib.sha256(body).hexdigest()


def decode_body(body: bytes) -> dict[str, Any]:
    """Strict UTF-8 JSON object, or ``BadDelivery``."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadDelivery(f"body is not valid UTF-8 (byte {exc.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadDelivery(f"body is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    except RecursionError:
        raise BadDelivery("body is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer longer than Python converts
        raise BadDelivery(f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadDelivery(f"body must be a JSON object, not {_json_type(data)}")
    return data


def parse_delivery(
    headers: Mapping[str, str], body: bytes, *, types: tuple[str, ...] = ("Issue", "Incident")
) -> Delivery | Ignored:
    """Classify and parse one webhook delivery."""
    data = decode_body(body)
    event_name = headers.get("X-Gitlab-Event")
    kind = data.get("object_kind")
    if event_name is None and kind is None:
        raise BadDelivery("missing header X-Gitlab-Event and body field object_kind")
    if event_name in NOTE_EVENTS or (event_name is None and kind == "note"):
        return parse_note(data, headers)
    if event_name is not None and event_name not in ISSUE_EVENTS:
        return Ignored(f"event {event_name!r} is not synced")
    if kind not in ("issue", "work_item", None):
        return Ignored(f"object_kind {kind!r} is not synced")
    attrs = data.get("object_attributes")
    work_type = attrs.get("type") if isinstance(attrs, dict) else None
    work_type = work_type if isinstance(work_type, str) and work_type else "Issue"
    if work_type not in types:
        return Ignored(f"work item type {work_type!r} is not synced")
    event = parse_issue(data)
    if event_name == "Confidential Issue Hook" and not event.confidential:
        event = replace(event, confidential=True)
    return Delivery(dedupe_key(headers, body), event)


def parse_note(data: Mapping[str, Any], headers: Mapping[str, str]) -> Delivery | Ignored:
    """A ``Note Hook`` delivery: comments on issues are synced, internal ones never."""
    attrs = data.get("object_attributes")
    if not isinstance(attrs, dict):
        raise BadDelivery("missing object_attributes")
    noteable = attrs.get("noteable_type")
    if noteable != "Issue":
        return Ignored(f"comments on {noteable or 'unknown'} are not synced")
    if (
        attrs.get("internal") is True
        or attrs.get("confidential") is True
        or headers.get("X-Gitlab-Event") == "Confidential Note Hook"
    ):
        return Ignored("internal notes are never copied")
    issue = data.get("issue")
    if not isinstance(issue, dict):
        raise BadDelivery("a comment on an issue must carry the issue object")
    note_id, text, note_url = attrs.get("id"), attrs.get("note"), attrs.get("url")
    if not _is_int(note_id):
        raise BadDelivery(f"object_attributes.id must be an integer, not {_json_type(note_id)}")
    if not isinstance(text, str):
        raise BadDelivery(f"object_attributes.note must be a string, not {_json_type(text)}")
    if not isinstance(note_url, str) or not _HTTP_URL.match(note_url):
        raise BadDelivery("object_attributes.url must be the comment's http(s) URL")
    iid, title = issue.get("iid"), issue.get("title")
    if not _is_int(iid):
        raise BadDelivery(f"issue.iid must be an integer, not {_json_type(iid)}")
    if not isinstance(title, str):
        raise BadDelivery(f"issue.title must be a string, not {_json_type(title)}")
    project = data.get("project") if isinstance(data.get("project"), dict) else {}
    project_id = attrs.get("project_id", issue.get("project_id", project.get("id")))
    if not _is_int(project_id):
        raise BadDelivery("object_attributes.project_id must be an integer")
    url = issue.get("url")
    if not isinstance(url, str) or not _HTTP_URL.match(url):
        url = note_url.split("#")[0]
    user = data.get("user") if isinstance(data.get("user"), dict) else {}
    author = _str_or_none(user.get("username")) or "someone"
    instance = instance_of(url)
    event = IssueEvent(
        instance=instance,
        project_id=project_id,
        iid=iid,
        title=title,
        url=url,
        action="note",
        state="closed" if issue.get("state") == "closed" else "opened",
        updated_at=None,
        project_path=_str_or_none(project.get("path_with_namespace")),
        project_url=_str_or_none(project.get("web_url")) or _project_url(url),
        confidential=issue.get("confidential") is True,
        author=author,
        note=Note(id=note_id, body=text, author=author, url=note_url),
    )
    return Delivery(f"note:{instance}|{project_id}|{note_id}", event)


def parse_issue(data: Mapping[str, Any]) -> IssueEvent:
    """The webhook's issue payload (2013 or current) as an ``IssueEvent``."""
    attrs = data.get("object_attributes")
    if not isinstance(attrs, dict):
        if "object_attributes" not in data:
            raise BadDelivery("missing object_attributes")
        raise BadDelivery(f"object_attributes must be an object, not {_json_type(attrs)}")
    iid = attrs.get("iid")
    if not _is_int(iid):
        raise BadDelivery(f"object_attributes.iid must be an integer, not {_json_type(iid)}")
    title = attrs.get("title")
    if not isinstance(title, str):
        raise BadDelivery(f"object_attributes.title must be a string, not {_json_type(title)}")
    action = attrs.get("action")
    if action not in ACTIONS:
        raise BadDelivery(
            f"object_attributes.action must be one of {', '.join(ACTIONS)}, not {action!r}"
        )
    url = attrs.get("url")
    if not isinstance(url, str) or not _HTTP_URL.match(url):
        raise BadDelivery("object_attributes.url must be the issue's http(s) URL")
    project = data.get("project") if isinstance(data.get("project"), dict) else {}
    project_id = attrs.get("project_id", project.get("id"))
    if not _is_int(project_id):
        raise BadDelivery("object_attributes.project_id must be an integer")
    description = attrs.get("description")
    if description is not None and not isinstance(description, str):
        raise BadDelivery("object_attributes.description must be a string or null")
    state = attrs.get("state")
    if state not in ("opened", "closed"):
        state = "closed" if action == "close" else "opened"
    try:
        updated_at = parse_time(attrs.get("updated_at"))
    except ValueError as exc:
        raise BadDelivery(f"object_attributes.updated_at: {exc}") from None
    due = attrs.get("due_date")
    try:
        due_date = due[:10] if due and parse_time(due) is not None else None
    except (ValueError, TypeError):
        raise BadDelivery(f"object_attributes.due_date: not a date: {due!r}") from None
    user = data.get("user") if isinstance(data.get("user"), dict) else {}
    project_url = project.get("web_url") if isinstance(project.get("web_url"), str) else None
    return IssueEvent(
        instance=instance_of(url),
        project_id=project_id,
        iid=iid,
        title=title,
        url=url,
        action=action,
        state=state,
        updated_at=updated_at,
        description=description or "",
        project_path=_str_or_none(project.get("path_with_namespace")),
        project_url=project_url or _project_url(url),
        labels=_labels(data.get("labels", attrs.get("labels"))),
        assignees=_assignees(data.get("assignees")),
        due_date=due_date,
        confidential=attrs.get("confidential") is True,
        moved_to_id=attrs.get("moved_to_id") if _is_int(attrs.get("moved_to_id")) else None,
        work_item_type=_str_or_none(attrs.get("type")) or "Issue",
        author=_str_or_none(user.get("username")),
    )


def instance_of(url: str) -> str:
    """The GitLab instance an issue URL belongs to (``https://host``).

    Taken from the issue URL rather than ``X-Gitlab-Instance`` so that webhook deliveries and
    REST API answers about one issue always share one key.
    """
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _project_url(issue_url: str) -> str:
    """``https://host/group/project/-/issues/5`` -> ``https://host/group/project``."""
    return re.sub(r"(/-)?/issues/\d+/?$", "", issue_url)


def _labels(value: Any) -> tuple[Label, ...]:
    if not isinstance(value, list):
        return ()
    labels = []
    for item in value:
        if isinstance(item, dict) and isinstance(item.get("title"), str):
            color = item.get("color") if isinstance(item.get("color"), str) else None
            labels.append(Label(item["title"], color))
        elif isinstance(item, str):
            labels.append(Label(item))
    return tuple(labels)


def _assignees(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(
        item["username"]
        for item in value
        if isinstance(item, dict) and isinstance(item.get("username"), str)
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


# ---------------------------------------------------------------------------- REST API


class GitLabUnavailable(Exception):
    """The GitLab REST API could not be reached or refused the request; says why."""


def issue_from_rest(data: Mapping[str, Any], project: Mapping[str, Any]) -> IssueEvent:
    """An issue as ``GET /projects/:id/issues`` returns it, as the same ``IssueEvent`` a
    webhook gives: labels may be names or objects, the link is ``web_url``, ``assignees`` is
    always present, the type is ``issue_type`` in lower case."""
    url = data["web_url"]
    raw_labels = data.get("labels") or []
    labels = tuple(
        Label(item["name"], item.get("color")) if isinstance(item, dict) else Label(str(item))
        for item in raw_labels
        if isinstance(item, dict | str)
    )
    work_type = str(data.get("issue_type") or "issue").replace("_", " ").title().replace(" ", "")
    state = "closed" if data.get("state") == "closed" else "opened"
    return IssueEvent(
        instance=instance_of(url),
        project_id=int(data["project_id"]),
        iid=int(data["iid"]),
        title=str(data.get("title") or ""),
        url=url,
        action="close" if state == "closed" else "update",
        state=state,
        updated_at=parse_time(data.get("updated_at")),
        description=str(data.get("description") or ""),
        project_path=project.get("path_with_namespace"),
        project_url=project.get("web_url") or _project_url(url),
        labels=labels,
        assignees=tuple(a["username"] for a in data.get("assignees") or () if isinstance(a, dict)),
        due_date=(data.get("due_date") or None),
        confidential=data.get("confidential") is True,
        moved_to_id=data.get("moved_to_id") if _is_int(data.get("moved_to_id")) else None,
        work_item_type=work_type,
        author=(data.get("author") or {}).get("username"),
    )


class GitLabAPI:
    """The few REST calls the bridge makes, through python-gitlab."""

    def __init__(self, url: str, private_token: str, *, timeout: float = 10.0) -> None:
        import gitlab as python_gitlab  # the python-gitlab package

        self._errors = (python_gitlab.exceptions.GitlabError, OSError)
        self.url = url
        # retries are ours (bounded by attempts and time): python-gitlab's own back off for
        # minutes on a GitLab that does not answer
        self.gl = python_gitlab.Gitlab(
            url, private_token=private_token, timeout=timeout, retry_transient_errors=False
        )

    def _call(self, what: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        def transient(exc: Exception) -> bool:
            code = getattr(exc, "response_code", None)
            return isinstance(exc, OSError) or (code is not None and (code >= 500 or code == 429))

        try:
            for attempt in stamina.retry_context(
                on=transient, attempts=3, timeout=20, wait_initial=0.3, wait_max=3
            ):
                with attempt:
                    return func(*args, **kwargs)
        except self._errors as exc:
            code = getattr(exc, "response_code", None)
            detail = f"HTTP {code}" if code else type(exc).__name__
            if code == 401:
                detail += " (the private token is missing, wrong or expired)"
            elif code == 404:
                detail += " (no such project, or the token cannot see it)"
            raise GitLabUnavailable(f"GitLab {what}: {detail}") from None

    def whoami(self) -> str:
        """The username the token belongs to (checks the token)."""
        self._call("authentication", self.gl.auth)
        return str(self.gl.user.username) if self.gl.user else "?"

    def project(self, ref: str | int) -> dict[str, Any]:
        """A project by id or ``group/path``."""
        project = self._call(f"project {ref}", self.gl.projects.get, ref)
        return dict(project.attributes)

    def issues(
        self,
        project: Mapping[str, Any],
        *,
        state: str = "opened",
        updated_after: float | None = None,
    ) -> Iterator[IssueEvent]:
        """Every issue of the project (all pages), oldest change first, as events."""
        params: dict[str, Any] = {
            "iterator": True,
            "per_page": 50,
            "order_by": "updated_at",
            "sort": "asc",
            "with_labels_details": True,
        }
        if state != "all":
            params["state"] = state
        if updated_after is not None:
            params["updated_after"] = format_time(updated_after)
        manager = self._call(
            f"project {project['id']}", self.gl.projects.get, project["id"], lazy=True
        ).issues
        pages = self._call(
            f"issues of {project.get('path_with_namespace')}", manager.list, **params
        )
        iterator = iter(pages)
        while True:
            item = self._call("issues (next page)", next, iterator, None)
            if item is None:
                return
            yield issue_from_rest(item.attributes, project)
