"""An emulator of the GitLab REST API (v4) subset used for backfill and reconciliation.

Tests give the bridge ``GitLabEmulator().url`` as the GitLab instance URL (the API lives under
``/api/v4``), and seed projects and issues through the Python methods. It serves, over real
HTTP on loopback: ``GET /user``, ``GET /version``, ``GET /projects/:id`` (numeric id or the
URL-encoded ``path_with_namespace``), ``GET /projects/:id/issues`` with GitLab's filters, ordering
and offset pagination (``X-Page``, ``X-Per-Page``, ``X-Next-Page``, ``X-Prev-Page``, ``X-Total``,
``X-Total-Pages`` and a ``Link`` header with ``prev``/``next``/``first``/``last``), and
``GET /projects/:id/issues/:iid``. Authentication is ``PRIVATE-TOKEN``, ``Authorization: Bearer``
or the ``private_token``/``access_token`` query parameter; errors are GitLab's JSON bodies.
Injectable faults answer an error status or reset the connection. Standard library only.

``python -m tests.gitlab_emulator --port N --issues 150`` runs one with a seeded project and
prints a JSON line.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import math
import re
import secrets
import sys
import threading
from dataclasses import dataclass
from datetime import UTC, date, datetime
from http import HTTPStatus
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from tests import emulator_http
from tests.emulator_http import ApiError

DEFAULT_TOKEN = "glpat-emulator-token"
API_PREFIX = "/api/v4"
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
ISSUE_STATES = ("opened", "closed")
LIST_STATES = ("opened", "closed", "all")
ORDER_BY = ("created_at", "updated_at", "title")
SORTS = ("asc", "desc")
LABEL_DEFAULT_COLOR = "#6699cc"
FAULT_KINDS = frozenset({"status", "reset"})
UNAUTHORIZED = {"message": "401 Unauthorized"}
PROJECT_NOT_FOUND = {"message": "404 Project Not Found"}
ISSUE_NOT_FOUND = {"message": "404 Not found"}
ROUTE_NOT_FOUND = {"error": "404 Not Found"}
KEYSET_UNAVAILABLE = {"error": "Keyset pagination is not yet available for this type of request"}
# Grape's boolean coercion.
_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})
_JSON = "application/json"
_UPDATABLE = frozenset(
    {
        "title", "description", "state", "labels", "assignees", "due_date", "confidential",
        "issue_type", "updated_at", "user_notes_count", "moved_to_id",
    }
)  # fmt: skip

# One dispatch table: (method, path after /api/v4 with {} for one raw path segment, handler).
ROUTES = [
    ("GET", "/user", "_get_user"),
    ("GET", "/version", "_get_version"),
    ("GET", "/projects/{}", "_get_project"),
    ("GET", "/projects/{}/issues", "_list_issues"),
    ("GET", "/projects/{}/issues/{}", "_get_issue"),
]
_COMPILED_ROUTES = emulator_http.compile_routes(ROUTES)


class Call(NamedTuple):
    """One request as received: path without the query (as sent, still URL-encoded), the
    query as a dict (last value wins), and the status answered (0 for a reset connection)."""

    method: str
    path: str
    query: dict[str, str]
    status: int


@dataclass
class _Fault:
    kind: str
    status: int
    remaining: int
    retry_after: int


@dataclass
class _Request:
    method: str
    path: str
    pairs: list[tuple[str, str]]
    headers: Any

    @property
    def params(self) -> dict[str, str]:
        return dict(self.pairs)

    @property
    def host(self) -> str:
        return str(self.headers.get("Host") or "")


@dataclass
class _Reply(emulator_http.Reply):
    content_type: str = _JSON


class _Handler(emulator_http.EmulatorHandler):
    server_version = "nginx"
    do_HEAD = emulator_http.EmulatorHandler.dispatch

    def extra_headers(self) -> dict[str, str]:
        return {"X-Request-Id": secrets.token_hex(13).upper()}


def _json_reply(status: int, data: Any, headers: dict[str, str] | None = None) -> _Reply:
    return _Reply(status, json.dumps(data).encode(), headers=dict(headers or {}))


def _error_reply(exc: ApiError) -> _Reply:
    return emulator_http.error_reply(exc, _Reply)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


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


class GitLabEmulator(emulator_http.LoopbackEmulator):
    """A GitLab REST API on loopback; seed and inspect its projects and issues, inject faults."""

    _handler_class = _Handler
    _thread_name = "gitlab-emulator"

    def __init__(
        self, *, token: str = DEFAULT_TOKEN, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.token = token
        self._host = host
        self._port = port
        self._lock = threading.RLock()
        self._users: dict[str, dict[str, Any]] = {}
        self._namespaces: dict[str, int] = {}
        self._projects: dict[int, dict[str, Any]] = {}
        self._issues: dict[int, dict[int, dict[str, Any]]] = {}
        self._labels: dict[int, dict[str, dict[str, Any]]] = {}
        self._next_issue_id = 1001
        self._next_label_id = 1
        self._calls: list[Call] = []
        self._faults: list[_Fault] = []
        self._default_author = self._user("root", "Administrator")["username"]
        self._me = self._user("bridge", "Trello Bridge")["username"]

    # ----------------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        """The instance base URL (what ``gitlab.Gitlab(url)`` takes); the API is under it."""
        return f"http://{self._host}:{self._port}"

    @property
    def api_url(self) -> str:
        return self.url + API_PREFIX

    # ----------------------------------------------------------------- seeding
    def set_token(self, token: str) -> None:
        """Accept ``token`` instead of the current one."""
        with self._lock:
            self.token = token

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
            label.update(color=color, description=description)
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
        """An issue made in the GitLab UI (not recorded as an API call); returns its REST form.

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
            issues = self._issues[record["id"]]
            issue = {
                "id": self._next_issue_id,
                "iid": max(issues, default=0) + 1,
                "project_id": record["id"],
                "title": str(title),
                "description": str(description),
                "state": state,
                "created_at": min(created, updated),
                "updated_at": updated,
                "closed_at": updated if state == "closed" else None,
                "closed_by": (author or self._default_author) if state == "closed" else None,
                "labels": self._use_labels(record["id"], labels),
                "assignees": [self._user(u)["username"] for u in assignees or []],
                "author": self._user(author or self._default_author)["username"],
                "due_date": _due(due_date),
                "confidential": bool(confidential),
                "issue_type": issue_type,
                "user_notes_count": 0,
                "moved_to_id": None,
            }
            self._next_issue_id += 1
            issues[issue["iid"]] = issue
            record["last_activity_at"] = max(record["last_activity_at"], updated)
            return self._issue_view(issue, single=True)

    def update_issue(self, project: int | str, iid: int, **fields: Any) -> dict:
        """Change an issue as a person would in the UI (not recorded as an API call).

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

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def reset_calls(self) -> None:
        with self._lock:
            self._calls.clear()

    # ----------------------------------------------------------------- faults
    def fault(
        self, kind: str = "status", *, status: int = 503, count: int = 1, retry_after: int = 1
    ) -> None:
        """The next ``count`` API requests answer ``status`` (kind ``"status"``), or have their
        connection reset with no answer (kind ``"reset"``). A 429 carries ``Retry-After``."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {sorted(FAULT_KINDS)}")
        if count < 1:
            raise ValueError("count must be at least 1")
        with self._lock:
            self._faults.append(_Fault(kind, int(status), int(count), int(retry_after)))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    # ----------------------------------------------------------------- request pipeline
    def _handle(self, method: str, target: str, headers: Any, body: bytes = b"") -> _Reply:
        # ``body`` goes unused: no emulated route takes one.
        split = urlsplit(target)
        pairs = parse_qsl(split.query, keep_blank_values=True)
        request = _Request(method, split.path, pairs, headers)
        if split.path == API_PREFIX or split.path.startswith(API_PREFIX + "/"):
            reply = self._handle_api(request)
        else:
            reply = _json_reply(404, ROUTE_NOT_FOUND)
        with self._lock:
            status = 0 if reply.reset else reply.status
            self._calls.append(Call(method, split.path, dict(pairs), status))
        return reply

    def _handle_api(self, request: _Request) -> _Reply:
        with self._lock:
            fault = self._take_fault()
        if fault is not None and fault.kind == "reset":
            return _Reply(0, reset=True)
        if fault is not None:
            if fault.status == 429:
                headers = {"Retry-After": str(fault.retry_after)}
                return _Reply(429, b"Retry later\n", emulator_http.TEXT, headers)
            return _json_reply(fault.status, {"message": f"{fault.status} {_phrase(fault.status)}"})
        api_path = request.path[len(API_PREFIX) :].rstrip("/") or "/"
        try:
            handler, args = self._route(request.method, api_path)
            with self._lock:
                self._authenticate(request)
                result = handler(request, *(unquote(arg) for arg in args))
        except ApiError as exc:
            return _error_reply(exc)
        return result if isinstance(result, _Reply) else _json_reply(200, result)

    def _take_fault(self) -> _Fault | None:
        self._faults = [f for f in self._faults if f.remaining > 0]
        if not self._faults:
            return None
        fault = self._faults[0]
        fault.remaining -= 1
        return fault

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

    def _authenticate(self, request: _Request) -> None:
        headers, params = request.headers, request.params
        given = headers.get("PRIVATE-TOKEN")
        bearer = headers.get("Authorization") or ""
        if given is None and bearer[:7].lower() == "bearer ":
            given = bearer[7:].strip()
        if given is None:
            given = params.get("private_token") or params.get("access_token")
        if not given or not hmac.compare_digest(given.encode(), self.token.encode()):
            raise ApiError(401, UNAUTHORIZED)

    # ----------------------------------------------------------------- API handlers
    def _get_user(self, request: _Request) -> dict:
        user = self._users[self._me]
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

    def _get_version(self, request: _Request) -> dict:
        return json.loads(json.dumps(VERSION))

    def _get_project(self, request: _Request, ref: str) -> dict:
        return self._project_view(self._project_ref(ref))

    def _get_issue(self, request: _Request, ref: str, raw_iid: str) -> dict:
        try:
            iid = int(raw_iid)
        except ValueError:
            raise ApiError(400, {"error": "issue_iid is invalid"}) from None
        record = self._project_ref(ref)
        issue = self._issues[record["id"]].get(iid)
        if issue is None:
            raise ApiError(404, ISSUE_NOT_FOUND)
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
        search = (p.get("search") or "").lower()
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
            text = f"{issue['title']}\n{issue['description']}".lower()
            return (
                labels_ok
                and (state == "all" or issue["state"] == state)
                and (confidential is None or issue["confidential"] == confidential)
                and (issue_type is None or issue["issue_type"] == issue_type)
                and (not iids or issue["iid"] in iids)
                and (not search or search in text)
            )

        rows = [issue for issue in self._issues[record["id"]].values() if keep(issue)]
        rows.sort(key=lambda issue: (issue[order_by], issue["id"]), reverse=descending)
        start = (page - 1) * per_page
        chosen = rows[start : start + per_page]
        body = [self._issue_view(issue, single=False, label_details=details) for issue in chosen]
        headers = self._page_headers(request, page, per_page, len(rows), bool(chosen))
        return _json_reply(200, body, headers)

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

    def _label(self, project_id: int, name: str) -> dict[str, Any]:
        labels = self._labels[project_id]
        if name not in labels:
            labels[name] = {
                "id": self._next_label_id,
                "name": name,
                "color": LABEL_DEFAULT_COLOR,
                "description": None,
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve an emulated GitLab API on loopback.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--project", default="acme/widget-api")
    parser.add_argument("--issues", type=int, default=0, help="seed this many issues")
    args = parser.parse_args(argv)
    emulator = GitLabEmulator(host=args.host, port=args.port).start()
    project = emulator.add_project(args.project)
    for n in range(1, args.issues + 1):
        emulator.add_issue(project["id"], title=f"Issue {n}")
    info = {
        "url": emulator.url,
        "token": emulator.token,
        "project_id": project["id"],
        "project_path": project["path_with_namespace"],
        "project_ref": quote(project["path_with_namespace"], safe=""),
    }
    return emulator_http.serve_until_signalled(emulator, info)


if __name__ == "__main__":
    sys.exit(main())
