"""GitLab's webhook: headers, token and signature checks, payload shapes of every release,
timestamps; what GitLab sends, verified and parsed into the bridge's own events.

``parse_delivery`` turns one webhook request (headers + raw body) into either an ``IssueEvent``
to store, an ``Ignored`` answer, or raises ``BadDelivery`` naming what is wrong. Every payload
shape GitLab has sent since issue hooks appeared (6.4, December 2013) is accepted; the corpus in
``tests/fixtures/real/`` holds one of each. What older releases leave out is filled in:

- no ``action`` (6.4 to 7.3, and the *Test* button of some releases): ``close`` for a closed
  issue, else ``open`` (the worker's rules are state-based: an ``open`` for an issue that has a
  card updates it);
- no ``url``: ``<project web_url>/issues/<iid>``; with no project either (6.4 to 7.3) the issue
  has no link (``url`` is then ``NO_LINK`` + the issue key, which is not a link and never
  matches a card's description) and its instance is ``X-Gitlab-Instance``, the configured
  GitLab URL, or ``UNKNOWN_INSTANCE``;
- a timestamp or due date that does not parse is treated as absent, with a warning.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import orjson

from events import IssueEvent, Label, MergeRequestEvent, Note

log = logging.getLogger("gitlab2trello.gitlab")

ISSUE_EVENTS = ("Issue Hook", "Confidential Issue Hook")
NOTE_EVENTS = ("Note Hook", "Confidential Note Hook")
ACTIONS = ("open", "update", "close", "reopen")
# the instance of an issue whose payload names none (no url, no project, no X-Gitlab-Instance)
UNKNOWN_INSTANCE = "gitlab"
# ``url`` of an issue whose payload gives no way to link to it: followed by the issue key
NO_LINK = "urn:gitlab2trello:no-link:"
_HTTP_URL = re.compile(
    r"^https?://(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?/\S*$", re.ASCII
)
# the same, with the scheme and authority (what urlsplit calls scheme://netloc) as group 1
_HTTP_ORIGIN = re.compile(
    r"^(https?://(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?)/\S*$", re.ASCII
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
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadDelivery(_json_problem(body, exc)) from None
    if not isinstance(data, dict):
        raise BadDelivery(f"body must be a JSON object, not {_json_type(data)}")
    return data


def _json_problem(body: bytes, exc: orjson.JSONDecodeError) -> str:
    """What is wrong with a body that does not decode (the error path only)."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"body is not valid UTF-8 (byte {bad.start})"
    if "depth" in exc.msg or "ecursion" in exc.msg:
        return "body is not valid JSON: nested too deeply"
    return f"body is not valid JSON: {exc.msg} at line {exc.lineno}"


def parse_delivery(
    headers: Mapping[str, str],
    body: bytes,
    *,
    types: tuple[str, ...] = ("Issue", "Incident"),
    instance: str | None = None,
    merge_requests: bool = False,
) -> Delivery | Ignored:
    """Classify and parse one webhook delivery.

    ``instance`` is the GitLab base URL to assume when neither the payload nor the headers name
    one (the oldest payloads carry no URL at all).
    """
    data = decode_body(body)
    event_name = headers.get("X-Gitlab-Event")
    kind = data.get("object_kind")
    if event_name is None and kind is None:
        if "object_attributes" in data:
            raise BadDelivery("missing header X-Gitlab-Event and body field object_kind")
        # a push of GitLab before 7.11 (no header, no object_kind): not an issue event
        return Ignored("deliveries without X-Gitlab-Event or object_kind are not synced")
    if event_name in NOTE_EVENTS or (event_name is None and kind == "note"):
        return parse_note(data, headers)
    if event_name == "Merge Request Hook" or (event_name is None and kind == "merge_request"):
        if not merge_requests:
            return Ignored(
                "event 'Merge Request Hook' is not synced ([gitlab] merge_requests = false)"
            )
        event = parse_merge_request(data)
        target, default = _target_and_default_branch(data)
        if target is not None and default is not None and target != default:
            # GitLab closes issues only when a merge request targets the default branch
            return Ignored(
                f"merge request !{event.iid} targets {target!r}, not the default branch"
                f" {default!r}: it closes no issue"
            )
        return Delivery(dedupe_key(headers, body), event)
    if event_name is not None and event_name not in ISSUE_EVENTS:
        return Ignored(f"event {event_name!r} is not synced")
    if kind not in ("issue", "work_item", None):
        return Ignored(f"object_kind {kind!r} is not synced")
    attrs = data.get("object_attributes")
    work_type = attrs.get("type") if isinstance(attrs, dict) else None
    work_type = work_type if isinstance(work_type, str) and work_type else "Issue"
    if work_type not in types:
        return Ignored(f"work item type {work_type!r} is not synced")
    event = parse_issue(data, default_instance=_instance_hint(headers, instance))
    confidential_hook = (
        event_name == "Confidential Issue Hook" or data.get("event_type") == "confidential_issue"
    )
    if confidential_hook and not event.confidential:
        event = replace(event, confidential=True)
    return Delivery(dedupe_key(headers, body), event)


def parse_merge_request(data: Mapping[str, Any]) -> MergeRequestEvent:
    """A Merge Request Hook's body as a ``MergeRequestEvent``."""
    attrs = data.get("object_attributes")
    if not isinstance(attrs, dict):
        raise BadDelivery("object_attributes must be an object")
    iid, title, url = attrs.get("iid"), attrs.get("title"), attrs.get("url")
    if not _is_int(iid):
        raise BadDelivery(f"object_attributes.iid must be an integer, not {_json_type(iid)}")
    if not isinstance(title, str):
        raise BadDelivery("object_attributes.title must be a string")
    if not isinstance(url, str) or not _HTTP_URL.match(url):
        raise BadDelivery("object_attributes.url must be an http(s) URL")
    project = data.get("project") if isinstance(data.get("project"), dict) else {}
    project_id = attrs.get("target_project_id", project.get("id"))
    if not _is_int(project_id):
        raise BadDelivery("the merge request's project id must be an integer")
    user = data.get("user") if isinstance(data.get("user"), dict) else {}
    return MergeRequestEvent(
        instance=instance_of(url),
        project_id=int(project_id),
        iid=int(iid),
        title=title,
        url=url,
        state=str(attrs.get("state") or "opened"),
        action=str(attrs.get("action") or "update"),
        updated_at=parse_time(attrs.get("updated_at")),
        author=_str_or_none(user.get("username")),
    )


def _target_and_default_branch(data: Mapping[str, Any]) -> tuple[str | None, str | None]:
    attrs = data.get("object_attributes")
    project = data.get("project")  # the project the hook belongs to: the target's
    target = attrs.get("target_branch") if isinstance(attrs, dict) else None
    default = project.get("default_branch") if isinstance(project, dict) else None
    return (
        target if isinstance(target, str) and target else None,
        default if isinstance(default, str) and default else None,
    )


def parse_note(data: Mapping[str, Any], headers: Mapping[str, str]) -> Delivery | Ignored:
    """A ``Note Hook`` delivery: comments on issues are synced, internal ones never.

    ``Confidential Note Hook`` (or ``event_type: confidential_note``) is sent for internal notes
    and for notes on confidential issues: the event is confidential whatever the embedded issue
    says, and the note counts as internal unless its own attributes say it is not (payloads
    before internal notes existed, and GitLab.com's of 2023, carry no ``internal`` field).
    """
    attrs = data.get("object_attributes")
    if not isinstance(attrs, dict):
        raise BadDelivery("missing object_attributes")
    noteable = attrs.get("noteable_type")
    if noteable != "Issue":
        return Ignored(f"comments on {noteable or 'unknown'} are not synced")
    confidential_hook = (
        headers.get("X-Gitlab-Event") == "Confidential Note Hook"
        or data.get("event_type") == "confidential_note"
    )
    said_internal = [attrs[name] for name in ("internal", "confidential") if name in attrs]
    if any(value is True for value in said_internal) or (
        confidential_hook and not any(value is False for value in said_internal)
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
    if not _is_http_url(url):
        url = note_url.split("#")[0] if _is_http_url(note_url) else _built_url(data, iid)
    if not _is_http_url(note_url):
        if url is None:
            raise BadDelivery("object_attributes.url must be the comment's http(s) URL")
        note_url = f"{url}#note_{note_id}"
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
        project_url=_str_or_none(project.get("web_url")) or project_url_of(url),
        confidential=issue.get("confidential") is True or confidential_hook,
        author=author,
        note=Note(id=note_id, body=text, author=author, url=note_url),
    )
    return Delivery(f"note:{instance}|{project_id}|{note_id}", event)


def parse_issue(data: Mapping[str, Any], *, default_instance: str | None = None) -> IssueEvent:
    """The webhook's issue payload, of any GitLab release since 6.4, as an ``IssueEvent``.

    ``default_instance`` names the instance of an issue whose payload has no URL at all.
    """
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
    project = data.get("project") if isinstance(data.get("project"), dict) else {}
    project_id = attrs.get("project_id", project.get("id"))
    if not _is_int(project_id):
        raise BadDelivery("object_attributes.project_id must be an integer")
    state = _state(attrs)
    action = attrs.get("action")
    if action is None:  # GitLab before 7.4, and the Test button of some releases
        state = state or {1: "opened", 2: "closed"}.get(attrs.get("state_id"), "opened")
        action = "close" if state == "closed" else "open"
    if action not in ACTIONS:
        raise BadDelivery(
            f"object_attributes.action must be one of {', '.join(ACTIONS)}, not {action!r}"
        )
    if state is None:
        state = "closed" if action == "close" else "opened"
    url = attrs.get("url")
    if url is not None and not _is_http_url(url):
        raise BadDelivery("object_attributes.url must be the issue's http(s) URL")
    project_url = _project_web_url(data)
    if url is None:
        url = _built_url(data, iid)
    if url is None:
        instance = default_instance or UNKNOWN_INSTANCE
        url = f"{NO_LINK}{instance}|{project_id}|{iid}"
    else:
        instance = instance_of(url)
        project_url = project_url or project_url_of(url)
    description = attrs.get("description")
    if description is not None and not isinstance(description, str):
        raise BadDelivery("object_attributes.description must be a string or null")
    user = data.get("user") if isinstance(data.get("user"), dict) else {}
    return IssueEvent(
        instance=instance,
        project_id=project_id,
        iid=iid,
        title=title,
        url=url,
        action=action,
        state=state,
        updated_at=_time_or_none(attrs.get("updated_at"), "object_attributes.updated_at", url),
        description=description or "",
        project_path=_str_or_none(project.get("path_with_namespace")),
        project_url=project_url,
        labels=_labels(data.get("labels", attrs.get("labels"))),
        assignees=_assignees(data),
        due_date=_due_date(attrs.get("due_date"), url),
        confidential=attrs.get("confidential") is True,
        moved_to_id=attrs.get("moved_to_id") if _is_int(attrs.get("moved_to_id")) else None,
        work_item_type=_str_or_none(attrs.get("type")) or "Issue",
        author=_str_or_none(user.get("username")),
    )


def _state(attrs: Mapping[str, Any]) -> str | None:
    """``opened`` or ``closed`` from ``state`` (GitLab 6 and 7 also say ``reopened``)."""
    state = attrs.get("state")
    if state in ("opened", "closed"):
        return state
    return "opened" if state == "reopened" else None


def _time_or_none(value: Any, field: str, where: str) -> float | None:
    """A timestamp, or None (with a warning) when it is not one GitLab writes."""
    try:
        return parse_time(value)
    except (ValueError, OverflowError):
        log.warning("%s of %s is not a timestamp (%.60r): treated as absent", field, where, value)
        return None


def _due_date(value: Any, where: str) -> str | None:
    """``YYYY-MM-DD``, from a date or a timestamp; None (with a warning) when it is neither."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and _time_or_none(value, "due_date", where) is not None:
        return value.strip()[:10]
    if not isinstance(value, str):
        log.warning("due_date of %s is not a date (%.60r): treated as absent", where, value)
    return None


def _project_web_url(data: Mapping[str, Any]) -> str | None:
    """The project's web URL: ``project.web_url`` (8.5+) or ``repository.homepage`` (8.0+)."""
    for holder, key in (("project", "web_url"), ("repository", "homepage")):
        section = data.get(holder)
        value = section.get(key) if isinstance(section, dict) else None
        if _is_http_url(value + "/" if isinstance(value, str) else None):
            return value.rstrip("/")
    return None


def _built_url(data: Mapping[str, Any], iid: int) -> str | None:
    """An issue URL from the project's web URL, for payloads that carry none.

    ``/issues/<iid>``, the form of the releases that leave ``url`` out; later releases redirect
    it to ``/-/issues/<iid>``. The instance (and so the issue key) is the same either way.
    """
    project_url = _project_web_url(data)
    return f"{project_url}/issues/{iid}" if project_url else None


def _instance_hint(headers: Mapping[str, str], configured: str | None) -> str | None:
    """The instance to assume for a payload with no URL: X-Gitlab-Instance, else ``configured``."""
    for candidate in (headers.get("X-Gitlab-Instance"), configured):
        if isinstance(candidate, str) and _is_http_url(candidate.rstrip("/") + "/"):
            return instance_of(candidate)
    return None


def _is_http_url(value: Any) -> bool:
    return isinstance(value, str) and _HTTP_URL.match(value) is not None


def instance_of(url: str) -> str:
    """The GitLab instance an issue URL belongs to (``https://host``).

    Taken from the issue URL rather than ``X-Gitlab-Instance`` so that webhook deliveries and
    REST API answers about one issue always share one key.
    """
    match = _HTTP_ORIGIN.match(url)  # every URL GitLab sends: no urlsplit needed
    if match is not None:
        return match.group(1).lower()
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def project_url_of(issue_url: str) -> str:
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


def _assignees(data: Mapping[str, Any]) -> tuple[str, ...]:
    """Usernames from ``assignees`` (9.0+), else from ``assignee`` (8.x; deprecated since).

    ``assignees`` wins when both are present and disagree (``assignee`` is only the first one).
    ``assignee_id``/``assignee_ids`` alone name no username: no members then.
    """
    value = data.get("assignees")
    if not isinstance(value, list):
        single = data.get("assignee")
        value = [single] if isinstance(single, dict) else []
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
