"""An emulator of the GitLab REST API (v4) the bridge reads and writes, and of the webhooks
GitLab sends when issues and merge requests change.

Tests give the bridge ``GitLabEmulator().url`` as the GitLab instance URL (the API lives under
``/api/v4``), and seed projects and issues through the Python methods. It serves, over real
HTTP on loopback:

- reads: ``GET /user`` (the token's user), ``GET /personal_access_tokens/self``, ``GET /users``
  (``?username=``), ``GET /users/:id``, ``GET /version``, ``GET /projects/:id`` (numeric id or
  the URL-encoded ``path_with_namespace``), ``GET /projects/:id/issues`` with GitLab's filters
  (``search`` with ``in=title,description``), ordering and offset pagination (``X-Page``,
  ``X-Per-Page``, ``X-Next-Page``, ``X-Prev-Page``, ``X-Total``, ``X-Total-Pages`` and a
  ``Link`` header with ``prev``/``next``/``first``/``last``), ``GET /projects/:id/issues/:iid``,
  ``GET /projects/:id/issues/:iid/notes`` (system notes included) and ``.../notes/:note_id``;
- writes: ``POST /projects/:id/issues``, ``PUT /projects/:id/issues/:iid`` (``state_event``,
  ``labels``, ``add_labels``, ``remove_labels``, ``assignee_ids``, ``due_date``, ``title``,
  ``description``, ``confidential``...), ``DELETE /projects/:id/issues/:iid`` and
  ``POST /projects/:id/issues/:iid/notes``, with JSON or form-encoded bodies. Edits add
  GitLab's system notes; comments run a subset of quick actions (``/close``, ``/label``...);
- merge requests: ``GET /projects/:id/merge_requests`` (``state``, branch and time filters),
  ``POST /projects/:id/merge_requests``, ``GET``/``PUT /projects/:id/merge_requests/:iid``
  (``title``, ``description``, ``target_branch``, ``state_event``),
  ``PUT .../merge_requests/:iid/merge`` (merging closes the issues it closes, each with its
  ``close`` webhook, as the merging user) and ``GET .../merge_requests/:iid/closes_issues``:
  the issues GitLab's default closing pattern finds in the title and description (``Closes
  #12``, ``fixes #3, #4 and group/project#7``, links to this instance's issues), worked out
  while the request is open and kept once it is closed or merged, whatever the issues' state;
  nothing unless it targets ``main``.

Authentication is ``PRIVATE-TOKEN``, ``Authorization: Bearer`` or the ``private_token`` /
``access_token`` query parameter. Each token belongs to a user and has scopes: writes need
``api`` (``read_api`` gets GitLab's 403 ``insufficient_scope``); revoked and expired tokens get
its 401 ``invalid_token``. Errors are GitLab's JSON bodies. Injectable faults answer an error
status or reset the connection.

Webhooks: project hooks (``add_hook``) receive every change made through the API or by a person
(``as_user(name).close_issue(...)`` and friends) as GitLab sends it: one POST per matching hook,
from a background thread, in order, with GitLab's headers (``X-Gitlab-Event``, ``X-Gitlab-Token``,
``Idempotency-Key``, ``X-Gitlab-Webhook-UUID``, ``X-Gitlab-Event-UUID``, ``X-Gitlab-Instance``,
``User-Agent``, and Standard Webhooks signing when the hook has a signing token) and payloads
shaped like tests/fixtures/01-issue-open.json, 07-note-on-issue.json and
08-merge-request-open.json (hooks with ``merge_requests_events``). Like GitLab it never
retries: one attempt, a 10 s timeout; optional auto-disabling after consecutive failures.
Seeding (``add_issue``, ``update_issue``) stays silent, as if those deliveries were lost.

Control endpoints under ``/_emulator/`` (unauthenticated, unrecorded, JSON) let another process
act as a person, add hooks, users and tokens, and read calls and deliveries.

``python -m tests.gitlab_emulator --port N --issues 150 [--hook URL]`` runs one with a seeded
project and prints a JSON line. Standard library only.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import http.client
import ipaddress
import json
import math
import random
import re
import secrets
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from http import HTTPStatus
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from tests import emulator_http
from tests.emulator_http import ApiError

DEFAULT_TOKEN = "glpat-emulator-token"
DEFAULT_USERNAME, DEFAULT_USER_NAME = "bridge", "Trello Bridge"
DEFAULT_SCOPES = ("api",)
API_PREFIX = "/api/v4"
CONTROL_PREFIX = "/_emulator"
VERSION = {
    "version": "19.1.0-ee",
    "revision": "6f1c2e9a4b7",
    "kas": {"enabled": False, "externalUrl": None, "externalK8sProxyUrl": None, "version": None},
    "enterprise": True,
}
DEFAULT_PER_PAGE, MAX_PER_PAGE = 20, 100
# Above this many matches GitLab stops counting: no X-Total, X-Total-Pages or rel="last".
COUNT_LIMIT = 10_000
ISSUE_TYPES = {"issue": "ISSUE", "incident": "INCIDENT", "test_case": "TEST_CASE", "task": "TASK"}
# The work item type a webhook names in object_attributes.type.
HOOK_TYPES = {"issue": "Issue", "incident": "Incident", "test_case": "Test Case", "task": "Task"}
ISSUE_STATES = ("opened", "closed")
LIST_STATES = ("opened", "closed", "all")
ORDER_BY = ("created_at", "updated_at", "title")
NOTE_ORDER_BY = ("created_at", "updated_at")
SORTS = ("asc", "desc")
SEARCH_FIELDS = ("title", "description")
LABEL_DEFAULT_COLOR = "#6699cc"
FAULT_KINDS = frozenset({"status", "reset", "apply_then_reset"})
UNAUTHORIZED = {"message": "401 Unauthorized"}
PROJECT_NOT_FOUND = {"message": "404 Project Not Found"}
ISSUE_NOT_FOUND = {"message": "404 Not found"}
NOTE_NOT_FOUND = {"message": "404 Note Not Found"}
USER_NOT_FOUND = {"message": "404 User Not Found"}
ROUTE_NOT_FOUND = {"error": "404 Not Found"}
KEYSET_UNAVAILABLE = {"error": "Keyset pagination is not yet available for this type of request"}
# What lib/api/api_guard.rb answers, as rack-oauth2 renders it.
INSUFFICIENT_SCOPE = "The request requires higher privileges than provided by the access token."
TOKEN_REVOKED = "Token was revoked. You have to re-authorize from the user."
TOKEN_EXPIRED = "Token is expired. You can either do re-authorization or token refresh."
OAUTH_REALM = "Protected by OAuth 2.0"
# Scopes that may read the API; user-level reads also take read_user.
READ_SCOPES = ("api", "read_api")
USER_READ_SCOPES = ("api", "read_api", "read_user")
WRITE_SCOPES = ("api",)
# PUT /projects/:id/issues/:iid wants at least one of these (API::Helpers::IssuesHelpers).
UPDATE_PARAMS = (
    "assignee_id", "assignee_ids", "confidential", "created_at", "description",
    "discussion_locked", "due_date", "labels", "add_labels", "remove_labels", "milestone_id",
    "state_event", "title", "issue_type",
)  # fmt: skip
TITLE_MAX, DESCRIPTION_MAX = 255, 1_048_576
POSITION_GAP = 513  # RelativePositioning's gap between issues placed one after another
# Webhooks.
ISSUE_HOOK, CONFIDENTIAL_ISSUE_HOOK = "Issue Hook", "Confidential Issue Hook"
NOTE_HOOK, CONFIDENTIAL_NOTE_HOOK = "Note Hook", "Confidential Note Hook"
HOOK_TIMEOUT = 10.0
USER_AGENT = f"GitLab/{VERSION['version']}"
HOOK_TRIGGERS = (
    "issues_events", "confidential_issues_events", "note_events", "confidential_note_events",
    "merge_requests_events",
)  # fmt: skip
# Auto-disabling: the 4th consecutive failure disables a hook for a minute, doubling to a day;
# the 40th for good.
HOOK_FAILURES_TO_DISABLE, HOOK_FAILURES_FOR_GOOD, HOOK_MAX_BACKOFF = 4, 40, 86_400.0
PERSON_ACTS = (
    "open_issue", "close_issue", "reopen_issue", "edit_issue", "comment", "delete_issue",
    "move_issue", "open_merge_request", "close_merge_request", "reopen_merge_request",
    "edit_merge_request", "merge",
)  # fmt: skip
# Merge requests.
MERGE_REQUEST_HOOK = "Merge Request Hook"
MR_LIST_STATES = ("opened", "closed", "locked", "merged", "all")
MR_STATE_IDS = {"opened": 1, "closed": 2, "merged": 3, "locked": 4}
# The order_by values GitLab accepts; those the emulator does not model sort as created_at.
MR_ORDER_BY = (
    "created_at", "label_priority", "milestone_due", "popularity", "priority", "title",
    "updated_at", "merged_at",
)  # fmt: skip
MR_NOT_FOUND = {"message": "404 Merge Request Not Found"}
DEFAULT_BRANCH = "main"  # every project's default branch: only merges into it close issues
METHOD_NOT_ALLOWED = {"message": "405 Method Not Allowed"}
# PUT /projects/:id/merge_requests/:iid wants at least one of these (API::MergeRequests).
MR_UPDATE_PARAMS = (
    "assignee_id", "assignee_ids", "reviewer_ids", "description", "labels", "add_labels",
    "remove_labels", "milestone_id", "milestone", "remove_source_branch", "allow_collaboration",
    "allow_maintainer_to_push", "squash", "target_branch", "title", "state_event",
    "discussion_locked", "merge_after",
)  # fmt: skip
_MR_PERSON_FIELDS = frozenset({"title", "description", "target_branch"})
# Gitlab::Regex.merge_request_draft: a title starting so marks a draft.
_DRAFT = re.compile(r"\A(?:\[draft\]|\(draft\)|draft:)", re.IGNORECASE)
# Grape's boolean coercion.
_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})
_JSON = "application/json"
_READ_METHODS = frozenset({"GET", "HEAD"})
_UPDATABLE = frozenset(
    {
        "title", "description", "state", "labels", "assignees", "due_date", "confidential",
        "issue_type", "updated_at", "user_notes_count", "moved_to_id",
    }
)  # fmt: skip
_PERSON_FIELDS = frozenset(
    {
        "title", "description", "labels", "add_labels", "remove_labels", "assignees", "due_date",
        "confidential", "issue_type",
    }
)  # fmt: skip

# One dispatch table: (method, path after /api/v4 with {} for one raw path segment, handler).
ROUTES = [
    ("GET", "/user", "_get_user"),
    ("GET", "/personal_access_tokens/self", "_get_token_self"),
    ("GET", "/users", "_list_users"),
    ("GET", "/users/{}", "_get_user_by_id"),
    ("GET", "/version", "_get_version"),
    ("GET", "/projects/{}", "_get_project"),
    ("GET", "/projects/{}/issues", "_list_issues"),
    ("POST", "/projects/{}/issues", "_create_issue"),
    ("GET", "/projects/{}/issues/{}", "_get_issue"),
    ("PUT", "/projects/{}/issues/{}", "_update_issue"),
    ("DELETE", "/projects/{}/issues/{}", "_delete_issue"),
    ("GET", "/projects/{}/issues/{}/notes", "_list_notes"),
    ("POST", "/projects/{}/issues/{}/notes", "_create_note"),
    ("GET", "/projects/{}/issues/{}/notes/{}", "_get_note"),
    ("GET", "/projects/{}/merge_requests", "_list_merge_requests"),
    ("POST", "/projects/{}/merge_requests", "_create_merge_request"),
    ("GET", "/projects/{}/merge_requests/{}", "_get_merge_request"),
    ("PUT", "/projects/{}/merge_requests/{}", "_update_merge_request"),
    ("PUT", "/projects/{}/merge_requests/{}/merge", "_merge_merge_request"),
    ("GET", "/projects/{}/merge_requests/{}/closes_issues", "_list_closes_issues"),
]
_COMPILED_ROUTES = emulator_http.compile_routes(ROUTES)
# Handlers a read_user token may call.
_USER_ROUTES = frozenset(
    {"_get_user", "_get_token_self", "_list_users", "_get_user_by_id", "_get_version"}
)


class Call(NamedTuple):
    """One request as received: path without the query (as sent, still URL-encoded), the
    query as a dict (last value wins), and the status answered (0 for a reset connection)."""

    method: str
    path: str
    query: dict[str, str]
    status: int


class Write(NamedTuple):
    """One API request that is not a read: the parameters GitLab reads (query and body merged;
    ``name[]`` keys gathered into lists) and the status answered (0 for a reset connection)."""

    method: str
    path: str
    params: dict[str, Any]
    status: int


class HookDelivery(NamedTuple):
    """One webhook delivery attempt: the ``X-Gitlab-Event`` header, the payload's action
    (``open``, ``update``, ``close``, ``reopen``, ``merge`` for a merge request; ``create`` for
    a note) and the status answered, 0 when nothing answered in time."""

    event: str
    action: str | None
    status: int


@dataclass
class HookRequest:
    """One event on its way to one hook, and, once tried, how that went. ``headers`` are those
    sent (set at send time); ``dropped`` means it was never sent (the hook was disabled or
    removed). ``Idempotency-Key`` stays the same on a resend; ``X-Gitlab-Webhook-UUID`` does
    not."""

    hook_id: int
    url: str
    event: str
    action: str | None
    body: bytes
    idempotency_key: str
    event_uuid: str
    headers: dict[str, str] = field(default_factory=dict)
    status: int | None = None
    error: str | None = None
    dropped: bool = False
    sent_at: float | None = None
    seconds: float | None = None

    @property
    def payload(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class _Fault:
    kind: str
    status: int
    remaining: int
    retry_after: int
    method: str | None = None


@dataclass
class _Request:
    method: str
    path: str
    pairs: list[tuple[str, str]]
    headers: Any
    body: bytes = b""
    token: dict[str, Any] | None = None
    form: dict[str, Any] | None = None

    @property
    def params(self) -> dict[str, str]:
        return dict(self.pairs)

    @property
    def host(self) -> str:
        return str(self.headers.get("Host") or "")

    @property
    def actor(self) -> str:
        assert self.token is not None
        return self.token["user"]

    def inputs(self) -> dict[str, Any]:
        """Query and body parameters merged as Grape reads them (the body wins); JSON or
        form-encoded bodies; ``name[]`` keys gathered into lists. Raises 400 on a bad body."""
        if self.form is None:
            merged = _gather(self.pairs)
            merged.update(_body_params(self.headers, self.body))
            self.form = merged
        return self.form


@dataclass
class _Reply(emulator_http.Reply):
    content_type: str = _JSON


class _AuthError(ApiError):
    """An authentication or scope refusal, with the headers GitLab adds to it."""

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
        super().__init__(status, body)
        self.headers = headers


class _Handler(emulator_http.EmulatorHandler):
    server_version = "nginx"
    do_HEAD = emulator_http.EmulatorHandler.dispatch

    def extra_headers(self) -> dict[str, str]:
        return {"X-Request-Id": secrets.token_hex(13).upper()}


def _json_reply(status: int, data: Any, headers: dict[str, str] | None = None) -> _Reply:
    return _Reply(status, json.dumps(data).encode(), headers=dict(headers or {}))


def _error_reply(exc: ApiError) -> _Reply:
    reply = emulator_http.error_reply(exc, _Reply)
    if isinstance(exc, _AuthError):
        reply.headers.update(exc.headers)
    return reply


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def sign_webhook(signing_token: str, webhook_id: str, timestamp: int | str, body: bytes) -> str:
    """Standard Webhooks' ``webhook-signature`` (GitLab 19.0+): ``v1,`` and the base64
    HMAC-SHA256 of ``"{webhook-id}.{webhook-timestamp}.{body}"``, keyed with the bytes the
    ``whsec_`` signing token encodes."""
    key = base64.b64decode(signing_token.removeprefix("whsec_"), validate=True)
    message = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, message, hashlib.sha256).digest()).decode()


def hook_json(payload: Any) -> bytes:
    """A payload as GitLab encodes it: compact JSON, UTF-8, with ``<``, ``>``, ``&``, U+2028
    and U+2029 escaped (ActiveSupport's ``escape_html_entities_in_json``)."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    for char, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escaped)
    return text.encode()


# ------------------------------------------------------------------------- values


def _now() -> datetime:
    return _ms(datetime.now(UTC))


def _ms(moment: datetime) -> datetime:
    """UTC, truncated to the millisecond GitLab shows."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_time(value: Any) -> datetime:
    """ISO 8601 in its common spellings (``Z``, offsets, a space for ``T``, a trailing ``UTC``,
    a bare date); naive times are UTC. Raises ValueError."""
    if isinstance(value, datetime):
        return _ms(value)
    text = str(value).strip()
    if text.endswith(" UTC"):
        text = text[:-4] + "+00:00"
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    text = re.sub(r"\s+([+-]\d{2}:?\d{2})$", r"\1", text)
    return _ms(datetime.fromisoformat(text))


def _due(value: Any) -> str | None:
    if value in (None, ""):
        return None
    return date.fromisoformat(str(value)).isoformat()


def _label_names(value: Any) -> list[str]:
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else value
    return list(dict.fromkeys(str(item).strip() for item in items if str(item).strip()))


def _text_color(color: str) -> str:
    """Dark text on light label colours, white on dark ones."""
    try:
        channels = [int(color.lstrip("#")[i : i + 2], 16) / 255 for i in (0, 2, 4)]
    except ValueError:
        return "#FFFFFF"
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    luminance = 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    return "#1F1E24" if luminance > 0.179 else "#FFFFFF"


def _param_int(params: dict[str, str], name: str, default: int) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ApiError(400, {"error": f"{name} is invalid"}) from None


def _param_bool(params: dict[str, str], name: str) -> bool | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise ApiError(400, {"error": f"{name} is invalid"})


def _param_choice(params: dict[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    value = params.get(name) or default
    if value not in choices:
        raise ApiError(400, {"error": f"{name} does not have a valid value"})
    return value


def _param_time(params: dict[str, str], name: str) -> datetime | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    try:
        return _parse_time(raw)
    except ValueError:
        raise ApiError(400, {"error": f"{name} is invalid"}) from None


# ------------------------------------------------------------------------- request bodies


def _gather(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Form pairs as Rack reads them: ``name[]`` keys gather into a list, others keep the last."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key.endswith("[]"):
            listed = out.setdefault(key[:-2], [])
            if isinstance(listed, list):
                listed.append(value)
            else:
                out[key[:-2]] = [value]
        else:
            out[key] = value
    return out


def _body_params(headers: Any, body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    content_type = str(headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if content_type == _JSON or content_type.endswith("+json"):
        try:
            data = json.loads(body)
        except ValueError:
            raise ApiError(
                400, {"message": "400 Bad request - The body is not valid JSON"}
            ) from None
        if not isinstance(data, dict):
            raise ApiError(400, {"message": "400 Bad request - The body must be a JSON object"})
        return data
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, {"message": "400 Bad request - Invalid byte sequence"}) from None
    return _gather(parse_qsl(text, keep_blank_values=True))


def _invalid(name: str) -> ApiError:
    return ApiError(400, {"error": f"{name} is invalid"})


def _value_str(value: Any, name: str) -> str | None:
    """Grape's String: numbers become text; lists and objects are invalid; null stays None."""
    if value is None:
        return None
    if isinstance(value, bool | list | dict):
        raise _invalid(name)
    return str(value)


def _value_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    raise _invalid(name)


def _value_ints(value: Any, name: str) -> list[int]:
    """Grape's Array[Integer] with GitLab's comma-separated coercion: ``[1, 2]``, ``"1,2"``,
    ``3``; null and ``""`` are the empty list."""
    if value is None or value == "":
        return []
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list):
        items = [items]
    out = []
    for item in items:
        if isinstance(item, bool):
            raise _invalid(name)
        try:
            out.append(int(str(item).strip()))
        except ValueError:
            raise _invalid(name) from None
    return out


def _value_names(value: Any, name: str) -> list[str]:
    """Grape's Array[String] with GitLab's comma-separated coercion."""
    if value is None:
        return []
    if isinstance(value, bool | dict):
        raise _invalid(name)
    if isinstance(value, int | float):
        value = str(value)
    if isinstance(value, list) and any(isinstance(item, list | dict) for item in value):
        raise _invalid(name)
    return _label_names(value)


def _value_due(value: Any) -> str | None:
    """``YYYY-MM-DD``; null or ``""`` clears the due date."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value.strip()):
        try:
            return date.fromisoformat(value.strip()).isoformat()
        except ValueError:
            pass
    raise ApiError(400, {"message": {"due_date": ["is not a valid date"]}})


def _check_text(edit: dict[str, Any]) -> None:
    """The model's validations GitLab answers with ``{"message": {field: [...]}}``."""
    errors: dict[str, list[str]] = {}
    if "title" in edit:
        title = edit["title"] or ""
        if not title.strip():
            errors["title"] = ["can't be blank"]
        elif len(title) > TITLE_MAX:
            errors["title"] = [f"is too long (maximum is {TITLE_MAX} characters)"]
    if len(edit.get("description") or "") > DESCRIPTION_MAX:
        errors["description"] = [f"is too long (maximum is {DESCRIPTION_MAX} characters)"]
    if errors:
        raise ApiError(400, {"message": errors})


def _search_terms(query: str) -> list[str]:
    """Gitlab::SQL::Pattern: quoted phrases and words; those of 3 or more characters match
    anywhere (all of them); with none that long, the whole query must match exactly."""
    return [phrase if phrase else word for phrase, word in re.findall(r'"([^"]+)"|(\S+)', query)]


def _fuzzy_match(text: str, query: str) -> bool:
    query = " ".join(query.split())
    if not query:
        return True
    text = (text or "").lower()
    words = [term.lower() for term in _search_terms(query) if len(term) >= 3]
    if words:
        return all(word in text for word in words)
    return text == query.lower()


# ------------------------------------------------------------------------- closing patterns
# Gitlab::ClosingIssueExtractor: GitLab's default issue_closing_pattern (gitlab.yml) with
# %{issue_ref} filled in as a link (HTTP_LINK_PATTERN) or an issue reference
# (Issue.reference_pattern: [[namespace/]project]#iid, the iid followed by a non-word
# character). The keywords are case-sensitive but for their first letter; the separators
# are spaces, never newlines. Ruby's \w, \d and \b are ASCII-only: re.ASCII.
_PATH_SEGMENT = r"[A-Za-z0-9_.][A-Za-z0-9_.-]*"
# Project.reference_pattern (simplified PathRegex): an optional namespace and a project.
_PROJECT_REF = (
    rf"(?<![A-Za-z0-9_.])(?P<absolute>/)?"
    rf"(?:(?P<namespace>{_PATH_SEGMENT}(?:/{_PATH_SEGMENT})*)/)?(?P<project>{_PATH_SEGMENT})"
)
_ISSUE_NUMBER = r"(?P<iid>\d+)(?:\+s?)?(?=\W|\Z)"
_HTTP_LINK = r"https?://[^\s>]{1,300}(?<![?!.,:])"


def _unnamed(pattern: str) -> str:
    return re.sub(r"\(\?P<\w+>", "(?:", pattern)


_CLOSING_PATTERN = re.compile(
    r"\b((?:[Cc]los(?:e[sd]?|ing)|\b[Ff]ix(?:e[sd]|ing)?|\b[Rr]esolv(?:e[sd]?|ing)"
    r"|\b[Ii]mplement(?:s|ed|ing)?)(:?) +(?:(?:issues? +)?"
    rf"(?:(?:{_HTTP_LINK})|(?:{_unnamed(f'(?:{_PROJECT_REF})?#{_ISSUE_NUMBER}')}))"
    r"(?:(?: *,? +and +| *,? *)?)|([A-Z][A-Z0-9_]+-\d+))+)",
    re.ASCII,
)
# What the reference extractor then finds in those statements: autolinked URLs (whole
# links only) and short references in the text outside them.
_TEXT_LINK = re.compile(r"[a-z][a-z0-9+.-]+://[^\s>]+(?<![?!.,:])", re.ASCII)
_SHORT_ISSUE_REF = re.compile(rf"(?:{_PROJECT_REF})?#{_ISSUE_NUMBER}", re.ASCII)


def closing_statements(text: str) -> list[str]:
    """The closing statements in ``text`` as GitLab finds them: ``Closes #12``, ``fixes #3,
    #4 and group/project#7``, ``Resolves https://host/group/project/-/issues/9``..."""
    return [match.group(0) for match in _CLOSING_PATTERN.finditer(text or "")]


def _loopback_url(url: str) -> str:
    """Hooks may only point at this machine: ``http://`` to a loopback address."""
    split = urlsplit(str(url))
    if split.scheme != "http" or not split.hostname:
        raise ValueError(f"hook URL must be http:// on loopback, not {url!r}")
    host = split.hostname
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"hook URL must point at a loopback address, not {host!r}")
    return str(url)


def _post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> tuple[int, str | None]:
    """One POST, no retry: (status, None), or (0, why) when nothing answered in time."""
    split = urlsplit(url)
    target = (split.path or "/") + (f"?{split.query}" if split.query else "")
    conn = http.client.HTTPConnection(split.hostname or "", split.port or 80, timeout=timeout)
    try:
        conn.request("POST", target, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status, None
    except (OSError, http.client.HTTPException) as exc:
        return 0, f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()


def _long_date(value: str) -> str:
    day = date.fromisoformat(value)
    return f"{day.strftime('%B')} {day.day}, {day.year}"


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _label_refs(names: list[str]) -> str:
    refs = " ".join(f"~{json.dumps(name)}" for name in names)
    return f"{refs} label{'s' if len(names) > 1 else ''}"


class Person:
    """Someone working in GitLab's web UI: each change is exactly what the API call would do,
    and fires the webhooks with this person as ``user``. Issue changes return the issue in REST
    form as it is afterwards, merge request changes the merge request; ``comment`` returns the
    note. Not recorded as API calls. Unknown projects, issues or merge requests raise KeyError,
    bad values and refused changes ValueError."""

    def __init__(self, emulator: GitLabEmulator, username: str) -> None:
        self._emu = emulator
        self.username = username

    def __repr__(self) -> str:
        return f"Person({self.username!r})"

    def open_issue(
        self, project: int | str, title: str, description: str = "", **fields: Any
    ) -> dict:
        """A new issue; ``fields``: ``labels``, ``assignees`` (usernames), ``due_date``,
        ``confidential``, ``issue_type``. Fires ``open``."""
        return self._emu._person_open(self.username, project, title, description, fields)

    def close_issue(self, project: int | str, iid: int) -> dict:
        """Fires ``close`` (nothing when already closed)."""
        return self._emu._person_edit(self.username, project, iid, {"state_event": "close"})

    def reopen_issue(self, project: int | str, iid: int) -> dict:
        """Fires ``reopen`` (nothing when already open)."""
        return self._emu._person_edit(self.username, project, iid, {"state_event": "reopen"})

    def edit_issue(self, project: int | str, iid: int, **fields: Any) -> dict:
        """Change ``title``, ``description``, ``labels`` (the whole list), ``add_labels``,
        ``remove_labels``, ``assignees`` (usernames), ``due_date`` (``None`` clears it),
        ``confidential``, ``issue_type``. Fires ``update`` when anything changed."""
        return self._emu._person_edit(self.username, project, iid, self._emu._person_fields(fields))

    def comment(self, project: int | str, iid: int, body: str, *, internal: bool = False) -> dict:
        """A comment (an internal note with ``internal``); fires a Note Hook (Confidential Note
        Hook for internal notes and notes on confidential issues). Quick actions run."""
        return self._emu._person_comment(self.username, project, iid, body, internal)

    def delete_issue(self, project: int | str, iid: int) -> None:
        """Delete the issue: GitLab sends no webhook for that."""
        self._emu._person_delete(self.username, project, iid)

    def move_issue(self, project: int | str, iid: int, to_project: int | str) -> dict:
        """Move the issue to another project: an ``open`` of the new issue, then a ``close`` of
        the old one with ``moved_to_id`` set. Returns the new issue."""
        return self._emu._person_move(self.username, project, iid, to_project)

    def open_merge_request(
        self,
        project: int | str,
        title: str,
        description: str = "",
        source_branch: str | None = None,
        target_branch: str = "main",
    ) -> dict:
        """A new merge request from ``source_branch`` (default: one named after the title)
        into ``target_branch``; fires ``open``. Returns it in REST form; ``closes_issues``
        then lists what its title and description close (when it targets ``main``)."""
        return self._emu._person_open_mr(
            self.username, project, title, description, source_branch, target_branch
        )

    def close_merge_request(self, project: int | str, iid: int) -> dict:
        """Fires ``close`` (nothing unless open)."""
        return self._emu._person_edit_mr(self.username, project, iid, {"state_event": "close"})

    def reopen_merge_request(self, project: int | str, iid: int) -> dict:
        """Fires ``reopen`` (nothing unless closed; a merged request stays merged)."""
        return self._emu._person_edit_mr(self.username, project, iid, {"state_event": "reopen"})

    def edit_merge_request(self, project: int | str, iid: int, **fields: Any) -> dict:
        """Change ``title``, ``description``, ``target_branch``; fires ``update`` when anything
        changed. The issues it closes are worked out again while it is open."""
        unknown = set(fields) - _MR_PERSON_FIELDS
        if unknown:
            raise TypeError(f"unknown merge request fields: {sorted(unknown)}")
        edit = {k: "" if v is None else str(v) for k, v in fields.items()}
        return self._emu._person_edit_mr(self.username, project, iid, edit)

    def merge(self, project: int | str, iid: int) -> dict:
        """Merge it (ValueError unless open and not a draft): fires ``merge``, then closes
        the issues it closes, each firing its ``close`` with this person as ``user``."""
        return self._emu._person_merge(self.username, project, iid)


class GitLabEmulator(emulator_http.LoopbackEmulator):
    """A GitLab REST API on loopback; seed and inspect its projects and issues, act as people,
    receive its webhooks, inject faults."""

    _handler_class = _Handler
    _thread_name = "gitlab-emulator"

    def __init__(
        self,
        *,
        token: str = DEFAULT_TOKEN,
        host: str = "127.0.0.1",
        port: int = 0,
        username: str = DEFAULT_USERNAME,
        multiple_assignees: bool = True,
    ) -> None:
        self.token = token
        self._host = host
        self._port = port
        self._lock = threading.RLock()
        self._users: dict[str, dict[str, Any]] = {}
        self._tokens: dict[str, dict[str, Any]] = {}
        self._namespaces: dict[str, int] = {}
        self._projects: dict[int, dict[str, Any]] = {}
        self._issues: dict[int, dict[int, dict[str, Any]]] = {}
        self._labels: dict[int, dict[str, dict[str, Any]]] = {}
        self._notes: dict[int, list[dict[str, Any]]] = {}  # by issue id
        self._hooks: dict[int, dict[str, Any]] = {}
        self._next_issue_id = 1001
        self._next_label_id = 1
        self._next_note_id = 1
        self._next_token_id = 1
        self._next_hook_id = 1
        self._merge_requests: dict[int, dict[int, dict[str, Any]]] = {}  # by project id, iid
        self._next_mr_id = 9001
        self._calls: list[Call] = []
        self._writes: list[Write] = []
        self._faults: list[_Fault] = []
        # Free tier keeps only the first of several assignees.
        self.multiple_assignees = multiple_assignees
        self.hook_timeout = HOOK_TIMEOUT
        # Seconds an auto_disable hook is first disabled for; it doubles up to a day.
        self.hook_backoff = 60.0
        # "iso" (2026-05-04T09:12:33.418Z) or "utc" (2026-05-04 09:12:33 UTC), both GitLab's.
        self.hook_timestamps = "iso"
        self._hook_cv = threading.Condition()
        self._hook_queue: deque[HookRequest] = deque()
        self._hook_log: list[HookRequest] = []
        self._hook_busy = False
        self._hook_paused = False
        self._hook_stop = False
        self._hook_thread: threading.Thread | None = None
        self._default_author = self._user("root", "Administrator")["username"]
        name = DEFAULT_USER_NAME if username == DEFAULT_USERNAME else None
        self._me = self._user(username, name)["username"]
        self._add_token(token, self._me, DEFAULT_SCOPES, None, None)

    # ----------------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        """The instance base URL (what ``gitlab.Gitlab(url)`` takes); the API is under it."""
        return f"http://{self._host}:{self._port}"

    @property
    def api_url(self) -> str:
        return self.url + API_PREFIX

    @property
    def control_url(self) -> str:
        return self.url + CONTROL_PREFIX

    def stop(self) -> None:
        """Stop serving; webhook deliveries still queued are dropped."""
        super().stop()
        with self._hook_cv:
            self._hook_stop = True
            self._hook_queue.clear()
            self._hook_cv.notify_all()
            thread, self._hook_thread = self._hook_thread, None
        if thread is not None:
            thread.join(timeout=self.hook_timeout + 1)

    # ----------------------------------------------------------------- users and tokens
    def set_token(self, token: str) -> None:
        """Accept ``token`` instead of the current one (same user and scopes)."""
        with self._lock:
            old = self._tokens.pop(self.token, None)
            if old is None:
                self._add_token(token, self._me, DEFAULT_SCOPES, None, None)
            else:
                self._add_token(token, old["user"], old["scopes"], old["name"], old["expires_at"])
            self.token = token

    def add_user(self, username: str, name: str | None = None) -> dict:
        """A GitLab user (``name`` defaults from the username); an existing one is returned,
        renamed when ``name`` is given. Returns ``{id, username, name, state, avatar_url,
        web_url, ...}``."""
        if not isinstance(username, str) or not re.fullmatch(r"[A-Za-z0-9_.][\w.-]*", username):
            raise ValueError(f"not a GitLab username: {username!r}")
        with self._lock:
            user = self._user(username, name)
            if name:
                user["name"] = str(name)
            return self._user_view(user)

    def user(self, username: str) -> dict:
        with self._lock:
            if username not in self._users:
                raise KeyError(username)
            return self._user_view(self._users[username])

    def add_token(
        self,
        token: str,
        user: str | None = None,
        scopes: Any = DEFAULT_SCOPES,
        *,
        name: str | None = None,
        expires_at: str | None = None,
    ) -> dict:
        """Accept ``token`` too, as a personal access token of ``user`` (default: the default
        token's user; created when new) with ``scopes`` (``("read_api",)`` reads only).
        ``expires_at`` (``YYYY-MM-DD``): from that day on it answers 401. Returns what
        ``GET /personal_access_tokens/self`` answers for it."""
        with self._python_api():
            if not token or token in self._tokens:
                raise ValueError("token must be new and not empty")
            record = self._add_token(token, user or self._me, scopes, name, expires_at)
            return self._token_view(record)

    def revoke_token(self, token: str) -> None:
        """``token`` now answers 401 ``invalid_token`` (revoked)."""
        with self._lock:
            if token not in self._tokens:
                raise KeyError("unknown token")
            self._tokens[token]["revoked"] = True

    def token_info(self, token: str | None = None) -> dict:
        """What ``GET /personal_access_tokens/self`` answers for ``token`` (default: ``token``)."""
        with self._lock:
            record = self._tokens.get(self.token if token is None else token)
            if record is None:
                raise KeyError("unknown token")
            return self._token_view(record)

    def as_user(self, username: str) -> Person:
        """``username`` (created when new) acting in GitLab's UI: see ``Person``."""
        self.add_user(username)
        return Person(self, username)

    as_person = as_user

    # ----------------------------------------------------------------- seeding
    def add_project(
        self, path_with_namespace: str, project_id: int | None = None, name: str | None = None
    ) -> dict:
        path_with_namespace = path_with_namespace.strip("/")
        namespace, _, path = path_with_namespace.rpartition("/")
        if not namespace or not path:
            raise ValueError("path_with_namespace must look like group/project")
        with self._lock:
            if self._find_project(path_with_namespace) is not None:
                raise ValueError(f"project {path_with_namespace!r} already exists")
            if project_id is None:
                project_id = max(self._projects, default=0) + 1
            if project_id in self._projects:
                raise ValueError(f"project id {project_id} already exists")
            namespace_id = self._namespaces.setdefault(namespace, len(self._namespaces) + 1)
            created = _now()
            self._projects[project_id] = {
                "id": int(project_id),
                "name": name or path,
                "path": path,
                "path_with_namespace": path_with_namespace,
                "namespace": namespace,
                "namespace_id": namespace_id,
                "created_at": created,
                "last_activity_at": created,
            }
            self._issues[project_id] = {}
            self._labels[project_id] = {}
            self._merge_requests[project_id] = {}
            return self._project_view(self._projects[project_id])

    def add_label(
        self,
        project: int | str,
        name: str,
        color: str = LABEL_DEFAULT_COLOR,
        description: str | None = None,
    ) -> dict:
        """A project label; labels named in issues are created on first use with the default
        colour, so this is only needed for a colour or a description."""
        with self._python_api():
            record = self._project_ref(project)
            label = self._label(record["id"], name)
            label.update(color=color, description=description, updated_at=_now())
            return self._label_view(label)

    def add_issue(
        self,
        project: int | str,
        *,
        title: str,
        description: str = "",
        state: str = "opened",
        labels: list[str] | None = None,
        assignees: list[str] | None = None,
        due_date: str | None = None,
        confidential: bool = False,
        issue_type: str = "issue",
        updated_at: str | None = None,
        created_at: str | None = None,
        author: str | None = None,
    ) -> dict:
        """An issue made in the GitLab UI (not recorded as an API call, and no webhook: as if
        its delivery were lost); returns its REST form.

        ``iid`` counts from 1 in each project; ``id`` is global. ``created_at`` defaults to
        ``updated_at``, which defaults to now."""
        with self._python_api():
            record = self._project_ref(project)
            if state not in ISSUE_STATES:
                raise ValueError(f"state must be one of {ISSUE_STATES}")
            if issue_type not in ISSUE_TYPES:
                raise ValueError(f"issue_type must be one of {sorted(ISSUE_TYPES)}")
            updated = _now() if updated_at is None else _parse_time(updated_at)
            created = updated if created_at is None else _parse_time(created_at)
            writer = self._user(author or self._default_author)["username"]
            issue = self._new_issue(
                record,
                title=str(title),
                description=str(description),
                author=writer,
                labels=self._use_labels(record["id"], labels),
                assignees=[self._user(u)["username"] for u in assignees or []],
                due_date=_due(due_date),
                confidential=bool(confidential),
                issue_type=issue_type,
                created=min(created, updated),
                updated=updated,
            )
            if state == "closed":
                issue.update(state="closed", closed_at=updated, closed_by=writer)
            return self._issue_view(issue, single=True)

    def update_issue(self, project: int | str, iid: int, **fields: Any) -> dict:
        """Change an issue as a person would in the UI (not recorded as an API call, and no
        webhook: as if its delivery were lost; ``as_user`` sends them).

        Takes ``title``, ``description``, ``state`` (``opened``/``closed``), ``labels``,
        ``assignees``, ``due_date``, ``confidential``, ``issue_type``, ``user_notes_count``,
        ``moved_to_id``; ``updated_at`` is set to now unless given."""
        unknown = set(fields) - _UPDATABLE
        if unknown:
            raise TypeError(f"unknown issue fields: {sorted(unknown)}")
        with self._python_api():
            record = self._project_ref(project)
            issue = self._issues[record["id"]].get(int(iid))
            if issue is None:
                raise KeyError(f"no issue {iid} in project {record['path_with_namespace']}")
            state = fields.get("state", issue["state"])
            if state not in ISSUE_STATES:
                raise ValueError(f"state must be one of {ISSUE_STATES}")
            if fields.get("issue_type", issue["issue_type"]) not in ISSUE_TYPES:
                raise ValueError(f"issue_type must be one of {sorted(ISSUE_TYPES)}")
            raw_updated = fields.get("updated_at")
            updated = _now() if raw_updated is None else _parse_time(raw_updated)
            changes: dict[str, Any] = {
                name: fields[name]
                for name in ("title", "description", "issue_type", "user_notes_count")
                if name in fields
            }
            if "due_date" in fields:
                changes["due_date"] = _due(fields["due_date"])
            if "confidential" in fields:
                changes["confidential"] = bool(fields["confidential"])
            if "moved_to_id" in fields:
                changes["moved_to_id"] = fields["moved_to_id"]
            if "labels" in fields:
                changes["labels"] = self._use_labels(record["id"], fields["labels"])
            if "assignees" in fields:
                changes["assignees"] = [self._user(u)["username"] for u in fields["assignees"]]
            if state != issue["state"]:
                closing = state == "closed"
                changes["closed_at"] = updated if closing else None
                changes["closed_by"] = issue["author"] if closing else None
            issue.update(changes, state=state, updated_at=updated)
            record["last_activity_at"] = max(record["last_activity_at"], updated)
            return self._issue_view(issue, single=True)

    # ----------------------------------------------------------------- webhooks
    def add_hook(
        self,
        project: int | str,
        url: str,
        token: str | None = None,
        issues_events: bool = True,
        note_events: bool = True,
        confidential_issues_events: bool | None = None,
        confidential_note_events: bool | None = None,
        merge_requests_events: bool = False,
        *,
        signing_token: str | None = None,
        auto_disable: bool = False,
    ) -> dict:
        """A project hook posting to ``url`` (http on loopback only) with ``X-Gitlab-Token:
        token`` when given. The confidential triggers follow their plain ones unless given.
        ``signing_token`` (``whsec_`` + base64) adds Standard Webhooks signatures;
        ``auto_disable`` disables the hook after consecutive failures, as GitLab.com does.
        Returns the hook as ``GET /projects/:id/hooks/:hook_id`` shows it."""
        url = _loopback_url(url)
        if signing_token is not None:
            try:
                sign_webhook(signing_token, "check", 0, b"")
            except (binascii.Error, ValueError):
                raise ValueError("signing_token must be whsec_ and base64") from None
            if not signing_token.startswith("whsec_"):
                raise ValueError("signing_token must be whsec_ and base64")
        with self._python_api():
            record = self._project_ref(project)
            hook = {
                "id": self._next_hook_id,
                "url": url,
                "project_id": record["id"],
                "token": token or None,
                "signing_token": signing_token,
                "issues_events": bool(issues_events),
                "confidential_issues_events": bool(
                    issues_events if confidential_issues_events is None
                    else confidential_issues_events
                ),
                "note_events": bool(note_events),
                "confidential_note_events": bool(
                    note_events if confidential_note_events is None else confidential_note_events
                ),
                "merge_requests_events": bool(merge_requests_events),
                "auto_disable": bool(auto_disable),
                "created_at": _now(),
                "failures": 0,
                "disabled_until": None,
                "disabled": False,
            }  # fmt: skip
            self._next_hook_id += 1
            self._hooks[hook["id"]] = hook
            return self._hook_view(hook)

    def hooks(self, project: int | str | None = None) -> list[dict]:
        with self._python_api():
            wanted = None if project is None else self._project_ref(project)["id"]
            return [
                self._hook_view(hook)
                for hook in self._hooks.values()
                if wanted is None or hook["project_id"] == wanted
            ]

    def remove_hook(self, hook_id: int) -> None:
        """Delete the hook: its deliveries still queued are dropped."""
        with self._lock:
            if self._hooks.pop(int(hook_id), None) is None:
                raise KeyError(hook_id)

    @property
    def hook_deliveries(self) -> list[HookDelivery]:
        """Every delivery attempt so far, in the order sent: (X-Gitlab-Event, action, status
        or 0). Events dropped by a disabled hook are not attempts: see ``hook_requests``."""
        with self._hook_cv:
            return [
                HookDelivery(r.event, r.action, r.status or 0)
                for r in self._hook_log
                if not r.dropped
            ]

    @property
    def hook_requests(self) -> list[HookRequest]:
        """Every event handled so far, sent or dropped, in that order, with headers and body."""
        with self._hook_cv:
            return list(self._hook_log)

    def reset_hook_deliveries(self) -> None:
        with self._hook_cv:
            self._hook_log.clear()

    def wait_hooks_idle(self, timeout: float = 10.0) -> bool:
        """Wait until no delivery is queued or in flight; False on timeout (or while paused
        with deliveries queued)."""
        deadline = time.monotonic() + timeout
        with self._hook_cv:
            while self._hook_queue or self._hook_busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._hook_cv.wait(remaining)
            return True

    def pause_hooks(self) -> None:
        """Hold deliveries in the queue (the one in flight finishes) until ``resume_hooks``."""
        with self._hook_cv:
            self._hook_paused = True

    def resume_hooks(self, order: str = "fifo", seed: int | None = None) -> None:
        """Send what was held: in order (``fifo``), ``reverse``\\ d, or ``shuffle``\\ d (GitLab
        does not guarantee the order of deliveries)."""
        if order not in ("fifo", "reverse", "shuffle"):
            raise ValueError("order must be fifo, reverse or shuffle")
        with self._hook_cv:
            held = list(self._hook_queue)
            if order == "reverse":
                held.reverse()
            elif order == "shuffle":
                random.Random(seed).shuffle(held)
            self._hook_queue = deque(held)
            self._hook_paused = False
            self._hook_cv.notify_all()

    def resend_hook(self, request: HookRequest | int) -> HookRequest:
        """GitLab's "Resend request": the same body and ``Idempotency-Key`` again, with a new
        ``X-Gitlab-Webhook-UUID``. ``request`` is one of ``hook_requests`` or its index."""
        with self._hook_cv:
            original = self._hook_log[request] if isinstance(request, int) else request
        again = HookRequest(
            original.hook_id,
            original.url,
            original.event,
            original.action,
            original.body,
            original.idempotency_key,
            original.event_uuid,
        )
        self._enqueue(again)
        return again

    def test_hook(self, hook_id: int, username: str | None = None) -> HookRequest:
        """The hook page's "Test" button (issue events): the project's most recently created
        issue with ``action: "open"`` and ``changes: {}``."""
        with self._python_api():
            hook = self._hooks.get(int(hook_id))
            if hook is None:
                raise KeyError(hook_id)
            record = self._projects[hook["project_id"]]
            issues = self._issues[record["id"]]
            if not issues:
                raise ValueError("the project has no issue to test the hook with")
            issue = max(issues.values(), key=lambda i: (i["created_at"], i["id"]))
            actor = self._user(username or self._default_author)["username"]
            payload = self._issue_payload(record, issue, actor, "open", {})
            request = HookRequest(
                hook["id"],
                hook["url"],
                ISSUE_HOOK,
                "open",
                hook_json(payload),
                str(uuid.uuid4()),
                str(uuid.uuid4()),
            )
        self._enqueue(request)
        return request

    # ----------------------------------------------------------------- inspection
    def project(self, project: int | str) -> dict:
        with self._python_api():
            return self._project_view(self._project_ref(project))

    def issues(self, project: int | str) -> list[dict]:
        """Every issue of the project in REST form, by iid."""
        with self._python_api():
            record = self._project_ref(project)
            issues = self._issues[record["id"]]
            return [self._issue_view(issues[iid], single=True) for iid in sorted(issues)]

    def issue(self, project: int | str, iid: int) -> dict:
        with self._python_api():
            _, issue = self._issue_of(project, iid)
            return self._issue_view(issue, single=True)

    def notes(self, project: int | str, iid: int, *, system: bool | None = None) -> list[dict]:
        """The issue's notes in REST form, oldest first; ``system`` picks system notes (True)
        or comments (False)."""
        with self._python_api():
            _, issue = self._issue_of(project, iid)
            return [
                self._note_view(note)
                for note in self._notes[issue["id"]]
                if system is None or note["system"] == system
            ]

    def merge_request(self, project: int | str, iid: int) -> dict:
        """A merge request in REST form (``GET /projects/:id/merge_requests/:iid``)."""
        with self._python_api():
            _, mr = self._mr_ref(project, str(iid))
            return self._mr_view(mr, single=True)

    def merge_requests(self, project: int | str) -> list[dict]:
        """Every merge request of the project in REST form, by iid."""
        with self._python_api():
            mrs = self._merge_requests[self._project_ref(project)["id"]]
            return [self._mr_view(mrs[iid], single=True) for iid in sorted(mrs)]

    def closes_issues(self, project: int | str, iid: int) -> list[dict]:
        """What ``GET .../merge_requests/:iid/closes_issues`` lists, unpaginated."""
        with self._python_api():
            _, mr = self._mr_ref(project, str(iid))
            return [self._issue_basic_view(issue) for _, issue in self._closing_issues(mr)]

    def state(self) -> dict:
        """Projects, issues, notes, users, hooks and merge requests as plain JSON-ready data."""
        with self._lock:
            return {
                "projects": [self._project_view(r) for r in self._projects.values()],
                "issues": [
                    self._issue_view(issue, single=True)
                    for pid in self._issues
                    for issue in self._issues[pid].values()
                ],
                "notes": [self._note_view(n) for notes in self._notes.values() for n in notes],
                "users": [self._user_view(u) for u in self._users.values()],
                "hooks": [self._hook_view(h) for h in self._hooks.values()],
                "merge_requests": [
                    self._mr_view(mr, single=True)
                    for mrs in self._merge_requests.values()
                    for mr in mrs.values()
                ],
            }

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    @property
    def writes(self) -> list[Write]:
        """The API calls that were not reads (not GET or HEAD), in order."""
        with self._lock:
            return list(self._writes)

    def count_writes(self) -> int:
        """How many API calls were not reads (not GET or HEAD), whatever they answered."""
        with self._lock:
            return len(self._writes)

    def reset_calls(self) -> None:
        with self._lock:
            self._calls.clear()
            self._writes.clear()

    # ----------------------------------------------------------------- faults
    def fault(
        self,
        kind: str = "status",
        *,
        status: int = 503,
        count: int = 1,
        retry_after: int = 1,
        method: str | None = None,
    ) -> None:
        """The next ``count`` API requests (of ``method`` only, when given) answer ``status``
        (kind ``"status"``), or have their connection reset with no answer (kind ``"reset"``),
        or are carried out, webhooks included, and then lose their answer the same way (kind
        ``"apply_then_reset"``). A 429 carries ``Retry-After``."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {sorted(FAULT_KINDS)}")
        if count < 1:
            raise ValueError("count must be at least 1")
        with self._lock:
            self._faults.append(
                _Fault(kind, int(status), int(count), int(retry_after), method and method.upper())
            )

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    # ----------------------------------------------------------------- request pipeline
    def _handle(self, method: str, target: str, headers: Any, body: bytes = b"") -> _Reply:
        split = urlsplit(target)
        if split.path.startswith(CONTROL_PREFIX + "/"):
            return self._control(method, split.path, body)
        pairs = parse_qsl(split.query, keep_blank_values=True)
        request = _Request(method, split.path, pairs, headers, body)
        is_api = split.path == API_PREFIX or split.path.startswith(API_PREFIX + "/")
        reply = self._handle_api(request) if is_api else _json_reply(404, ROUTE_NOT_FOUND)
        with self._lock:
            status = 0 if reply.reset else reply.status
            self._calls.append(Call(method, split.path, dict(pairs), status))
            if is_api and method not in _READ_METHODS:
                self._writes.append(Write(method, split.path, dict(request.form or {}), status))
        return reply

    def _handle_api(self, request: _Request) -> _Reply:
        with self._lock:
            fault = self._take_fault(request.method)
        if fault is not None and fault.kind == "reset":
            return _Reply(0, reset=True)
        if fault is not None and fault.kind == "apply_then_reset":
            self._apply_api(request)
            return _Reply(0, reset=True)
        if fault is not None:
            if fault.status == 429:
                headers = {"Retry-After": str(fault.retry_after)}
                return _Reply(429, b"Retry later\n", emulator_http.TEXT, headers)
            return _json_reply(fault.status, {"message": f"{fault.status} {_phrase(fault.status)}"})
        return self._apply_api(request)

    def _apply_api(self, request: _Request) -> _Reply:
        api_path = request.path[len(API_PREFIX) :].rstrip("/") or "/"
        try:
            handler, args = self._route(request.method, api_path)
            with self._lock:
                request.token = self._authenticate(request)
                self._check_scope(request, handler.__name__)
                if request.method not in _READ_METHODS:
                    request.inputs()
                result = handler(request, *(unquote(arg) for arg in args))
        except ApiError as exc:
            return _error_reply(exc)
        return result if isinstance(result, _Reply) else _json_reply(200, result)

    def _take_fault(self, method: str) -> _Fault | None:
        self._faults = [f for f in self._faults if f.remaining > 0]
        for fault in self._faults:
            if fault.method is None or fault.method == method:
                fault.remaining -= 1
                return fault
        return None

    def _route(self, method: str, path: str) -> tuple[Any, tuple[str, ...]]:
        method = "GET" if method == "HEAD" else method
        path_known = False
        for route_method, pattern, name in _COMPILED_ROUTES:
            match = pattern.match(path)
            if match and route_method == method:
                return getattr(self, name), match.groups()
            path_known = path_known or match is not None
        if path_known:
            raise ApiError(405, {"error": "405 Not Allowed"})
        raise ApiError(404, ROUTE_NOT_FOUND)

    def _authenticate(self, request: _Request) -> dict[str, Any]:
        headers, params = request.headers, request.params
        given = headers.get("PRIVATE-TOKEN")
        bearer = headers.get("Authorization") or ""
        if given is None and bearer[:7].lower() == "bearer ":
            given = bearer[7:].strip()
        if given is None:
            given = params.get("private_token") or params.get("access_token")
        record = None
        for known, candidate in self._tokens.items():
            if given and hmac.compare_digest(given.encode(), known.encode()):
                record = candidate
        if record is None:
            raise ApiError(401, UNAUTHORIZED)
        if record["revoked"]:
            raise self._invalid_token(TOKEN_REVOKED)
        if self._expired(record):
            raise self._invalid_token(TOKEN_EXPIRED)
        record["last_used_at"] = _now()
        return record

    @staticmethod
    def _invalid_token(description: str) -> _AuthError:
        challenge = (
            f'Bearer realm="{OAUTH_REALM}", error="invalid_token", '
            f'error_description="{description}"'
        )
        body = {"error": "invalid_token", "error_description": description}
        return _AuthError(401, body, {"WWW-Authenticate": challenge})

    def _check_scope(self, request: _Request, handler_name: str) -> None:
        """Writes need ``api``; reads ``api`` or ``read_api`` (user reads also ``read_user``)."""
        assert request.token is not None
        if request.method not in _READ_METHODS:
            allowed = WRITE_SCOPES
        elif handler_name in _USER_ROUTES:
            allowed = USER_READ_SCOPES
        else:
            allowed = READ_SCOPES
        if not set(allowed) & set(request.token["scopes"]):
            body = {
                "error": "insufficient_scope",
                "error_description": INSUFFICIENT_SCOPE,
                "scope": " ".join(allowed),
            }
            raise _AuthError(403, body, {})

    # ----------------------------------------------------------------- control endpoints
    def _control(self, method: str, path: str, body: bytes) -> _Reply:
        """Unauthenticated, unrecorded endpoints for other processes (a demo, a load run):
        JSON in, ``{"ok": true, ...}`` out; 400 ``{"error"}`` on bad input, 404 when not found."""
        try:
            data = json.loads(body) if body.strip() else {}
            if not isinstance(data, dict):
                raise ValueError("expected a JSON object")
            result: Any = None
            if (method, path) == ("GET", "/_emulator/state"):
                return _json_reply(200, self.state())
            if (method, path) == ("GET", "/_emulator/calls"):
                return _json_reply(200, [call._asdict() for call in self.calls])
            if (method, path) == ("GET", "/_emulator/hooks"):
                requests = [self._request_summary(r) for r in self.hook_requests]
                return _json_reply(200, {"hooks": self.hooks(), "deliveries": requests})
            if (method, path) == ("POST", "/_emulator/act"):
                result = self._act(**data)
            elif (method, path) == ("POST", "/_emulator/hooks"):
                result = self.add_hook(**data)
            elif (method, path) == ("POST", "/_emulator/users"):
                result = self.add_user(**data)
            elif (method, path) == ("POST", "/_emulator/tokens"):
                result = self.add_token(**data)
            elif (method, path) == ("POST", "/_emulator/projects"):
                result = self.add_project(**data)
            elif (method, path) == ("POST", "/_emulator/issues"):
                result = self.add_issue(**data)
            elif (method, path) == ("POST", "/_emulator/wait_hooks_idle"):
                return _json_reply(
                    200, {"ok": True, "idle": self.wait_hooks_idle(float(data.get("timeout", 10)))}
                )
            elif (method, path) == ("POST", "/_emulator/reset_calls"):
                self.reset_calls()
            elif (method, path) == ("POST", "/_emulator/fault"):
                self.fault(**data)
            elif (method, path) == ("POST", "/_emulator/clear_faults"):
                self.clear_faults()
            else:
                return _json_reply(404, {"error": f"no control route {method} {path}"})
        except KeyError as exc:
            return _json_reply(404, {"error": f"not found: {exc.args[0] if exc.args else ''}"})
        except (TypeError, ValueError) as exc:
            return _json_reply(400, {"error": str(exc)})
        return _json_reply(200, {"ok": True, "result": result})

    def _act(self, username: Any = None, what: Any = None, args: Any = None) -> Any:
        """``POST /_emulator/act``: ``{username, what, args}`` runs ``as_user(username).what``
        with ``args``, a list of positional arguments or an object of keyword arguments
        (``project_id`` is taken for ``project``)."""
        if not isinstance(username, str) or what not in PERSON_ACTS:
            raise TypeError(f"expected a username and what, one of {list(PERSON_ACTS)}")
        method = getattr(self.as_user(username), what)
        if isinstance(args, dict):
            kwargs = dict(args)
            if "project_id" in kwargs and "project" not in kwargs:
                kwargs["project"] = kwargs.pop("project_id")
            return method(**kwargs)
        if args is not None and not isinstance(args, list):
            raise TypeError("args must be a list or an object")
        return method(*(args or []))

    @staticmethod
    def _request_summary(request: HookRequest) -> dict[str, Any]:
        summary = asdict(request)
        summary["body"] = request.body.decode()
        return summary

    # ----------------------------------------------------------------- API handlers: users
    def _get_user(self, request: _Request) -> dict:
        user = self._users[request.actor]
        return {
            **self._user_view(user),
            "created_at": _iso(user["created_at"]),
            "bio": "",
            "location": "",
            "public_email": None,
            "organization": "",
            "job_title": "",
            "bot": False,
            "last_sign_in_at": _iso(user["created_at"]),
            "confirmed_at": _iso(user["created_at"]),
            "email": f"{user['username']}@example.com",
            "is_admin": False,
            "can_create_group": True,
            "can_create_project": True,
            "two_factor_enabled": False,
            "external": False,
            "private_profile": False,
        }

    def _get_token_self(self, request: _Request) -> dict:
        assert request.token is not None
        return self._token_view(request.token)

    def _list_users(self, request: _Request) -> _Reply:
        p = request.params
        wanted = p.get("username")
        rows = sorted(self._users.values(), key=lambda u: u["id"], reverse=True)
        if wanted is not None:
            rows = [u for u in rows if u["username"].lower() == wanted.lower()]
        page = max(1, _param_int(p, "page", 1))
        per_page = _param_int(p, "per_page", DEFAULT_PER_PAGE)
        per_page = DEFAULT_PER_PAGE if per_page < 1 else min(per_page, MAX_PER_PAGE)
        chosen = rows[(page - 1) * per_page : page * per_page]
        headers = self._page_headers(request, page, per_page, len(rows), bool(chosen))
        return _json_reply(200, [self._user_view(u) for u in chosen], headers)

    def _get_user_by_id(self, request: _Request, raw_id: str) -> dict:
        try:
            user_id = int(raw_id)
        except ValueError:
            raise ApiError(400, {"error": "id is invalid"}) from None
        for user in self._users.values():
            if user["id"] == user_id:
                return self._user_view(user)
        raise ApiError(404, USER_NOT_FOUND)

    def _get_version(self, request: _Request) -> dict:
        return json.loads(json.dumps(VERSION))

    # ----------------------------------------------------------------- API handlers: issues
    def _get_project(self, request: _Request, ref: str) -> dict:
        return self._project_view(self._project_ref(ref))

    def _get_issue(self, request: _Request, ref: str, raw_iid: str) -> dict:
        _, issue = self._issue_ref(ref, raw_iid)
        return self._issue_view(issue, single=True)

    def _list_issues(self, request: _Request, ref: str) -> _Reply:
        p = request.params
        if p.get("pagination") == "keyset":
            raise ApiError(405, KEYSET_UNAVAILABLE)
        state = _param_choice(p, "state", LIST_STATES, "all")
        order_by = _param_choice(p, "order_by", ORDER_BY, "created_at")
        descending = _param_choice(p, "sort", SORTS, "desc") == "desc"
        details = bool(_param_bool(p, "with_labels_details"))
        confidential = _param_bool(p, "confidential")
        issue_type = p.get("issue_type") or None
        if issue_type is not None and issue_type not in ISSUE_TYPES:
            raise ApiError(400, {"error": "issue_type does not have a valid value"})
        bounds = {
            name: _param_time(p, name)
            for name in ("created_after", "created_before", "updated_after", "updated_before")
        }
        page = max(1, _param_int(p, "page", 1))
        per_page = _param_int(p, "per_page", DEFAULT_PER_PAGE)
        per_page = DEFAULT_PER_PAGE if per_page < 1 else min(per_page, MAX_PER_PAGE)
        try:
            iids = {int(v) for k, v in request.pairs if k in ("iids[]", "iids")}
        except ValueError:
            raise ApiError(400, {"error": "iids is invalid"}) from None
        wanted_labels = _label_names(p.get("labels"))
        search = p.get("search") or ""
        # ``in``: title, description or both (a comma list); unknown names are ignored.
        fields = [f.strip() for f in (p.get("in") or "").split(",") if f.strip() in SEARCH_FIELDS]
        fields = fields or list(SEARCH_FIELDS)
        record = self._project_ref(ref)

        def keep(issue: dict[str, Any]) -> bool:
            after = bounds["created_after"], bounds["updated_after"]
            before = bounds["created_before"], bounds["updated_before"]
            stamps = issue["created_at"], issue["updated_at"]
            if any(b is not None and s < b for s, b in zip(stamps, after, strict=True)):
                return False
            if any(b is not None and s > b for s, b in zip(stamps, before, strict=True)):
                return False
            if wanted_labels == ["None"]:
                labels_ok = not issue["labels"]
            elif wanted_labels == ["Any"]:
                labels_ok = bool(issue["labels"])
            else:
                labels_ok = set(wanted_labels) <= set(issue["labels"])
            return (
                labels_ok
                and (state == "all" or issue["state"] == state)
                and (confidential is None or issue["confidential"] == confidential)
                and (issue_type is None or issue["issue_type"] == issue_type)
                and (not iids or issue["iid"] in iids)
                and (not search or any(_fuzzy_match(issue[f], search) for f in fields))
            )

        rows = [issue for issue in self._issues[record["id"]].values() if keep(issue)]
        rows.sort(key=lambda issue: (issue[order_by], issue["id"]), reverse=descending)
        start = (page - 1) * per_page
        chosen = rows[start : start + per_page]
        body = [self._issue_view(issue, single=False, label_details=details) for issue in chosen]
        headers = self._page_headers(request, page, per_page, len(rows), bool(chosen))
        return _json_reply(200, body, headers)

    def _create_issue(self, request: _Request, ref: str) -> _Reply:
        p = request.inputs()
        if "title" not in p:
            raise ApiError(400, {"error": "title is missing"})
        edit = self._api_edit(p, creating=True)
        record = self._project_ref(ref)
        _check_text(edit)
        issue = self._open(record, request.actor, edit, self._event_uuid(request))
        return _json_reply(201, self._issue_view(issue, single=True))

    def _update_issue(self, request: _Request, ref: str, raw_iid: str) -> dict:
        self._iid(raw_iid)
        p = request.inputs()
        if not any(name in p for name in UPDATE_PARAMS):
            missing = ", ".join(UPDATE_PARAMS)
            raise ApiError(
                400, {"error": f"{missing} are missing, at least one parameter must be provided"}
            )
        edit = self._api_edit(p, creating=False)
        record, issue = self._issue_ref(ref, raw_iid)
        _check_text(edit)
        self._apply_edit(record, issue, request.actor, edit, self._event_uuid(request))
        return self._issue_view(issue, single=True)

    def _delete_issue(self, request: _Request, ref: str, raw_iid: str) -> _Reply:
        record, issue = self._issue_ref(ref, raw_iid)
        self._remove_issue(record, issue)
        return _Reply(204, b"")

    def _list_notes(self, request: _Request, ref: str, raw_iid: str) -> _Reply:
        p = request.params
        order_by = _param_choice(p, "order_by", NOTE_ORDER_BY, "created_at")
        descending = _param_choice(p, "sort", SORTS, "desc") == "desc"
        page = max(1, _param_int(p, "page", 1))
        per_page = _param_int(p, "per_page", DEFAULT_PER_PAGE)
        per_page = DEFAULT_PER_PAGE if per_page < 1 else min(per_page, MAX_PER_PAGE)
        _, issue = self._issue_ref(ref, raw_iid)
        rows = sorted(
            self._notes[issue["id"]], key=lambda n: (n[order_by], n["id"]), reverse=descending
        )
        chosen = rows[(page - 1) * per_page : page * per_page]
        headers = self._page_headers(request, page, per_page, len(rows), bool(chosen))
        return _json_reply(200, [self._note_view(n) for n in chosen], headers)

    def _get_note(self, request: _Request, ref: str, raw_iid: str, raw_note: str) -> dict:
        _, issue = self._issue_ref(ref, raw_iid)
        for note in self._notes[issue["id"]]:
            if str(note["id"]) == raw_note:
                return self._note_view(note)
        raise ApiError(404, NOTE_NOT_FOUND)

    def _create_note(self, request: _Request, ref: str, raw_iid: str) -> _Reply:
        self._iid(raw_iid)
        p = request.inputs()
        if "body" not in p:
            raise ApiError(400, {"error": "body is missing"})
        body = _value_str(p["body"], "body") or ""
        internal = False
        for name in ("internal", "confidential"):  # confidential: the deprecated spelling
            if p.get(name) is not None:
                internal = _value_bool(p[name], name)
        record, issue = self._issue_ref(ref, raw_iid)
        outcome = self._comment(
            record, issue, request.actor, body, internal, self._event_uuid(request)
        )
        if isinstance(outcome, dict) and "commands_changes" in outcome and "id" not in outcome:
            return _json_reply(202, outcome)
        return _json_reply(201, outcome)

    # ----------------------------------------------------------------- API handlers: MRs
    def _get_merge_request(self, request: _Request, ref: str, raw_iid: str) -> dict:
        _, mr = self._mr_ref(ref, raw_iid)
        return self._mr_view(mr, single=True)

    def _list_merge_requests(self, request: _Request, ref: str) -> _Reply:
        """MergeRequestsFinder's filters the bridge could use: ``state``, ``iids[]``,
        ``source_branch``, ``target_branch``, ``search`` (``in``), created/updated bounds;
        ``order_by`` and ``sort``; offset pagination."""
        p = request.params
        state = _param_choice(p, "state", MR_LIST_STATES, "all")
        order_by = _param_choice(p, "order_by", MR_ORDER_BY, "created_at")
        descending = _param_choice(p, "sort", SORTS, "desc") == "desc"
        bounds = {
            name: _param_time(p, name)
            for name in ("created_after", "created_before", "updated_after", "updated_before")
        }
        page = max(1, _param_int(p, "page", 1))
        per_page = _param_int(p, "per_page", DEFAULT_PER_PAGE)
        per_page = DEFAULT_PER_PAGE if per_page < 1 else min(per_page, MAX_PER_PAGE)
        try:
            iids = {int(v) for k, v in request.pairs if k in ("iids[]", "iids")}
        except ValueError:
            raise ApiError(400, {"error": "iids is invalid"}) from None
        search = p.get("search") or ""
        fields = [f.strip() for f in (p.get("in") or "").split(",") if f.strip() in SEARCH_FIELDS]
        fields = fields or list(SEARCH_FIELDS)
        record = self._project_ref(ref)

        def keep(mr: dict[str, Any]) -> bool:
            stamps = mr["created_at"], mr["updated_at"]
            after = bounds["created_after"], bounds["updated_after"]
            before = bounds["created_before"], bounds["updated_before"]
            if any(b is not None and s < b for s, b in zip(stamps, after, strict=True)):
                return False
            if any(b is not None and s > b for s, b in zip(stamps, before, strict=True)):
                return False
            return (
                (state == "all" or mr["state"] == state)
                and (not iids or mr["iid"] in iids)
                and p.get("source_branch") in (None, mr["source_branch"])
                and p.get("target_branch") in (None, mr["target_branch"])
                and (not search or any(_fuzzy_match(mr[f], search) for f in fields))
            )

        modelled = ("created_at", "updated_at", "title", "merged_at")
        column = order_by if order_by in modelled else "created_at"
        rows = [mr for mr in self._merge_requests[record["id"]].values() if keep(mr)]
        dated = [mr for mr in rows if mr[column] is not None]
        dated.sort(key=lambda mr: (mr[column], mr["id"]), reverse=descending)
        undated = sorted((mr for mr in rows if mr[column] is None), key=lambda mr: mr["id"])
        rows = dated + undated  # NULLS LAST, as PostgreSQL orders merged_at
        chosen = rows[(page - 1) * per_page : page * per_page]
        headers = self._page_headers(request, page, per_page, len(rows), bool(chosen))
        return _json_reply(200, [self._mr_view(mr, single=False) for mr in chosen], headers)

    def _create_merge_request(self, request: _Request, ref: str) -> _Reply:
        p = request.inputs()
        missing = [name for name in ("title", "source_branch", "target_branch") if name not in p]
        if missing:
            raise ApiError(400, {"error": ", ".join(f"{name} is missing" for name in missing)})
        edit = self._mr_api_edit(p, creating=True)
        record = self._project_ref(ref)
        mr = self._open_mr(record, request.actor, edit, self._event_uuid(request))
        reply = _json_reply(201, self._mr_view(mr, single=True))
        self._checked(mr)
        return reply

    def _update_merge_request(self, request: _Request, ref: str, raw_iid: str) -> dict:
        self._mr_iid(raw_iid)
        p = request.inputs()
        if not any(name in p for name in MR_UPDATE_PARAMS):
            missing = ", ".join(MR_UPDATE_PARAMS)
            raise ApiError(
                400, {"error": f"{missing} are missing, at least one parameter must be provided"}
            )
        edit = self._mr_api_edit(p, creating=False)
        record, mr = self._mr_ref(ref, raw_iid)
        self._apply_mr_edit(record, mr, request.actor, edit, self._event_uuid(request))
        return self._mr_view(mr, single=True)

    def _merge_merge_request(self, request: _Request, ref: str, raw_iid: str) -> dict:
        """``PUT .../merge``: 409 when ``sha`` is not the source branch's head, 405 unless the
        request is open and not a draft; the other parameters (``squash``, ``auto_merge``,
        ``merge_commit_message``...) change nothing here."""
        self._mr_iid(raw_iid)
        p = request.inputs()
        record, mr = self._mr_ref(ref, raw_iid)
        if p.get("sha") is not None and _value_str(p["sha"], "sha") != mr["sha"]:
            raise ApiError(
                409, {"message": f"SHA does not match HEAD of source branch: {mr['sha']}"}
            )
        self._merge_mr(record, mr, request.actor, self._event_uuid(request))
        return self._mr_view(mr, single=True)

    def _list_closes_issues(self, request: _Request, ref: str, raw_iid: str) -> _Reply:
        """The issues merging will close (``visible_closing_issues_for``), as IssueBasic,
        paginated."""
        p = request.params
        page = max(1, _param_int(p, "page", 1))
        per_page = _param_int(p, "per_page", DEFAULT_PER_PAGE)
        per_page = DEFAULT_PER_PAGE if per_page < 1 else min(per_page, MAX_PER_PAGE)
        _, mr = self._mr_ref(ref, raw_iid)
        rows = self._closing_issues(mr)
        chosen = rows[(page - 1) * per_page : page * per_page]
        headers = self._page_headers(request, page, per_page, len(rows), bool(chosen))
        return _json_reply(200, [self._issue_basic_view(i) for _, i in chosen], headers)

    @staticmethod
    def _mr_iid(raw_iid: str) -> int:
        try:
            return int(raw_iid)
        except ValueError:
            raise ApiError(400, {"error": "merge_request_iid is invalid"}) from None

    def _mr_api_edit(self, p: dict[str, Any], *, creating: bool) -> dict[str, Any]:
        """The merge request parameters the emulator models, type-checked as Grape does:
        ``title``, ``description``, ``source_branch`` (creating only), ``target_branch``,
        ``remove_source_branch``, ``state_event`` (updating only). Blank ``title`` or
        ``target_branch`` on an update is Grape's ``is empty``."""
        edit: dict[str, Any] = {}
        names = ["title", "description", "target_branch"] + (["source_branch"] if creating else [])
        for name in names:
            if name in p:
                edit[name] = _value_str(p[name], name)
        if "description" in edit and edit["description"] is None:
            edit["description"] = ""
        if not creating:
            for name in ("title", "target_branch"):
                if name in edit and not (edit[name] or "").strip():
                    raise ApiError(400, {"error": f"{name} is empty"})
            if "state_event" in p:
                if p["state_event"] not in ("close", "reopen"):
                    raise ApiError(400, {"error": "state_event does not have a valid value"})
                edit["state_event"] = p["state_event"]
        if p.get("remove_source_branch") is not None:
            edit["remove_source_branch"] = _value_bool(
                p["remove_source_branch"], "remove_source_branch"
            )
        return edit

    @staticmethod
    def _event_uuid(request: _Request) -> str | None:
        """A receiver calling the API with the ``X-Gitlab-Event-UUID`` it got passes it on to
        the events its call causes (GitLab's recursion detection)."""
        value = request.headers.get("X-Gitlab-Event-UUID")
        return str(value) if value else None

    @staticmethod
    def _iid(raw_iid: str) -> int:
        try:
            return int(raw_iid)
        except ValueError:
            raise ApiError(400, {"error": "issue_iid is invalid"}) from None

    def _api_edit(self, p: dict[str, Any], *, creating: bool) -> dict[str, Any]:
        """The parameters GitLab's issue endpoints declare, type-checked as Grape does (400
        ``{"error": "... is invalid"}``); unknown parameters are ignored."""
        edit: dict[str, Any] = {}
        for name in ("title", "description"):
            if name in p:
                edit[name] = _value_str(p[name], name)
        if edit.get("description") is None and "description" in edit:
            edit["description"] = ""
        if not creating and "state_event" in p:
            if p["state_event"] not in ("close", "reopen"):
                raise ApiError(400, {"error": "state_event does not have a valid value"})
            edit["state_event"] = p["state_event"]
        for name in ("labels", "add_labels", "remove_labels"):
            if name in p:
                edit[name] = _value_names(p[name], name)
        if "assignee_ids" in p:
            edit["assignee_ids"] = _value_ints(p["assignee_ids"], "assignee_ids")
        elif "assignee_id" in p:
            edit["assignee_ids"] = _value_ints(p["assignee_id"], "assignee_id")[:1]
        if "due_date" in p:
            edit["due_date"] = _value_due(p["due_date"])
        if "confidential" in p:
            edit["confidential"] = _value_bool(p["confidential"], "confidential")
        if "issue_type" in p:
            if p["issue_type"] not in ISSUE_TYPES:
                raise ApiError(400, {"error": "issue_type does not have a valid value"})
            edit["issue_type"] = p["issue_type"]
        return edit

    # ----------------------------------------------------------------- people
    def _person_fields(self, fields: dict[str, Any]) -> dict[str, Any]:
        unknown = set(fields) - _PERSON_FIELDS
        if unknown:
            raise TypeError(f"unknown issue fields: {sorted(unknown)}")
        edit: dict[str, Any] = {}
        for name in ("title", "description"):
            if name in fields:
                edit[name] = "" if fields[name] is None else str(fields[name])
        for name in ("labels", "add_labels", "remove_labels"):
            if name in fields:
                edit[name] = _label_names(fields[name])
        if "assignees" in fields:
            names = fields["assignees"] or []
            edit["assignees"] = [names] if isinstance(names, str) else list(names)
        if "due_date" in fields:
            try:
                edit["due_date"] = _value_due(fields["due_date"])
            except ApiError:
                raise ValueError(
                    f"due_date must be YYYY-MM-DD, not {fields['due_date']!r}"
                ) from None
        if "confidential" in fields:
            edit["confidential"] = bool(fields["confidential"])
        if "issue_type" in fields:
            if fields["issue_type"] not in ISSUE_TYPES:
                raise ValueError(f"issue_type must be one of {sorted(ISSUE_TYPES)}")
            edit["issue_type"] = fields["issue_type"]
        return edit

    def _person_open(
        self,
        username: str,
        project: int | str,
        title: str,
        description: str,
        fields: dict[str, Any],
    ) -> dict:
        edit = {**self._person_fields(fields), "title": str(title), "description": description}
        with self._python_api():
            record = self._project_ref(project)
            _check_text(edit)
            issue = self._open(record, username, edit, None)
            return self._issue_view(issue, single=True)

    def _person_edit(
        self, username: str, project: int | str, iid: int, edit: dict[str, Any]
    ) -> dict:
        with self._python_api():
            record, issue = self._issue_of(project, iid)
            _check_text(edit)
            self._apply_edit(record, issue, username, edit, None)
            return self._issue_view(issue, single=True)

    def _person_comment(
        self, username: str, project: int | str, iid: int, body: str, internal: bool
    ) -> dict:
        with self._python_api():
            record, issue = self._issue_of(project, iid)
            return self._comment(record, issue, username, str(body), bool(internal), None)

    def _person_delete(self, username: str, project: int | str, iid: int) -> None:
        with self._python_api():
            record, issue = self._issue_of(project, iid)
            self._remove_issue(record, issue)

    def _person_move(
        self, username: str, project: int | str, iid: int, to_project: int | str
    ) -> dict:
        with self._python_api():
            record, issue = self._issue_of(project, iid)
            target = self._project_ref(to_project)
            if target["id"] == record["id"]:
                raise ValueError("Cannot move issue to project it originates from!")
            if issue["moved_to_id"] is not None:
                raise ValueError("Cannot move issue due to insufficient permissions!")
            edit = {
                "title": issue["title"],
                "description": issue["description"],
                "labels": list(issue["labels"]),
                "assignees": list(issue["assignees"]),
                "due_date": issue["due_date"],
                "confidential": issue["confidential"],
                "issue_type": issue["issue_type"],
            }
            moved = self._open(target, username, edit, None, author=issue["author"])
            ref = f"{record['path_with_namespace']}#{issue['iid']}"
            self._system_note(target, moved, username, f"moved from {ref}")
            before = self._snapshot(issue)
            now = self._stamp(issue)
            issue.update(
                moved_to_id=moved["id"],
                state="closed",
                closed_at=now,
                closed_by=username,
                updated_at=now,
                updated_by=username,
            )
            to_ref = f"{target['path_with_namespace']}#{moved['iid']}"
            self._system_note(record, issue, username, f"moved to {to_ref}")
            self._fire_issue(record, issue, username, "close", self._changes(before, issue), None)
            return self._issue_view(moved, single=True)

    def _person_open_mr(
        self,
        username: str,
        project: int | str,
        title: str,
        description: str | None,
        source_branch: str | None,
        target_branch: str,
    ) -> dict:
        with self._python_api():
            record = self._project_ref(project)
            if source_branch is None:
                source_branch = self._branch_for(record, str(title))
            edit = {
                "title": str(title),
                "description": "" if description is None else str(description),
                "source_branch": str(source_branch),
                "target_branch": str(target_branch),
                "remove_source_branch": True,  # the UI's checkbox, ticked by default
            }
            mr = self._open_mr(record, username, edit, None)
            view = self._mr_view(mr, single=True)
            self._checked(mr)
            return view

    def _person_edit_mr(
        self, username: str, project: int | str, iid: int, edit: dict[str, Any]
    ) -> dict:
        with self._python_api():
            record, mr = self._mr_ref(project, str(iid))
            self._apply_mr_edit(record, mr, username, edit, None)
            return self._mr_view(mr, single=True)

    def _person_merge(self, username: str, project: int | str, iid: int) -> dict:
        with self._python_api():
            record, mr = self._mr_ref(project, str(iid))
            self._merge_mr(record, mr, username, None)
            return self._mr_view(mr, single=True)

    def _branch_for(self, record: dict[str, Any], title: str) -> str:
        """A source branch named after the title, not used by another open merge request."""
        slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:60].strip("-") or "patch"
        taken = {
            mr["source_branch"]
            for mr in self._merge_requests[record["id"]].values()
            if mr["state"] == "opened"
        }
        name, n = slug, 2
        while name in taken or name == DEFAULT_BRANCH:
            name, n = f"{slug}-{n}", n + 1
        return name

    # ----------------------------------------------------------------- merge request changes
    def _mr_ref(self, ref: int | str, raw_iid: str) -> tuple[dict[str, Any], dict[str, Any]]:
        iid = self._mr_iid(raw_iid)
        record = self._project_ref(ref)
        mr = self._merge_requests[record["id"]].get(iid)
        if mr is None:
            raise ApiError(404, MR_NOT_FOUND)
        return record, mr

    @staticmethod
    def _check_mr_text(edit: dict[str, Any]) -> None:
        _check_text(edit)
        errors = {
            name: ["can't be blank"]
            for name in ("source_branch", "target_branch")
            if name in edit and not (edit[name] or "").strip()
        }
        if errors:
            raise ApiError(400, {"message": errors})

    def _check_branches(
        self, record: dict[str, Any], source: str, target: str, exclude: int | None
    ) -> None:
        """MergeRequest#validate_branches: 422 for the same branch on both sides, 409 when
        another open merge request has the same source and target."""
        if source == target:
            raise ApiError(
                422, {"message": ["You can't use same project/branch for source and target"]}
            )
        for other in self._merge_requests[record["id"]].values():
            if (
                other["id"] != exclude
                and other["state"] == "opened"
                and (other["source_branch"], other["target_branch"]) == (source, target)
            ):
                text = "Another open merge request already exists for this source branch"
                raise ApiError(409, {"message": [f"{text}: !{other['iid']}"]})

    def _open_mr(
        self,
        record: dict[str, Any],
        actor: str,
        edit: dict[str, Any],
        event_uuid: str | None,
    ) -> dict[str, Any]:
        """A new merge request from a validated edit, its closing issues worked out, and its
        ``open`` webhook (``changes: {}``, ``merge_status: checking``, as GitLab sends it)."""
        edit = {**edit, "title": edit.get("title") or "", "description": edit.get("description")}
        edit["description"] = edit["description"] or ""
        self._check_mr_text(edit)
        source, target = str(edit["source_branch"]), str(edit["target_branch"])
        self._check_branches(record, source, target, None)
        mrs = self._merge_requests[record["id"]]
        now = _now()
        mr = {
            "id": self._next_mr_id,
            "iid": max(mrs, default=0) + 1,
            "project_id": record["id"],
            "title": edit["title"],
            "description": edit["description"],
            "state": "opened",
            "source_branch": source,
            "target_branch": target,
            "author": actor,
            "created_at": now,
            "updated_at": now,
            "updated_by": None,
            "last_edited_at": None,
            "last_edited_by": None,
            "merged_at": None,
            "merged_by": None,
            "closed_at": None,
            "closed_by": None,
            "merge_status": "checking",
            "remove_source_branch": edit.get("remove_source_branch"),
            "sha": secrets.token_hex(20),
            "base_sha": secrets.token_hex(20),
            "merge_commit_sha": None,
            "closes": [],
        }
        self._next_mr_id += 1
        mrs[mr["iid"]] = mr
        record["last_activity_at"] = max(record["last_activity_at"], now)
        self._cache_closes(record, mr)
        self._fire_mr(record, mr, actor, "open", {}, event_uuid)
        return mr

    @staticmethod
    def _checked(mr: dict[str, Any]) -> None:
        """The mergeability check that follows creation has finished."""
        if mr["merge_status"] == "checking":
            mr["merge_status"] = "can_be_merged"

    def _apply_mr_edit(
        self,
        record: dict[str, Any],
        mr: dict[str, Any],
        actor: str,
        edit: dict[str, Any],
        event_uuid: str | None,
    ) -> None:
        """MergeRequests::UpdateService: the state change first (``close`` or ``reopen``,
        which works out the closing issues again), then the other fields (one ``update``).
        A closed or merged request keeps its target branch; nothing unchanged fires."""
        state_event = edit.get("state_event")
        closing = state_event == "close" and mr["state"] == "opened"
        reopening = state_event == "reopen" and mr["state"] == "closed"
        fields = {
            name: edit[name]
            for name in ("title", "description")
            if name in edit and edit[name] != mr[name]
        }
        target = edit.get("target_branch")
        if target is not None and mr["state"] == "opened" and target != mr["target_branch"]:
            fields["target_branch"] = target
        self._check_mr_text(fields)
        if "target_branch" in fields or reopening:
            self._check_branches(
                record, mr["source_branch"], fields.get("target_branch", mr["target_branch"]),
                mr["id"],
            )  # fmt: skip
        if closing or reopening:
            before = dict(mr)
            now = self._stamp(mr)
            mr.update(
                state="closed" if closing else "opened",
                updated_at=now,
                closed_at=now if closing else None,
                closed_by=actor if closing else None,
            )
            record["last_activity_at"] = max(record["last_activity_at"], now)
            action = "close" if closing else "reopen"
            self._fire_mr(record, mr, actor, action, self._mr_changes(before, mr), event_uuid)
            if reopening:
                self._cache_closes(record, mr)
        if not fields:
            return
        before = dict(mr)
        now = self._stamp(mr)
        mr.update(fields, updated_at=now, updated_by=actor)
        if "title" in fields or "description" in fields:
            mr.update(last_edited_at=now, last_edited_by=actor)
        record["last_activity_at"] = max(record["last_activity_at"], now)
        self._fire_mr(record, mr, actor, "update", self._mr_changes(before, mr), event_uuid)
        self._cache_closes(record, mr)

    def _merge_mr(
        self, record: dict[str, Any], mr: dict[str, Any], actor: str, event_uuid: str | None
    ) -> None:
        """MergeService and PostMergeService: 405 unless open and not a draft; the request
        is locked, then merged (its ``merge`` webhook: ``state_id`` 4 -> 3), then each issue
        it closes is closed by the same user (each open one fires its ``close``)."""
        if mr["state"] != "opened" or _DRAFT.match(mr["title"]):
            raise ApiError(405, METHOD_NOT_ALLOWED)
        self._checked(mr)
        mr.update(state="locked", updated_at=self._stamp(mr))
        before = dict(mr)
        now = self._stamp(mr)
        mr.update(
            state="merged",
            updated_at=now,
            merged_at=now,
            merged_by=actor,
            merge_commit_sha=secrets.token_hex(20),
        )
        record["last_activity_at"] = max(record["last_activity_at"], now)
        self._fire_mr(record, mr, actor, "merge", self._mr_changes(before, mr), event_uuid)
        if mr["target_branch"] != DEFAULT_BRANCH:
            return
        for issue_record, issue in self._closing_issues(mr):
            self._apply_edit(issue_record, issue, actor, {"state_event": "close"}, event_uuid)

    def _cache_closes(self, record: dict[str, Any], mr: dict[str, Any]) -> None:
        """MergeRequest#cache_merge_request_closes_issues!: while the request is open, the
        issues its title and description close are stored (whatever their state); a closed or
        merged request keeps the list it had."""
        if mr["state"] == "opened":
            mr["closes"] = [issue["id"] for _, issue in self._referenced_closes(record, mr)]

    def _closing_issues(self, mr: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """The stored closing issues that still exist, in the order they were referenced."""
        by_id = {
            issue["id"]: (self._projects[pid], issue)
            for pid, issues in self._issues.items()
            for issue in issues.values()
        }
        return [by_id[issue_id] for issue_id in mr["closes"] if issue_id in by_id]

    def _referenced_closes(
        self, record: dict[str, Any], mr: dict[str, Any]
    ) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """MergeRequest#closes_issues: nothing unless the request targets the default branch;
        otherwise the issues that exist among those the closing statements of its title and
        description reference (links to this instance's issues, ``#N``, ``project#N``,
        ``group/project#N``), once each."""
        if mr["target_branch"] != DEFAULT_BRANCH:
            return []
        joined = " ".join(closing_statements(f"{mr['title']}\n{mr['description'] or ''}"))
        issue_link = re.compile(
            rf"{re.escape(self.url)}/{_PROJECT_REF}(?:/-)?/(?:issues|work_items)/(?P<iid>\d+)"
            r"(?:/[a-z0-9_=-]+)*/*(?:\?[a-z0-9_=-]+(?:&[a-z0-9_=-]+)*)?(?:#[a-z0-9_-]+)?",
            re.ASCII,
        )
        found: list[tuple[int, re.Match[str]]] = []
        plain = joined
        for link in _TEXT_LINK.finditer(joined):
            matched = issue_link.fullmatch(link.group(0))
            if matched:
                found.append((link.start(), matched))
            plain = plain[: link.start()] + " " * len(link.group(0)) + plain[link.end() :]
        found += [(ref.start(), ref) for ref in _SHORT_ISSUE_REF.finditer(plain)]
        out: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for _, ref in sorted(found, key=lambda pair: pair[0]):
            target = self._referenced_project(
                record, ref.group("absolute"), ref.group("namespace"), ref.group("project")
            )
            issue = None if target is None else self._issues[target["id"]].get(int(ref["iid"]))
            if issue is not None and all(issue["id"] != seen["id"] for _, seen in out):
                out.append((target, issue))
        return out

    def _referenced_project(
        self,
        record: dict[str, Any],
        absolute: str | None,
        namespace: str | None,
        project: str | None,
    ) -> dict[str, Any] | None:
        """The project a reference names: none means this one; a bare project name is in this
        project's namespace."""
        if project is None:
            return record
        if namespace:
            path = f"{namespace}/{project}"
        elif absolute:
            return None  # a top-level project: not one the emulator can hold
        else:
            path = f"{record['namespace']}/{project}"
        return self._find_project(path)

    # ----------------------------------------------------------------- issue changes
    def _new_issue(
        self,
        record: dict[str, Any],
        *,
        title: str,
        description: str,
        author: str,
        labels: list[str],
        assignees: list[str],
        due_date: str | None,
        confidential: bool,
        issue_type: str,
        created: datetime,
        updated: datetime,
    ) -> dict[str, Any]:
        issues = self._issues[record["id"]]
        positions = [i["relative_position"] for i in issues.values()]
        issue = {
            "id": self._next_issue_id,
            "iid": max(issues, default=0) + 1,
            "project_id": record["id"],
            "title": title,
            "description": description,
            "state": "opened",
            "created_at": created,
            "updated_at": updated,
            "closed_at": None,
            "closed_by": None,
            "labels": labels,
            "assignees": assignees,
            "author": author,
            "due_date": due_date,
            "confidential": confidential,
            "issue_type": issue_type,
            "user_notes_count": 0,
            "moved_to_id": None,
            "updated_by": None,
            "last_edited_at": None,
            "last_edited_by": None,
            "relative_position": max(positions, default=0) + POSITION_GAP,
        }
        self._next_issue_id += 1
        issues[issue["iid"]] = issue
        self._notes[issue["id"]] = []
        record["last_activity_at"] = max(record["last_activity_at"], updated)
        return issue

    def _open(
        self,
        record: dict[str, Any],
        actor: str,
        edit: dict[str, Any],
        event_uuid: str | None,
        *,
        author: str | None = None,
    ) -> dict[str, Any]:
        """A new issue from a validated edit, and its ``open`` webhook."""
        now = _now()
        labels = self._use_labels(record["id"], edit.get("labels"))
        labels += [
            n for n in self._use_labels(record["id"], edit.get("add_labels")) if n not in labels
        ]
        removed = set(edit.get("remove_labels") or [])
        issue = self._new_issue(
            record,
            title=edit["title"] or "",
            description=edit.get("description") or "",
            author=author or actor,
            labels=[n for n in labels if n not in removed],
            assignees=self._assignees(edit, []),
            due_date=edit.get("due_date"),
            confidential=bool(edit.get("confidential", False)),
            issue_type=edit.get("issue_type", "issue"),
            created=now,
            updated=now,
        )
        changes: dict[str, Any] = {}
        for key, value in (
            ("author_id", self._users[issue["author"]]["id"]),
            ("confidential", True if issue["confidential"] else None),
            ("created_at", self._hook_time(issue["created_at"])),
            ("description", issue["description"]),
            ("due_date", issue["due_date"]),
            ("id", issue["id"]),
            ("iid", issue["iid"]),
            ("project_id", record["id"]),
            ("relative_position", issue["relative_position"]),
            ("title", issue["title"]),
            ("updated_at", self._hook_time(issue["updated_at"])),
        ):
            if value is not None:
                previous = False if key == "confidential" else None
                changes[key] = {"previous": previous, "current": value}
        self._fire_issue(record, issue, actor, "open", changes, event_uuid)
        return issue

    def _assignees(self, edit: dict[str, Any], current: list[str]) -> list[str]:
        """The assignees an edit asks for: usernames (people) or user ids (the API; unknown
        ids and 0 are dropped, as GitLab drops users it cannot assign)."""
        if "assignees" in edit:
            names = [self._user(str(u).lstrip("@"))["username"] for u in edit["assignees"]]
        elif "assignee_ids" in edit:
            by_id = {u["id"]: u["username"] for u in self._users.values()}
            names = [by_id[i] for i in edit["assignee_ids"] if i in by_id]
        else:
            return list(current)
        names = list(dict.fromkeys(names))
        return names[:1] if not self.multiple_assignees else names

    def _stamp(self, issue: dict[str, Any]) -> datetime:
        """Now, to the millisecond, and later than the issue's last change, so that every
        event of an issue carries a newer ``updated_at`` than the one before."""
        now = _now()
        if now <= issue["updated_at"]:
            now = issue["updated_at"] + timedelta(milliseconds=1)
        return now

    @staticmethod
    def _snapshot(issue: dict[str, Any]) -> dict[str, Any]:
        return {**issue, "labels": list(issue["labels"]), "assignees": list(issue["assignees"])}

    def _apply_edit(
        self,
        record: dict[str, Any],
        issue: dict[str, Any],
        actor: str,
        edit: dict[str, Any],
        event_uuid: str | None,
    ) -> None:
        """Apply a validated edit as Issues::UpdateService does: the state change first (its
        ``close`` or ``reopen`` webhook), then the other fields (one ``update`` webhook when
        anything changed). Nothing that does not change fires anything."""
        state_event = edit.get("state_event")
        wanted = {"close": "closed", "reopen": "opened"}.get(state_event or "")
        if wanted is not None and wanted != issue["state"]:
            before = self._snapshot(issue)
            now = self._stamp(issue)
            closing = wanted == "closed"
            issue.update(
                state=wanted,
                closed_at=now if closing else None,
                closed_by=actor if closing else None,
                updated_at=now,
            )
            record["last_activity_at"] = max(record["last_activity_at"], now)
            action = "close" if closing else "reopen"
            self._fire_issue(record, issue, actor, action, self._changes(before, issue), event_uuid)
        fields: dict[str, Any] = {}
        for name in ("title", "description", "due_date", "confidential", "issue_type"):
            if name in edit and edit[name] != issue[name]:
                fields[name] = edit[name]
        labels = list(issue["labels"])
        if "labels" in edit:
            labels = self._use_labels(record["id"], edit["labels"])
        if "add_labels" in edit:
            added = self._use_labels(record["id"], edit["add_labels"])
            labels += [name for name in added if name not in labels]
        if "remove_labels" in edit:
            labels = [name for name in labels if name not in set(edit["remove_labels"])]
        if set(labels) != set(issue["labels"]):
            fields["labels"] = labels
        assignees = self._assignees(edit, issue["assignees"])
        if assignees != issue["assignees"]:
            fields["assignees"] = assignees
        if not fields:
            return
        before = self._snapshot(issue)
        now = self._stamp(issue)
        issue.update(fields, updated_at=now, updated_by=actor)
        if "title" in fields or "description" in fields:
            issue.update(last_edited_at=now, last_edited_by=actor)
        record["last_activity_at"] = max(record["last_activity_at"], now)
        self._edit_notes(record, before, issue, actor)
        self._fire_issue(record, issue, actor, "update", self._changes(before, issue), event_uuid)

    def _edit_notes(
        self, record: dict[str, Any], before: dict[str, Any], issue: dict[str, Any], actor: str
    ) -> None:
        """The system notes GitLab writes for an edit (labels and state are resource events,
        which the notes API does not list)."""
        texts = []
        if before["title"] != issue["title"]:
            texts.append(f"changed title from **{before['title']}** to **{issue['title']}**")
        if before["description"] != issue["description"]:
            texts.append("changed the description")
        if before["assignees"] != issue["assignees"]:
            added = [f"@{u}" for u in issue["assignees"] if u not in before["assignees"]]
            gone = [f"@{u}" for u in before["assignees"] if u not in issue["assignees"]]
            parts = ([f"assigned to {_and(added)}"] if added else []) + (
                [f"unassigned {_and(gone)}"] if gone else []
            )
            if parts:
                texts.append(" and ".join(parts))
        if before["due_date"] != issue["due_date"]:
            due = issue["due_date"]
            texts.append(f"changed due date to {_long_date(due)}" if due else "removed due date")
        if before["confidential"] != issue["confidential"]:
            texts.append(
                "made the issue confidential"
                if issue["confidential"]
                else "made the issue visible to everyone"
            )
        for text in texts:
            self._system_note(record, issue, actor, text)

    def _remove_issue(self, record: dict[str, Any], issue: dict[str, Any]) -> None:
        """Delete an issue and its notes; GitLab sends no webhook for a deletion."""
        del self._issues[record["id"]][issue["iid"]]
        self._notes.pop(issue["id"], None)

    # ----------------------------------------------------------------- notes
    def _new_note(
        self,
        issue: dict[str, Any],
        author: str,
        body: str,
        *,
        system: bool,
        internal: bool,
        moment: datetime,
    ) -> dict[str, Any]:
        note = {
            "id": self._next_note_id,
            "body": body,
            "author": author,
            "created_at": moment,
            "updated_at": moment,
            "system": system,
            "internal": internal,
            "issue_id": issue["id"],
            "project_id": issue["project_id"],
            "iid": issue["iid"],
            "discussion_id": secrets.token_hex(20),
        }
        self._next_note_id += 1
        self._notes.setdefault(issue["id"], []).append(note)
        return note

    def _system_note(
        self, record: dict[str, Any], issue: dict[str, Any], actor: str, text: str
    ) -> None:
        self._new_note(issue, actor, text, system=True, internal=False, moment=issue["updated_at"])

    def _comment(
        self,
        record: dict[str, Any],
        issue: dict[str, Any],
        actor: str,
        body: str,
        internal: bool,
        event_uuid: str | None,
    ) -> dict[str, Any]:
        """A comment: its quick actions run (as the commenter), the rest becomes a note that
        touches the issue and fires a Note Hook. A note of quick actions only answers what
        they changed, as GitLab's 202 does."""
        text, edit, summary, changes = self._quick_actions(record, issue, actor, body)
        if not text.strip() and not summary:
            raise ApiError(400, {"message": '400 Bad request - Note {:note=>["can\'t be blank"]}'})
        if len(text) > DESCRIPTION_MAX:
            raise ApiError(
                400,
                {
                    "message": '400 Bad request - Note {:note=>["is too long (maximum is '
                    f'{DESCRIPTION_MAX} characters)"]}}'
                },
            )
        if edit:
            _check_text(edit)
        note = None
        if text.strip():
            moment = self._stamp(issue)
            note = self._new_note(
                issue, actor, text, system=False, internal=internal, moment=moment
            )
            issue["updated_at"] = moment
            issue["user_notes_count"] += 1
            record["last_activity_at"] = max(record["last_activity_at"], moment)
            confidential = internal or issue["confidential"]
            self._fire(
                record["id"],
                "confidential_note_events" if confidential else "note_events",
                CONFIDENTIAL_NOTE_HOOK if confidential else NOTE_HOOK,
                "create",
                self._note_payload(record, issue, note, actor),
                event_uuid,
            )
        if edit:
            self._apply_edit(record, issue, actor, edit, event_uuid)
        if note is None:
            return {"commands_changes": changes, "summary": summary}
        return {**self._note_view(note), "commands_changes": changes}

    _QUICK = re.compile(r"^/(\w+)(?:[ \t]+(.*?))?[ \t]*$")

    def _quick_actions(
        self, record: dict[str, Any], issue: dict[str, Any], actor: str, body: str
    ) -> tuple[str, dict[str, Any], list[str], dict[str, Any]]:
        """The quick actions a mirrored comment could trip: ``/close``, ``/reopen``, ``/label``,
        ``/unlabel``, ``/relabel``, ``/assign``, ``/unassign``, ``/due`` (YYYY-MM-DD),
        ``/remove_due_date``, ``/title``, ``/confidential``, each alone on a line outside code
        fences. Returns the text left, the edit, the summary and ``commands_changes``."""
        kept: list[str] = []
        edit: dict[str, Any] = {}
        summary: list[str] = []
        changes: dict[str, Any] = {}
        labels, assignees = list(issue["labels"]), list(issue["assignees"])
        fenced = False
        for line in body.split("\n"):
            if line.lstrip().startswith("```"):
                fenced = not fenced
            match = None if fenced else self._QUICK.match(line)
            command, arg = (match.group(1).lower(), match.group(2) or "") if match else ("", "")
            names = [n.strip('"') for n in re.findall(r'~?("[^"]+"|[^\s~]+)', arg)]
            users = [actor if u == "me" else u.lstrip("@") for u in arg.split()]
            if command in ("close", "reopen") and not arg:
                edit["state_event"] = changes["state_event"] = command
                summary.append(f"{'Closed' if command == 'close' else 'Reopened'} this issue.")
            elif command == "label" and names:
                labels += [name for name in names if name not in labels]
                edit["labels"] = labels
                summary.append(f"Added {_label_refs(names)}.")
            elif command == "relabel" and names:
                labels = list(dict.fromkeys(names))
                edit["labels"] = labels
                summary.append(f"Replaced all labels with {_label_refs(names)}.")
            elif command == "unlabel":
                labels = [name for name in labels if names and name not in names]
                edit["labels"] = labels
                summary.append(f"Removed {_label_refs(names)}." if names else "Removed all labels.")
            elif command == "assign" and users:
                assignees += [user for user in users if user not in assignees]
                edit["assignees"] = assignees
                summary.append(f"Assigned {_and(['@' + user for user in users])}.")
            elif command == "unassign":
                gone = users or list(assignees)
                assignees = [user for user in assignees if user not in gone]
                edit["assignees"] = assignees
                summary.append("Removed assignees.")
            elif command == "due" and re.fullmatch(r"\d{4}-\d{2}-\d{2}", arg):
                edit["due_date"] = changes["due_date"] = _value_due(arg)
                summary.append(f"Set the due date to {_long_date(arg)}.")
            elif command == "remove_due_date" and not arg:
                edit["due_date"] = changes["due_date"] = None
                summary.append("Removed the due date.")
            elif command == "title" and arg:
                edit["title"] = changes["title"] = arg
                summary.append(f'Changed the title to "{arg}".')
            elif command == "confidential" and not arg:
                edit["confidential"] = changes["confidential"] = True
                summary.append("Made this issue confidential.")
            else:
                kept.append(line)
        if "labels" in edit:
            changes["label_ids"] = [self._label(record["id"], n)["id"] for n in edit["labels"]]
        if "assignees" in edit:
            changes["assignee_ids"] = [self._user(u)["id"] for u in edit["assignees"]]
        return "\n".join(kept).strip("\n"), edit, summary, changes

    # ----------------------------------------------------------------- webhook payloads
    def _hook_time(self, moment: datetime | None) -> str | None:
        if moment is None:
            return None
        if self.hook_timestamps == "utc":
            return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return _iso(moment)

    def _hook_user(self, username: str) -> dict[str, Any]:
        view = self._user_view(self._users[username])
        return {
            "id": view["id"],
            "name": view["name"],
            "username": view["username"],
            "avatar_url": view["avatar_url"],
            "email": "[REDACTED]",
        }

    def _hook_project(self, record: dict[str, Any]) -> dict[str, Any]:
        full_path = record["path_with_namespace"]
        web_url = f"{self.url}/{full_path}"
        ssh_url = f"git@{self._host}:{full_path}.git"
        return {
            "id": record["id"],
            "name": record["name"],
            "description": None,
            "web_url": web_url,
            "avatar_url": None,
            "git_ssh_url": ssh_url,
            "git_http_url": f"{web_url}.git",
            "namespace": record["namespace"].rpartition("/")[2],
            "visibility_level": 0,
            "path_with_namespace": full_path,
            "default_branch": "main",
            "ci_config_path": None,
            "homepage": web_url,
            "url": ssh_url,
            "ssh_url": ssh_url,
            "http_url": f"{web_url}.git",
        }

    def _hook_repository(self, record: dict[str, Any]) -> dict[str, Any]:
        web_url = f"{self.url}/{record['path_with_namespace']}"
        return {
            "name": record["name"],
            "url": f"git@{self._host}:{record['path_with_namespace']}.git",
            "description": None,
            "homepage": web_url,
        }

    def _hook_labels(self, project_id: int, names: list[str]) -> list[dict[str, Any]]:
        labels = self._labels[project_id]
        return [
            {
                "id": labels[name]["id"],
                "title": name,
                "color": labels[name]["color"],
                "project_id": project_id,
                "created_at": self._hook_time(labels[name]["created_at"]),
                "updated_at": self._hook_time(labels[name]["updated_at"]),
                "template": False,
                "description": labels[name]["description"],
                "type": "ProjectLabel",
                "group_id": None,
            }
            for name in sorted(names)
        ]

    def _issue_url(self, issue: dict[str, Any]) -> str:
        full_path = self._projects[issue["project_id"]]["path_with_namespace"]
        return f"{self.url}/{full_path}/-/issues/{issue['iid']}"

    def _user_id(self, username: str | None) -> int | None:
        return None if username is None else self._users[username]["id"]

    def _issue_hook_attrs(self, issue: dict[str, Any]) -> dict[str, Any]:
        """``object_attributes`` of an issue webhook (without ``action``)."""
        assignee_ids = [self._users[u]["id"] for u in issue["assignees"]]
        attrs = {
            "author_id": self._user_id(issue["author"]),
            "closed_at": self._hook_time(issue["closed_at"]),
            "confidential": issue["confidential"],
            "created_at": self._hook_time(issue["created_at"]),
            "description": issue["description"],
            "discussion_locked": None,
            "due_date": issue["due_date"],
            "id": issue["id"],
            "iid": issue["iid"],
            "last_edited_at": self._hook_time(issue.get("last_edited_at")),
            "last_edited_by_id": self._user_id(issue.get("last_edited_by")),
            "milestone_id": None,
            "moved_to_id": issue["moved_to_id"],
            "duplicated_to_id": None,
            "project_id": issue["project_id"],
            "relative_position": issue.get("relative_position"),
            "state_id": 1 if issue["state"] == "opened" else 2,
            "time_estimate": 0,
            "title": issue["title"],
            "updated_at": self._hook_time(issue["updated_at"]),
            "updated_by_id": self._user_id(issue.get("updated_by")),
            "weight": None,
            "health_status": None,
            "type": HOOK_TYPES[issue["issue_type"]],
            "url": self._issue_url(issue),
            "total_time_spent": 0,
            "time_change": 0,
            "human_total_time_spent": None,
            "human_time_change": None,
            "human_time_estimate": None,
            "assignee_ids": assignee_ids,
            "assignee_id": assignee_ids[0] if assignee_ids else None,
            "labels": self._hook_labels(issue["project_id"], issue["labels"]),
            "state": issue["state"],
            "severity": "unknown",
            "customer_relations_contacts": [],
        }
        if issue["issue_type"] == "incident":
            attrs["escalation_status"] = "triggered"
        return attrs

    def _changes(self, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
        """``changes``: every attribute that changed, by name, then labels and assignees."""
        columns = {
            "closed_at": lambda i: self._hook_time(i["closed_at"]),
            "confidential": lambda i: i["confidential"],
            "description": lambda i: i["description"],
            "due_date": lambda i: i["due_date"],
            "last_edited_at": lambda i: self._hook_time(i.get("last_edited_at")),
            "last_edited_by_id": lambda i: self._user_id(i.get("last_edited_by")),
            "moved_to_id": lambda i: i["moved_to_id"],
            "state_id": lambda i: 1 if i["state"] == "opened" else 2,
            "title": lambda i: i["title"],
            "updated_at": lambda i: self._hook_time(i["updated_at"]),
            "updated_by_id": lambda i: self._user_id(i.get("updated_by")),
        }
        changes = {}
        for name in sorted(columns):
            previous, current = columns[name](before), columns[name](after)
            if previous != current:
                changes[name] = {"previous": previous, "current": current}
        if set(before["labels"]) != set(after["labels"]):
            pid = after["project_id"]
            changes["labels"] = {
                "previous": self._hook_labels(pid, before["labels"]),
                "current": self._hook_labels(pid, after["labels"]),
            }
        if before["assignees"] != after["assignees"]:
            changes["assignees"] = {
                "previous": [self._hook_user(u) for u in before["assignees"]],
                "current": [self._hook_user(u) for u in after["assignees"]],
            }
        return changes

    def _issue_payload(
        self,
        record: dict[str, Any],
        issue: dict[str, Any],
        actor: str,
        action: str,
        changes: dict[str, Any],
    ) -> dict[str, Any]:
        """An issue webhook body, as tests/fixtures/01-issue-open.json: ``object_kind`` is
        ``issue`` for issues and ``work_item`` for other types; ``assignees`` only when there
        are some."""
        kind = "issue" if issue["issue_type"] == "issue" else "work_item"
        payload = {
            "object_kind": kind,
            "event_type": f"confidential_{kind}" if issue["confidential"] else kind,
            "user": self._hook_user(actor),
            "project": self._hook_project(record),
            "object_attributes": {**self._issue_hook_attrs(issue), "action": action},
            "labels": self._hook_labels(record["id"], issue["labels"]),
            "changes": changes,
            "repository": self._hook_repository(record),
        }
        if issue["assignees"]:
            payload["assignees"] = [self._hook_user(u) for u in issue["assignees"]]
        return payload

    def _note_payload(
        self, record: dict[str, Any], issue: dict[str, Any], note: dict[str, Any], actor: str
    ) -> dict[str, Any]:
        """A Note Hook body for a comment on an issue, as tests/fixtures/07-note-on-issue.json."""
        confidential = note["internal"] or issue["confidential"]
        attrs = {
            "attachment": None,
            "author_id": self._user_id(note["author"]),
            "change_position": None,
            "commit_id": None,
            "created_at": self._hook_time(note["created_at"]),
            "discussion_id": note["discussion_id"],
            "id": note["id"],
            "line_code": None,
            "note": note["body"],
            "noteable_id": issue["id"],
            "noteable_type": "Issue",
            "original_position": None,
            "position": None,
            "project_id": record["id"],
            "resolved_at": None,
            "resolved_by_id": None,
            "resolved_by_push": None,
            "st_diff": None,
            "system": False,
            "type": None,
            "updated_at": self._hook_time(note["updated_at"]),
            "updated_by_id": None,
            "description": note["body"],
            "url": f"{self._issue_url(issue)}#note_{note['id']}",
            "internal": note["internal"],
            "action": "create",
        }
        project = self._hook_project(record)
        del project["ci_config_path"]
        # The issue as Issue#hook_attrs has it here: no type, weight, health or contacts.
        leaves = ("type", "weight", "health_status", "customer_relations_contacts")
        issue_attrs = {k: v for k, v in self._issue_hook_attrs(issue).items() if k not in leaves}
        return {
            "object_kind": "note",
            "event_type": "confidential_note" if confidential else "note",
            "user": self._hook_user(actor),
            "project_id": record["id"],
            "project": project,
            "object_attributes": attrs,
            "repository": self._hook_repository(record),
            "issue": issue_attrs,
        }

    def _fire_issue(
        self,
        record: dict[str, Any],
        issue: dict[str, Any],
        actor: str,
        action: str,
        changes: dict[str, Any],
        event_uuid: str | None,
    ) -> None:
        confidential = issue["confidential"]
        self._fire(
            record["id"],
            "confidential_issues_events" if confidential else "issues_events",
            CONFIDENTIAL_ISSUE_HOOK if confidential else ISSUE_HOOK,
            action,
            self._issue_payload(record, issue, actor, action, changes),
            event_uuid,
        )

    def _mr_url(self, mr: dict[str, Any]) -> str:
        full_path = self._projects[mr["project_id"]]["path_with_namespace"]
        return f"{self.url}/{full_path}/-/merge_requests/{mr['iid']}"

    @staticmethod
    def _detailed_merge_status(mr: dict[str, Any]) -> str:
        if mr["state"] != "opened":
            return "not_open"
        if mr["merge_status"] == "checking":
            return "checking"
        return "draft_status" if _DRAFT.match(mr["title"]) else "mergeable"

    def _mr_hook_attrs(self, record: dict[str, Any], mr: dict[str, Any]) -> dict[str, Any]:
        """``object_attributes`` of a Merge Request Hook (without ``action``), as
        Gitlab::HookData::MergeRequestBuilder builds it: no assignees, reviewers, labels,
        milestone or pipeline here."""
        draft = bool(_DRAFT.match(mr["title"]))
        author = self._users[mr["author"]]
        web_url = f"{self.url}/{record['path_with_namespace']}"
        return {
            "assignee_id": None,
            "author_id": author["id"],
            "created_at": self._hook_time(mr["created_at"]),
            "description": mr["description"],
            "draft": draft,
            "head_pipeline_id": None,
            "id": mr["id"],
            "iid": mr["iid"],
            "last_edited_at": self._hook_time(mr["last_edited_at"]),
            "last_edited_by_id": self._user_id(mr["last_edited_by"]),
            "merge_commit_sha": mr["merge_commit_sha"],
            "merge_error": None,
            "merge_params": {"force_remove_source_branch": mr["remove_source_branch"]},
            "merge_status": mr["merge_status"],
            "merge_user_id": self._user_id(mr["merged_by"]),
            "merge_when_pipeline_succeeds": False,
            "milestone_id": None,
            "reviewer_ids": [],
            "source_branch": mr["source_branch"],
            "source_project_id": record["id"],
            "state_id": MR_STATE_IDS[mr["state"]],
            "target_branch": mr["target_branch"],
            "target_project_id": record["id"],
            "time_estimate": 0,
            "title": mr["title"],
            "updated_at": self._hook_time(mr["updated_at"]),
            "updated_by_id": self._user_id(mr["updated_by"]),
            "prepared_at": self._hook_time(mr["created_at"]),
            "merged_at": self._hook_time(mr["merged_at"]),
            "assignee_ids": [],
            "blocking_discussions_resolved": True,
            "detailed_merge_status": self._detailed_merge_status(mr),
            "first_contribution": False,
            "human_time_change": None,
            "human_time_estimate": None,
            "human_total_time_spent": None,
            "labels": [],
            "last_commit": {
                "id": mr["sha"],
                "message": f"{mr['title']}\n",
                "title": mr["title"],
                "timestamp": _iso(mr["created_at"]),
                "url": f"{web_url}/-/commit/{mr['sha']}",
                "author": {"name": author["name"], "email": f"{author['username']}@example.com"},
            },
            "source": self._hook_project(record),
            "state": mr["state"],
            "target": self._hook_project(record),
            "time_change": 0,
            "total_time_spent": 0,
            "url": self._mr_url(mr),
            "work_in_progress": draft,
        }

    def _mr_changes(self, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
        """``changes`` of a Merge Request Hook: the columns the last save changed."""
        columns = {
            "description": lambda m: m["description"],
            "draft": lambda m: bool(_DRAFT.match(m["title"])),
            "last_edited_at": lambda m: self._hook_time(m["last_edited_at"]),
            "last_edited_by_id": lambda m: self._user_id(m["last_edited_by"]),
            "state_id": lambda m: MR_STATE_IDS[m["state"]],
            "target_branch": lambda m: m["target_branch"],
            "title": lambda m: m["title"],
            "updated_at": lambda m: self._hook_time(m["updated_at"]),
            "updated_by_id": lambda m: self._user_id(m["updated_by"]),
        }
        changes = {}
        for name in sorted(columns):
            previous, current = columns[name](before), columns[name](after)
            if previous != current:
                changes[name] = {"previous": previous, "current": current}
        return changes

    def _mr_payload(
        self,
        record: dict[str, Any],
        mr: dict[str, Any],
        actor: str,
        action: str,
        changes: dict[str, Any],
    ) -> dict[str, Any]:
        """A Merge Request Hook body, as tests/fixtures/08-merge-request-open.json. Like
        GitLab's, it does not say which issues the request closes (``closes_issues`` does)."""
        return {
            "object_kind": "merge_request",
            "event_type": "merge_request",
            "user": self._hook_user(actor),
            "project": self._hook_project(record),
            "object_attributes": {**self._mr_hook_attrs(record, mr), "action": action},
            "labels": [],
            "changes": changes,
            "repository": self._hook_repository(record),
        }

    def _fire_mr(
        self,
        record: dict[str, Any],
        mr: dict[str, Any],
        actor: str,
        action: str,
        changes: dict[str, Any],
        event_uuid: str | None,
    ) -> None:
        payload = self._mr_payload(record, mr, actor, action, changes)
        self._fire(
            record["id"], "merge_requests_events", MERGE_REQUEST_HOOK, action, payload, event_uuid
        )

    def _fire(
        self,
        project_id: int,
        trigger: str,
        event: str,
        action: str | None,
        payload: dict[str, Any],
        event_uuid: str | None,
    ) -> None:
        """Queue the event for each of the project's hooks that has ``trigger`` ticked: the
        body is built now, once; each hook gets its own ``Idempotency-Key``."""
        hooks = [h for h in self._hooks.values() if h["project_id"] == project_id and h[trigger]]
        if not hooks:
            return
        body = hook_json(payload)
        event_uuid = event_uuid or str(uuid.uuid4())
        for hook in hooks:
            self._enqueue(
                HookRequest(
                    hook["id"], hook["url"], event, action, body, str(uuid.uuid4()), event_uuid
                )
            )

    def _enqueue(self, request: HookRequest) -> None:
        with self._hook_cv:
            self._hook_queue.append(request)
            if self._hook_thread is None or not self._hook_thread.is_alive():
                self._hook_stop = False
                self._hook_thread = threading.Thread(
                    target=self._hook_loop, name=f"gitlab-hooks-{self._port}", daemon=True
                )
                self._hook_thread.start()
            self._hook_cv.notify_all()

    def _hook_loop(self) -> None:
        while True:
            with self._hook_cv:
                while not self._hook_stop and (self._hook_paused or not self._hook_queue):
                    self._hook_cv.wait()
                if self._hook_stop:
                    return
                request = self._hook_queue.popleft()
                self._hook_busy = True
            try:
                self._deliver(request)
            except Exception as exc:  # keep delivering the rest, and say what went wrong
                request.status, request.error = 0, f"{type(exc).__name__}: {exc}"
            finally:
                with self._hook_cv:
                    self._hook_log.append(request)
                    self._hook_busy = False
                    self._hook_cv.notify_all()

    def _deliver(self, request: HookRequest) -> None:
        """One attempt, never retried, with the hook's settings as they are now."""
        with self._lock:
            hook = self._hooks.get(request.hook_id)
            if hook is None or not self._hook_executable(hook):
                request.dropped = True
                return
            secret, signing, timeout = hook["token"], hook["signing_token"], self.hook_timeout
        stamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "Idempotency-Key": request.idempotency_key,
            "X-Gitlab-Event": request.event,
            "X-Gitlab-Webhook-UUID": str(uuid.uuid4()),
            "X-Gitlab-Instance": self.url,
            "X-Gitlab-Event-UUID": request.event_uuid,
        }
        if secret:
            headers["X-Gitlab-Token"] = secret
        headers["webhook-id"] = request.idempotency_key
        headers["webhook-timestamp"] = str(stamp)
        if signing:
            headers["webhook-signature"] = sign_webhook(
                signing, request.idempotency_key, stamp, request.body
            )
        request.headers = headers
        request.sent_at = time.time()
        started = time.monotonic()
        request.status, request.error = _post(request.url, request.body, headers, timeout)
        request.seconds = time.monotonic() - started
        with self._lock:
            hook = self._hooks.get(request.hook_id)
            if hook is not None:
                self._hook_outcome(hook, 200 <= request.status < 400)

    @staticmethod
    def _hook_executable(hook: dict[str, Any]) -> bool:
        until = hook["disabled_until"]
        return not hook["disabled"] and (until is None or time.time() >= until)

    def _hook_outcome(self, hook: dict[str, Any], ok: bool) -> None:
        """2xx and 3xx succeed; anything else, a timeout or no answer fails. An auto_disable
        hook is disabled for ``hook_backoff`` seconds at the 4th failure in a row, twice as
        long at each further one (up to a day), and for good at the 40th."""
        if ok:
            hook.update(failures=0, disabled_until=None)
            return
        hook["failures"] += 1
        failures = hook["failures"]
        if not hook["auto_disable"] or failures < HOOK_FAILURES_TO_DISABLE:
            return
        if failures >= HOOK_FAILURES_FOR_GOOD:
            hook["disabled"] = True
            return
        backoff = self.hook_backoff * 2 ** (failures - HOOK_FAILURES_TO_DISABLE)
        hook["disabled_until"] = time.time() + min(backoff, HOOK_MAX_BACKOFF)

    # ----------------------------------------------------------------- pagination
    def _page_headers(
        self, request: _Request, page: int, per_page: int, total: int, any_rows: bool
    ) -> dict[str, str]:
        """GitLab's offset pagination headers, including its rules for out-of-range pages and
        for listings too large to count."""
        counted = total <= COUNT_LIMIT
        if counted:
            pages = math.ceil(total / per_page)
            next_page = page + 1 if page < pages else None
            prev_page = page - 1 if 1 < page <= pages else None
        else:
            next_page = page + 1 if page * per_page < total else None
            prev_page = page - 1 if page > 1 and any_rows else None
        last_page = max(1, math.ceil(total / per_page))
        links = []
        if prev_page:
            links.append(f'<{self._page_url(request, prev_page, per_page)}>; rel="prev"')
        if next_page:
            links.append(f'<{self._page_url(request, next_page, per_page)}>; rel="next"')
        links.append(f'<{self._page_url(request, 1, per_page)}>; rel="first"')
        if counted:
            links.append(f'<{self._page_url(request, last_page, per_page)}>; rel="last"')
        headers = {
            "X-Per-Page": str(per_page),
            "X-Page": str(page),
            "X-Next-Page": str(next_page or ""),
            "X-Prev-Page": str(prev_page or ""),
            "Link": ", ".join(links),
        }
        if counted:
            headers.update({"X-Total": str(total), "X-Total-Pages": str(last_page)})
        return headers

    def _page_url(self, request: _Request, page: int, per_page: int) -> str:
        """The same request with another page: every other query parameter kept, keys sorted
        as Rails' ``to_query`` does, on the host the request came in on."""
        kept = [(k, v) for k, v in request.pairs if k not in ("page", "per_page")]
        kept += [("page", str(page)), ("per_page", str(per_page))]
        kept.sort(key=lambda pair: pair[0])
        host = request.host or f"{self._host}:{self._port}"
        return f"http://{host}{request.path}?{urlencode(kept)}"

    # ----------------------------------------------------------------- state access
    def _find_project(self, ref: int | str) -> dict[str, Any] | None:
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            return self._projects.get(int(ref))
        wanted = str(ref).strip("/").lower()
        for record in self._projects.values():
            if record["path_with_namespace"].lower() == wanted:
                return record
        return None

    def _project_ref(self, ref: int | str) -> dict[str, Any]:
        record = self._find_project(ref)
        if record is None:
            raise ApiError(404, PROJECT_NOT_FOUND)
        return record

    def _issue_ref(self, ref: int | str, raw_iid: str) -> tuple[dict[str, Any], dict[str, Any]]:
        iid = self._iid(raw_iid)
        record = self._project_ref(ref)
        issue = self._issues[record["id"]].get(iid)
        if issue is None:
            raise ApiError(404, ISSUE_NOT_FOUND)
        return record, issue

    def _issue_of(self, project: int | str, iid: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        return self._issue_ref(project, str(iid))

    def _user(self, username: str, name: str | None = None) -> dict[str, Any]:
        user = self._users.get(username)
        if user is None:
            user = {
                "id": len(self._users) + 1,
                "username": username,
                "name": name or username.replace(".", " ").replace("_", " ").title(),
                "created_at": _now(),
            }
            self._users[username] = user
        return user

    def _add_token(
        self,
        token: str,
        username: str,
        scopes: Any,
        name: str | None,
        expires_at: str | None,
    ) -> dict[str, Any]:
        if isinstance(scopes, str):
            scopes = scopes.replace(",", " ").split()
        scopes = [str(scope) for scope in scopes or ()]
        if not scopes:
            raise ValueError("a token needs at least one scope")
        try:
            expires = _due(expires_at)
        except ValueError:
            raise ValueError(f"expires_at must be YYYY-MM-DD, not {expires_at!r}") from None
        record = {
            "id": self._next_token_id,
            "token": token,
            "name": name or "gitlab2trello",
            "user": self._user(username)["username"],
            "scopes": scopes,
            "revoked": False,
            "created_at": _now(),
            "last_used_at": None,
            "expires_at": expires,
        }
        self._next_token_id += 1
        self._tokens[token] = record
        return record

    @staticmethod
    def _expired(record: dict[str, Any]) -> bool:
        expires = record["expires_at"]
        return expires is not None and datetime.now(UTC).date().isoformat() >= expires

    def _label(self, project_id: int, name: str) -> dict[str, Any]:
        labels = self._labels[project_id]
        if name not in labels:
            created = _now()
            labels[name] = {
                "id": self._next_label_id,
                "name": name,
                "color": LABEL_DEFAULT_COLOR,
                "description": None,
                "created_at": created,
                "updated_at": created,
            }
            self._next_label_id += 1
        return labels[name]

    def _use_labels(self, project_id: int, names: Any) -> list[str]:
        return [self._label(project_id, name)["name"] for name in _label_names(names)]

    # ----------------------------------------------------------------- REST views
    def _user_view(self, user: dict[str, Any]) -> dict[str, Any]:
        digest = hashlib.sha256(f"{user['username']}@example.com".encode()).hexdigest()
        return {
            "id": user["id"],
            "username": user["username"],
            "name": user["name"],
            "state": "active",
            "locked": False,
            "avatar_url": f"https://www.gravatar.com/avatar/{digest}?s=80&d=identicon",
            "web_url": f"{self.url}/{user['username']}",
        }

    def _token_view(self, record: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": record["id"],
            "name": record["name"],
            "revoked": record["revoked"],
            "created_at": _iso(record["created_at"]),
            "description": None,
            "scopes": list(record["scopes"]),
            "user_id": self._users[record["user"]]["id"],
            "last_used_at": _iso(record["last_used_at"]),
            "active": not record["revoked"] and not self._expired(record),
            "expires_at": record["expires_at"],
        }

    def _hook_view(self, hook: dict[str, Any]) -> dict[str, Any]:
        until = hook["disabled_until"]
        if hook["disabled"]:
            alert = "disabled"
        elif until is not None and time.time() < until:
            alert = "temporarily_disabled"
        else:
            alert = "executable"
        return {
            "id": hook["id"],
            "url": hook["url"],
            "name": None,
            "description": None,
            "project_id": hook["project_id"],
            "created_at": _iso(hook["created_at"]),
            "push_events": False,
            "tag_push_events": False,
            "enable_ssl_verification": True,
            "token_present": bool(hook["token"]),
            "signing_token_present": bool(hook["signing_token"]),
            "alert_status": alert,
            "disabled_until": (
                _iso(_ms(datetime.fromtimestamp(until, UTC))) if alert != "executable" and until
                else None
            ),
            **{trigger: hook[trigger] for trigger in HOOK_TRIGGERS},
            "auto_disable": hook["auto_disable"],
            "failures": hook["failures"],
        }  # fmt: skip

    def _note_view(self, note: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": note["id"],
            "type": None,
            "body": note["body"],
            "attachment": None,
            "author": self._user_view(self._users[note["author"]]),
            "created_at": _iso(note["created_at"]),
            "updated_at": _iso(note["updated_at"]),
            "system": note["system"],
            "noteable_id": note["issue_id"],
            "noteable_type": "Issue",
            "project_id": note["project_id"],
            "resolvable": False,
            "confidential": note["internal"],
            "internal": note["internal"],
            "imported": False,
            "imported_from": "none",
            "noteable_iid": note["iid"],
        }

    @staticmethod
    def _label_view(label: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": label["id"],
            "name": label["name"],
            "color": label["color"],
            "description": label["description"],
            "description_html": label["description"] or "",
            "text_color": _text_color(label["color"]),
        }

    def _project_view(self, record: dict[str, Any]) -> dict[str, Any]:
        full_path = record["path_with_namespace"]
        namespace = record["namespace"]
        web_url = f"{self.url}/{full_path}"
        api = f"{self.api_url}/projects/{record['id']}"
        opened = sum(1 for i in self._issues[record["id"]].values() if i["state"] == "opened")
        return {
            "id": record["id"],
            "description": None,
            "name": record["name"],
            "name_with_namespace": f"{namespace.replace('/', ' / ')} / {record['name']}",
            "path": record["path"],
            "path_with_namespace": full_path,
            "created_at": _iso(record["created_at"]),
            "default_branch": "main",
            "tag_list": [],
            "topics": [],
            "ssh_url_to_repo": f"git@{self._host}:{full_path}.git",
            "http_url_to_repo": f"{web_url}.git",
            "web_url": web_url,
            "readme_url": None,
            "avatar_url": None,
            "forks_count": 0,
            "star_count": 0,
            "last_activity_at": _iso(record["last_activity_at"]),
            "namespace": {
                "id": record["namespace_id"],
                "name": namespace.rpartition("/")[2],
                "path": namespace.rpartition("/")[2],
                "kind": "group",
                "full_path": namespace,
                "parent_id": None,
                "avatar_url": None,
                "web_url": f"{self.url}/groups/{namespace}",
            },
            "visibility": "private",
            "archived": False,
            "empty_repo": True,
            "issues_enabled": True,
            "open_issues_count": opened,
            "creator_id": self._users[self._default_author]["id"],
            "_links": {
                "self": api,
                "issues": f"{api}/issues",
                "merge_requests": f"{api}/merge_requests",
                "repo_branches": f"{api}/repository/branches",
                "labels": f"{api}/labels",
                "events": f"{api}/events",
                "members": f"{api}/members",
                "cluster_agents": f"{api}/cluster_agents",
            },
        }

    def _issue_view(
        self, issue: dict[str, Any], *, single: bool, label_details: bool = False
    ) -> dict[str, Any]:
        record = self._projects[issue["project_id"]]
        full_path = record["path_with_namespace"]
        iid = issue["iid"]
        api = f"{self.api_url}/projects/{record['id']}"
        names = sorted(issue["labels"])
        if label_details:
            project_labels = self._labels[record["id"]]
            labels: list[Any] = [self._label_view(project_labels[n]) for n in names]
        else:
            labels = names
        assignees = [self._user_view(self._users[u]) for u in issue["assignees"]]
        closed_by = issue["closed_by"]
        view = {
            "id": issue["id"],
            "iid": iid,
            "project_id": record["id"],
            "title": issue["title"],
            "description": issue["description"],
            "state": issue["state"],
            "created_at": _iso(issue["created_at"]),
            "updated_at": _iso(issue["updated_at"]),
            "closed_at": _iso(issue["closed_at"]),
            "closed_by": self._user_view(self._users[closed_by]) if closed_by else None,
            "labels": labels,
            "milestone": None,
            "assignees": assignees,
            "author": self._user_view(self._users[issue["author"]]),
            "type": ISSUE_TYPES[issue["issue_type"]],
            "assignee": assignees[0] if assignees else None,
            "user_notes_count": issue["user_notes_count"],
            "merge_requests_count": 0,
            "upvotes": 0,
            "downvotes": 0,
            "due_date": issue["due_date"],
            "imported": False,
            "imported_from": "none",
            "confidential": issue["confidential"],
            "discussion_locked": None,
            "issue_type": issue["issue_type"],
            "severity": "UNKNOWN",
            "web_url": f"{self.url}/{full_path}/-/issues/{iid}",
            "time_stats": {
                "time_estimate": 0,
                "total_time_spent": 0,
                "human_time_estimate": None,
                "human_total_time_spent": None,
            },
            "task_completion_status": {"count": 0, "completed_count": 0},
            "weight": None,
            "blocking_issues_count": 0,
            "has_tasks": False,
            "task_status": "0 of 0 checklist items completed",
            "_links": {
                "self": f"{api}/issues/{iid}",
                "notes": f"{api}/issues/{iid}/notes",
                "award_emoji": f"{api}/issues/{iid}/award_emoji",
                "project": api,
                "closed_as_duplicate_of": None,
            },
            "references": {"short": f"#{iid}", "relative": f"#{iid}", "full": f"{full_path}#{iid}"},
            "moved_to_id": issue["moved_to_id"],
            "service_desk_reply_to": None,
            "epic_iid": None,
            "epic": None,
            "iteration": None,
            "health_status": None,
        }
        if single:
            view["subscribed"] = False
        return view

    def _issue_basic_view(self, issue: dict[str, Any]) -> dict[str, Any]:
        """An issue as API::Entities::IssueBasic shows it (``closes_issues``): the listing's
        form without what only API::Entities::Issue adds."""
        only_issue = (
            "has_tasks", "task_status", "_links", "references", "severity", "moved_to_id",
            "service_desk_reply_to", "epic_iid", "epic", "iteration", "health_status",
        )  # fmt: skip
        view = self._issue_view(issue, single=False)
        return {key: value for key, value in view.items() if key not in only_issue}

    def _mr_view(self, mr: dict[str, Any], *, single: bool) -> dict[str, Any]:
        """A merge request as API::Entities::MergeRequestBasic shows it (listings), or
        API::Entities::MergeRequest (one request, ``single``)."""
        record = self._projects[mr["project_id"]]
        full_path = record["path_with_namespace"]
        iid = mr["iid"]
        draft = bool(_DRAFT.match(mr["title"]))
        merged_by = self._user_view(self._users[mr["merged_by"]]) if mr["merged_by"] else None
        closed_by = self._user_view(self._users[mr["closed_by"]]) if mr["closed_by"] else None
        view = {
            "id": mr["id"],
            "iid": iid,
            "project_id": record["id"],
            "title": mr["title"],
            "description": mr["description"],
            "state": mr["state"],
            "created_at": _iso(mr["created_at"]),
            "updated_at": _iso(mr["updated_at"]),
            "merged_by": merged_by,
            "merge_user": merged_by,
            "merged_at": _iso(mr["merged_at"]),
            "closed_by": closed_by,
            "closed_at": _iso(mr["closed_at"]),
            "target_branch": mr["target_branch"],
            "source_branch": mr["source_branch"],
            "user_notes_count": 0,
            "upvotes": 0,
            "downvotes": 0,
            "author": self._user_view(self._users[mr["author"]]),
            "assignees": [],
            "assignee": None,
            "reviewers": [],
            "source_project_id": record["id"],
            "target_project_id": record["id"],
            "labels": [],
            "draft": draft,
            "imported": False,
            "imported_from": "none",
            "work_in_progress": draft,
            "milestone": None,
            "merge_when_pipeline_succeeds": False,
            "merge_status": mr["merge_status"],
            "detailed_merge_status": self._detailed_merge_status(mr),
            "merge_after": None,
            "sha": mr["sha"],
            "merge_commit_sha": mr["merge_commit_sha"],
            "squash_commit_sha": None,
            "discussion_locked": None,
            "should_remove_source_branch": None,
            "force_remove_source_branch": mr["remove_source_branch"],
            "prepared_at": _iso(mr["created_at"]),
            "reference": f"!{iid}",
            "references": {"short": f"!{iid}", "relative": f"!{iid}", "full": f"{full_path}!{iid}"},
            "web_url": self._mr_url(mr),
            "time_stats": {
                "time_estimate": 0,
                "total_time_spent": 0,
                "human_time_estimate": None,
                "human_total_time_spent": None,
            },
            "squash": False,
            "squash_on_merge": False,
            "task_completion_status": {"count": 0, "completed_count": 0},
            "has_conflicts": False,
            "blocking_discussions_resolved": True,
            "approvals_before_merge": None,
        }
        if single:
            view.update(
                {
                    "subscribed": False,
                    "changes_count": "1",
                    "latest_build_started_at": None,
                    "latest_build_finished_at": None,
                    "first_deployed_to_production_at": None,
                    "pipeline": None,
                    "head_pipeline": None,
                    "diff_refs": {
                        "base_sha": mr["base_sha"],
                        "head_sha": mr["sha"],
                        "start_sha": mr["base_sha"],
                    },
                    "merge_error": None,
                    "first_contribution": False,
                    "user": {"can_merge": True},
                }
            )
        return view


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve an emulated GitLab API on loopback.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--token", default=DEFAULT_TOKEN)
    parser.add_argument("--project", default="acme/widget-api")
    parser.add_argument("--issues", type=int, default=0, help="seed this many issues")
    parser.add_argument("--hook", action="append", default=[], help="a project hook URL")
    parser.add_argument("--hook-token", default=None, help="the hooks' secret token")
    parser.add_argument("--user", action="append", default=[], help="add this username")
    args = parser.parse_args(argv)
    emulator = GitLabEmulator(token=args.token, host=args.host, port=args.port).start()
    project = emulator.add_project(args.project)
    for n in range(1, args.issues + 1):
        emulator.add_issue(project["id"], title=f"Issue {n}")
    for username in args.user:
        emulator.add_user(username)
    hooks = [emulator.add_hook(project["id"], url, args.hook_token) for url in args.hook]
    info = {
        "url": emulator.url,
        "control_url": emulator.control_url,
        "token": emulator.token,
        "project_id": project["id"],
        "project_path": project["path_with_namespace"],
        "project_ref": quote(project["path_with_namespace"], safe=""),
        "hook_ids": [hook["id"] for hook in hooks],
    }
    return emulator_http.serve_until_signalled(emulator, info)


if __name__ == "__main__":
    sys.exit(main())
