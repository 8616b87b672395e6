"""The GitLab REST client for writing to issues (two-way sync), through python-gitlab.

Shaped like ``trello.Client``: one session, every call paced and sent through ``_call``, which
retries what is safe to retry (429 always; 5xx, timeouts and connection errors only for calls
that can be repeated without harm) and maps every failure to the small ``GitLabError`` family
in one place. The token travels in the ``PRIVATE-TOKEN`` header only; messages name the call,
never a URL with a secret.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import gitlab as python_gitlab
import requests
import stamina

from events import IssueEvent, Label
from gitlab_hook import format_time, instance_of, parse_time, project_url_of
from trello import LocalWindow

log = logging.getLogger("gitlab2trello.gitlab")


class GitLabError(Exception):
    """A GitLab call failed; ``status`` is the HTTP status or None when none came back."""

    transient = False

    def __init__(self, what: str, status: int | None, detail: str = "") -> None:
        self.what = what
        self.status = status
        self.detail = detail
        where = f"HTTP {status}" if status else "no answer"
        super().__init__(f"GitLab {what}: {where}" + (f": {detail}" if detail else ""))


class GitLabAuthError(GitLabError):
    """401 or 403: the token is wrong, expired, lacks the ``api`` scope, or has no access."""


class GitLabNotFound(GitLabError):
    """404: no such project or issue, or the token cannot see it."""


class GitLabBadRequest(GitLabError):
    """400, 409, 422: GitLab refused the values."""


class GitLabRateLimited(GitLabError):
    transient = True


class GitLabUnavailable(GitLabError):
    """5xx, a timeout or no connection."""

    transient = True


def _translate(what: str, exc: Exception) -> GitLabError:
    status = getattr(exc, "response_code", None)
    message = str(getattr(exc, "error_message", "") or "")[:300]
    if status in (401, 403):
        if status == 403 and "scope" in message:
            message = "the token cannot write: it needs the api scope (read_api is read-only)"
        elif status == 401:
            message = "the private token is missing, wrong, revoked or expired"
        return GitLabAuthError(what, status, message)
    if status == 404:
        return GitLabNotFound(what, status, "no such project or issue, or the token cannot see it")
    if status == 429:
        return GitLabRateLimited(what, status, message)
    if status is not None and status >= 500:
        return GitLabUnavailable(what, status, message)
    if status is not None:
        return GitLabBadRequest(what, status, message)
    return GitLabUnavailable(what, None, type(exc).__name__)


class Client:
    """The GitLab calls two-way sync makes: who am I, users, issues, notes."""

    def __init__(
        self,
        url: str,
        private_token: str,
        *,
        timeout: float = 10.0,
        max_requests_per_minute: int = 600,
        retry_attempts: int = 4,
        retry_timeout: float = 30.0,
        on_call: Callable[[str, int | None], None] | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.gl = python_gitlab.Gitlab(
            self.url, private_token=private_token, timeout=timeout, retry_transient_errors=False
        )
        self.limit = max_requests_per_minute
        self._window = LocalWindow()
        self.retry_attempts = retry_attempts
        self.retry_timeout = retry_timeout
        self.on_call = on_call
        self._users: dict[str, int | None] = {}
        self._me: dict[str, Any] | None = None
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- the one place

    def _call(self, what: str, func: Any, *args: Any, idempotent: bool = True, **kw: Any) -> Any:
        def retry_safe(exc: Exception) -> bool:
            return isinstance(exc, GitLabRateLimited) or (
                idempotent and isinstance(exc, GitLabUnavailable)
            )

        for attempt in stamina.retry_context(
            on=retry_safe,
            attempts=self.retry_attempts,
            timeout=self.retry_timeout,
            wait_initial=0.5,
            wait_max=8.0,
        ):
            with attempt:
                return self._send(what, func, *args, **kw)
        raise AssertionError("unreachable")  # pragma: no cover

    def _send(self, what: str, func: Any, *args: Any, **kw: Any) -> Any:
        while (wait := self._window.take(self.limit, 60.0)) > 0:
            time.sleep(wait)
        started = time.monotonic()
        status: int | None = 200
        try:
            return func(*args, **kw)
        except (python_gitlab.exceptions.GitlabError, requests.RequestException, OSError) as exc:
            error = _translate(what, exc)
            status = error.status
            raise error from None
        finally:
            elapsed = (time.monotonic() - started) * 1000
            log.info("gitlab %s -> %s in %.0f ms", what, status or "no answer", elapsed)
            if self.on_call is not None:
                self.on_call(what.split()[0], status)

    # ---------------------------------------------------------------- calls

    def me(self) -> dict[str, Any]:
        """The token's own user ``{id, username, name}`` (asked once, then kept)."""
        with self._lock:
            if self._me is None:
                self._me = dict(self._call("GET /user", self.gl.http_get, "/user"))
            return self._me

    def token_scopes(self) -> list[str]:
        """The token's scopes (``api`` is needed to write)."""
        data = self._call(
            "GET /personal_access_tokens/self", self.gl.http_get, "/personal_access_tokens/self"
        )
        return [str(scope) for scope in data.get("scopes") or ()]

    def user_id(self, username: str) -> int | None:
        """The id of the GitLab user of that name, or None (kept per name)."""
        key = username.lower()
        with self._lock:
            if key in self._users:
                return self._users[key]
        found = self._call(
            "GET /users", self.gl.http_get, "/users", query_data={"username": username}
        )
        user_id = int(found[0]["id"]) if isinstance(found, list) and found else None
        with self._lock:
            self._users[key] = user_id
        return user_id

    def project_id(self, path: str) -> int:
        """The id of the project at ``group/path``."""
        encoded = urllib.parse.quote(path, safe="")
        return int(
            self._call(f"GET /projects/{path}", self.gl.http_get, f"/projects/{encoded}")["id"]
        )

    def closes_issues(self, project_id: int, iid: int) -> list[dict[str, Any]]:
        """The issues merging the merge request will close, by GitLab's own rules."""
        path = f"/projects/{project_id}/merge_requests/{iid}/closes_issues"
        found = self._call(
            f"GET {path}", self.gl.http_list, path, get_all=True, query_data={"per_page": 100}
        )
        return [dict(i) for i in found or ()]

    def find_issue(self, project_id: int, text: str) -> dict[str, Any] | None:
        """The issue whose description contains ``text`` (e.g. a card's URL), if any."""
        path = f"/projects/{project_id}/issues"
        found = self._call(
            f"GET {path}",
            self.gl.http_get,
            path,
            query_data={"search": text, "in": "description", "per_page": 20},
        )
        for issue in found or ():
            if text in str(issue.get("description") or ""):
                return dict(issue)
        return None

    def create_issue(self, project_id: int, title: str, description: str) -> dict[str, Any]:
        """A new issue; not repeated blindly on a lost answer (``find_issue`` tells)."""
        path = f"/projects/{project_id}/issues"
        return dict(
            self._call(
                f"POST {path}",
                self.gl.http_post,
                path,
                post_data={"title": title[:255], "description": description},
                idempotent=False,
            )
        )

    def issue(self, project_id: int, iid: int) -> dict[str, Any]:
        path = f"/projects/{project_id}/issues/{iid}"
        return dict(self._call(f"GET {path}", self.gl.http_get, path))

    def update_issue(self, project_id: int, iid: int, fields: Mapping[str, Any]) -> dict[str, Any]:
        """One ``PUT`` with every change (repeating it changes nothing more)."""
        path = f"/projects/{project_id}/issues/{iid}"
        return dict(self._call(f"PUT {path}", self.gl.http_put, path, post_data=dict(fields)))

    def add_note(self, project_id: int, iid: int, body: str) -> dict[str, Any]:
        """A comment; not repeated blindly on a lost answer (``has_note`` tells)."""
        path = f"/projects/{project_id}/issues/{iid}/notes"
        return dict(
            self._call(
                f"POST {path}", self.gl.http_post, path, post_data={"body": body}, idempotent=False
            )
        )

    def has_note(self, project_id: int, iid: int, needle: str) -> bool:
        """True when a comment of the issue contains ``needle`` (after a lost answer)."""
        path = f"/projects/{project_id}/issues/{iid}/notes"
        notes = self._call(
            f"GET {path}", self.gl.http_get, path, query_data={"per_page": 100, "sort": "desc"}
        )
        return any(needle in str(note.get("body") or "") for note in notes or ())


# ------------------------------------------------------------- reads: backfill, reconciliation


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
        project_url=project.get("web_url") or project_url_of(url),
        labels=labels,
        assignees=tuple(a["username"] for a in data.get("assignees") or () if isinstance(a, dict)),
        due_date=(data.get("due_date") or None),
        confidential=data.get("confidential") is True,
        moved_to_id=moved
        if isinstance(moved := data.get("moved_to_id"), int) and not isinstance(moved, bool)
        else None,
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
            raise _translate(what, exc) from None

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
