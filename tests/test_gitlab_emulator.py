"""The GitLab emulator serves the REST subset python-gitlab uses for backfill, reconciling and
writing back, and fires GitLab's webhooks for every change."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import re
import socket
import sys
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import requests

from tests.gitlab_emulator import COUNT_LIMIT, GitLabEmulator, sign_webhook

ISO_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
PAGE_HEADERS = ("X-Page", "X-Per-Page", "X-Next-Page", "X-Prev-Page", "X-Total", "X-Total-Pages")


def _python_gitlab_init() -> Path:
    dist = importlib.metadata.distribution("python-gitlab")
    return Path(str(dist.locate_file("gitlab/__init__.py"))).resolve()


def _is_file(module: ModuleType | None, path: Path) -> bool:
    origin = getattr(module, "__file__", None)
    return origin is not None and Path(origin).resolve() == path


def load_python_gitlab() -> ModuleType:
    """The installed python-gitlab package, even where a module named ``gitlab`` shadows it.

    A ``gitlab.py`` at the project root wins over the package for ``import gitlab`` whenever the
    root is on sys.path (pytest puts it there). Then the package is loaded from its installed
    location under the name ``gitlab`` just long enough for its own absolute imports
    (``import gitlab.exceptions``, ``from gitlab.v4 import objects``, ...) to bind to it; its
    submodules stay in sys.modules so the import ``Gitlab()`` makes lazily still finds them, and
    the shadowing module gets its name back.
    """
    init = _python_gitlab_init()
    current = sys.modules.get("gitlab")
    if _is_file(current, init):
        return current  # type: ignore[return-value]
    if current is None:
        spec = importlib.util.find_spec("gitlab")
        if spec is not None and spec.origin and Path(spec.origin).resolve() == init:
            return importlib.import_module("gitlab")
    names = [n for n in sys.modules if n == "gitlab" or n.startswith("gitlab.")]
    saved = {n: sys.modules.pop(n) for n in names}
    spec = importlib.util.spec_from_file_location(
        "gitlab", init, submodule_search_locations=[str(init.parent)]
    )
    assert spec is not None and spec.loader is not None
    package = importlib.util.module_from_spec(spec)
    sys.modules["gitlab"] = package
    try:
        spec.loader.exec_module(package)
        importlib.import_module("gitlab.v4.objects")
    finally:
        del sys.modules["gitlab"]
        if "gitlab" in saved:
            sys.modules["gitlab"] = saved["gitlab"]
    return package


python_gitlab = load_python_gitlab()


@pytest.fixture
def emu():
    with GitLabEmulator() as emulator:
        yield emulator


@pytest.fixture
def project(emu):
    return emu.add_project("acme/widget-api", project_id=42, name="Widget API")


@pytest.fixture
def many(emu, project):
    """150 issues updated a minute apart, every third one closed."""
    for n in range(1, 151):
        emu.add_issue(
            42,
            title=f"Issue {n}",
            state="closed" if n % 3 == 0 else "opened",
            updated_at=f"2026-05-04T{8 + n // 60:02d}:{n % 60:02d}:00.000Z",
        )
    return 150


def get(emu: GitLabEmulator, path: str, token: str | None = None, **params: Any):
    headers = {"PRIVATE-TOKEN": emu.token if token is None else token}
    return requests.get(emu.url + "/api/v4" + path, params=params, headers=headers, timeout=5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def client(emu: GitLabEmulator, **kwargs: Any):
    return python_gitlab.Gitlab(emu.url, private_token=emu.token, timeout=5, **kwargs)


def test_loader_returns_the_installed_package():
    """load_python_gitlab gives python-gitlab itself, not a project module of the same name."""
    assert _is_file(python_gitlab, _python_gitlab_init())
    assert hasattr(python_gitlab, "Gitlab")
    assert python_gitlab.__version__.startswith("8.")


def test_loader_gets_past_a_shadowing_gitlab_module(emu, tmp_path, monkeypatch):
    """With a gitlab.py first on sys.path, the loader still yields a working python-gitlab."""
    (tmp_path / "gitlab.py").write_text('"""A project module named gitlab."""\nSHADOW = True\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    before = {n: m for n, m in sys.modules.items() if n == "gitlab" or n.startswith("gitlab.")}
    try:
        for name in before:
            del sys.modules[name]
        shadow = importlib.import_module("gitlab")
        assert shadow.SHADOW is True
        package = load_python_gitlab()
        assert sys.modules["gitlab"] is shadow
        assert package is not shadow and _is_file(package, _python_gitlab_init())
        gl = package.Gitlab(emu.url, private_token=emu.token, timeout=5)
        gl.auth()
        assert gl.user.username == "bridge"
    finally:
        for name in [n for n in sys.modules if n == "gitlab" or n.startswith("gitlab.")]:
            del sys.modules[name]
        sys.modules.update(before)


def test_auth_by_private_token_or_bearer(emu):
    """PRIVATE-TOKEN and Authorization: Bearer both authenticate /user and /version."""
    r1 = get(emu, "/user")
    r2 = requests.get(
        emu.url + "/api/v4/user", headers={"Authorization": f"Bearer {emu.token}"}, timeout=5
    )
    assert r1.status_code == r2.status_code == 200
    assert r1.json()["username"] == r2.json()["username"] == "bridge"
    assert r1.json()["web_url"] == f"{emu.url}/bridge"
    version = get(emu, "/version")
    assert version.status_code == 200
    assert version.json()["version"] == "19.1.0-ee" and version.json()["revision"]
    gl = client(emu)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gl.auth()
    assert gl.user.username == "bridge" and isinstance(gl.user.id, int)
    assert gl.version() == ("19.1.0-ee", version.json()["revision"])
    assert [(c.method, c.path, c.status) for c in emu.calls[-2:]] == [
        ("GET", "/api/v4/user", 200),
        ("GET", "/api/v4/version", 200),
    ]


def test_bad_or_missing_token_is_401(emu, project):
    """A wrong, missing or replaced token gets 401 with GitLab's JSON body."""
    for token in ("glpat-wrong", ""):
        r = get(emu, "/projects/42", token=token)
        assert r.status_code == 401
        assert r.json() == {"message": "401 Unauthorized"}
    assert requests.get(emu.url + "/api/v4/user", timeout=5).status_code == 401
    bad = python_gitlab.Gitlab(emu.url, private_token="glpat-wrong", timeout=5)
    with pytest.raises(python_gitlab.exceptions.GitlabAuthenticationError) as info:
        bad.auth()
    assert info.value.response_code == 401
    old = emu.token
    emu.set_token("glpat-rotated")
    assert get(emu, "/user", token=old).status_code == 401
    assert get(emu, "/user", token="glpat-rotated").status_code == 200


def test_project_by_id_and_by_path(emu, project):
    """A project is found by numeric id or URL-encoded path; an unknown one is a JSON 404."""
    assert project["web_url"] == f"{emu.url}/acme/widget-api"
    by_id = get(emu, "/projects/42").json()
    by_path = requests.get(
        emu.url + "/api/v4/projects/acme%2Fwidget-api",
        headers={"PRIVATE-TOKEN": emu.token},
        timeout=5,
    ).json()
    assert by_id == by_path
    assert by_id["id"] == 42 and by_id["path_with_namespace"] == "acme/widget-api"
    assert by_id["path"] == "widget-api" and by_id["name"] == "Widget API"
    missing = get(emu, "/projects/999")
    assert missing.status_code == 404
    assert missing.json() == {"message": "404 Project Not Found"}
    gl = client(emu)
    assert gl.projects.get("acme/widget-api").id == 42
    assert gl.projects.get(42).path_with_namespace == "acme/widget-api"
    assert emu.calls[-2].path == "/api/v4/projects/acme%2Fwidget-api"
    with pytest.raises(python_gitlab.exceptions.GitlabGetError) as info:
        gl.projects.get("acme/nope")
    assert info.value.response_code == 404


def test_issue_has_gitlab_rest_shape(emu, project):
    """Issues carry GitLab's fields: label names, assignees always present, ms UTC times."""
    first = emu.add_issue(
        42,
        title="Crash on save",
        labels=["bug", "backend"],
        assignees=["alice", "bob"],
        due_date="2026-06-30",
        issue_type="incident",
    )
    second = emu.add_issue("acme/widget-api", title="Plain")
    assert (first["iid"], second["iid"]) == (1, 2)
    assert second["id"] > first["id"] != first["iid"]
    one = get(emu, "/projects/42/issues/1").json()
    assert one["labels"] == ["backend", "bug"]
    assert [a["username"] for a in one["assignees"]] == ["alice", "bob"]
    assert set(one["assignees"][0]) >= {"id", "username", "name", "state", "avatar_url", "web_url"}
    assert one["assignee"]["username"] == "alice"
    assert (one["type"], one["issue_type"]) == ("INCIDENT", "incident")
    assert one["web_url"] == f"{emu.url}/acme/widget-api/-/issues/1"
    assert one["references"]["full"] == "acme/widget-api#1"
    assert one["due_date"] == "2026-06-30" and one["closed_at"] is None
    assert ISO_MS.match(one["created_at"]) and ISO_MS.match(one["updated_at"])
    assert one["author"]["username"] == "root" and one["state"] == "opened"
    listed = get(emu, "/projects/42/issues").json()
    plain = next(i for i in listed if i["iid"] == 2)
    assert plain["assignees"] == [] and plain["assignee"] is None and plain["labels"] == []
    detailed = get(emu, "/projects/42/issues", with_labels_details="true").json()
    labels = next(i for i in detailed if i["iid"] == 1)["labels"]
    assert [(lab["name"], lab["color"]) for lab in labels] == [
        ("backend", "#6699cc"),
        ("bug", "#6699cc"),
    ]
    missing = get(emu, "/projects/42/issues/99")
    assert missing.status_code == 404 and missing.json() == {"message": "404 Not found"}


def test_pagination_headers_on_first_middle_last_pages(emu, many):
    """Offset pagination: X-* headers and Link rels that keep the other query parameters."""
    pages = {
        n: get(emu, "/projects/42/issues", per_page=50, page=n, state="all", order_by="updated_at")
        for n in (1, 2, 3)
    }
    h1, h2, h3 = (pages[n].headers for n in (1, 2, 3))
    assert [h1[k] for k in PAGE_HEADERS] == ["1", "50", "2", "", "150", "3"]
    assert [h2[k] for k in PAGE_HEADERS] == ["2", "50", "3", "1", "150", "3"]
    assert [h3[k] for k in PAGE_HEADERS] == ["3", "50", "", "2", "150", "3"]
    base = f"{emu.url}/api/v4/projects/42/issues?order_by=updated_at"
    link = requests.utils.parse_header_links(h2["Link"])
    assert {item["rel"]: item["url"] for item in link} == {
        "prev": f"{base}&page=1&per_page=50&state=all",
        "next": f"{base}&page=3&per_page=50&state=all",
        "first": f"{base}&page=1&per_page=50&state=all",
        "last": f"{base}&page=3&per_page=50&state=all",
    }
    assert [item["rel"] for item in requests.utils.parse_header_links(h1["Link"])] == [
        "next",
        "first",
        "last",
    ]
    assert "next" not in pages[3].links and pages[3].links["prev"]["url"].endswith(
        "page=2&per_page=50&state=all"
    )
    seen = [i["iid"] for n in (1, 2, 3) for i in pages[n].json()]
    assert sorted(seen) == list(range(1, 151)) and seen[0] == 150  # updated_at desc by default
    beyond = get(emu, "/projects/42/issues", per_page=50, page=4)
    assert beyond.json() == [] and beyond.headers["X-Next-Page"] == ""
    assert beyond.headers["X-Prev-Page"] == ""
    capped = get(emu, "/projects/42/issues", per_page=500)
    assert capped.headers["X-Per-Page"] == "100" and len(capped.json()) == 100
    default = get(emu, "/projects/42/issues")
    assert default.headers["X-Per-Page"] == "20" and default.headers["X-Total-Pages"] == "8"


def test_python_gitlab_iterator_yields_all_issues_once(emu, many):
    """iterator=True walks 150 issues over 3 pages by following Link rel="next"."""
    project = client(emu).projects.get(42)
    emu.reset_calls()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no base-URL mismatch warning from the Link URLs
        listing = project.issues.list(
            iterator=True, per_page=50, order_by="updated_at", sort="asc", state="all"
        )
        assert (listing.total, listing.total_pages, listing.per_page) == (150, 3, 50)
        issues = list(listing)
    iids = [issue.iid for issue in issues]
    assert len(iids) == 150 and sorted(iids) == list(range(1, 151))
    assert iids == list(range(1, 151))  # updated_at ascending
    queries = [call.query for call in emu.calls]
    assert len(queries) == 3
    assert "page" not in queries[0]  # python-gitlab never sets page itself ...
    assert [q.get("page") for q in queries[1:]] == ["2", "3"]  # ... it came from Link
    assert all(q["sort"] == "asc" and q["per_page"] == "50" for q in queries)


def test_python_gitlab_get_all_with_filters(emu, many):
    """get_all=True gathers every page; state and updated_after narrow it server-side."""
    project = client(emu).projects.get("acme/widget-api")
    opened = project.issues.list(get_all=True, per_page=50, state="opened")
    assert len(opened) == 100 and all(i.state == "opened" for i in opened)
    recent = project.issues.list(
        get_all=True, per_page=20, state="all", updated_after="2026-05-04T10:00:00Z"
    )
    assert sorted(i.iid for i in recent) == list(range(120, 151))


def test_state_and_updated_after_filters(emu, project):
    """updated_after is at-or-after in any ISO spelling; state picks opened, closed or all."""
    for day, state in ((1, "opened"), (2, "closed"), (3, "opened")):
        emu.add_issue(42, title=f"Day {day}", state=state, updated_at=f"2026-05-0{day}T10:00:00Z")

    def iids(**params: Any) -> list[int]:
        r = get(emu, "/projects/42/issues", sort="asc", **params)
        assert r.status_code == 200, r.text
        return [i["iid"] for i in r.json()]

    assert iids() == [1, 2, 3]
    assert iids(state="opened") == [1, 3] and iids(state="closed") == [2]
    assert iids(updated_after="2026-05-02T10:00:00.000Z") == [2, 3]
    assert iids(updated_after="2026-05-02T12:00:00+02:00") == [2, 3]
    assert iids(updated_after="2026-05-02T10:00:00.001Z") == [3]
    assert iids(updated_after="2026-05-02T10:00:00Z", state="opened") == [3]
    assert iids(updated_before="2026-05-02T10:00:00Z") == [1, 2]
    closed = get(emu, "/projects/42/issues/2").json()
    assert closed["closed_at"] == closed["updated_at"] == "2026-05-02T10:00:00.000Z"
    bad = get(emu, "/projects/42/issues", state="done")
    assert bad.status_code == 400
    assert bad.json() == {"error": "state does not have a valid value"}
    assert get(emu, "/projects/42/issues", updated_after="soon").status_code == 400


def test_update_issue_bumps_updated_at_for_reconciliation(emu, project):
    """An edit moves updated_at forward, so an updated_after listing picks the issue up."""
    emu.add_issue(42, title="Old", updated_at="2020-01-01T00:00:00Z")
    emu.add_issue(42, title="Untouched", updated_at="2020-01-02T00:00:00Z")
    mark = "2020-03-01T00:00:00Z"
    assert get(emu, "/projects/42/issues", updated_after=mark).json() == []
    changed = emu.update_issue(42, 1, title="New", state="closed", labels=["done"])
    assert changed["updated_at"] > mark and changed["closed_at"] == changed["updated_at"]
    listed = get(emu, "/projects/42/issues", updated_after=mark).json()
    assert [(i["iid"], i["title"], i["state"], i["labels"]) for i in listed] == [
        (1, "New", "closed", ["done"])
    ]
    reopened = emu.update_issue(42, 1, state="opened", updated_at="2020-04-01T10:00:00.5+02:00")
    assert reopened["updated_at"] == "2020-04-01T08:00:00.500Z"
    assert reopened["closed_at"] is None
    assert [i["title"] for i in emu.issues("acme/widget-api")] == ["New", "Untouched"]
    with pytest.raises(TypeError):
        emu.update_issue(42, 1, colour="red")
    with pytest.raises(KeyError):
        emu.update_issue(42, 99, title="x")


def test_fault_injection_status_and_reset(emu, project):
    """Faults answer an error status or reset the connection, then service resumes."""
    emu.fault("status", status=503, count=2)
    assert get(emu, "/projects/42").status_code == 503
    second = get(emu, "/projects/42")
    assert second.status_code == 503 and second.json() == {"message": "503 Service Unavailable"}
    assert get(emu, "/projects/42").status_code == 200
    emu.fault("reset")
    with pytest.raises(requests.ConnectionError):
        get(emu, "/projects/42")
    assert [c.status for c in emu.calls] == [503, 503, 200, 0]
    emu.fault("status", status=502)
    with pytest.raises(python_gitlab.exceptions.GitlabGetError) as info:
        client(emu).projects.get(42)
    assert info.value.response_code == 502
    emu.fault("status", status=503, count=2)
    emu.reset_calls()
    assert client(emu, retry_transient_errors=True).projects.get(42).id == 42
    assert [c.status for c in emu.calls] == [503, 503, 200]
    emu.fault("reset")
    with pytest.raises(requests.ConnectionError):
        client(emu).projects.get(42)
    with pytest.raises(ValueError):
        emu.fault("explode")


def test_a_fault_for_one_method_and_a_write_whose_answer_is_lost(emu, project):
    """A fault for POST leaves reads alone; apply_then_reset creates the issue, answers nothing."""
    emu.fault("apply_then_reset", method="POST")
    assert get(emu, "/projects/42").status_code == 200
    with pytest.raises(requests.ConnectionError):
        requests.post(
            emu.url + "/api/v4/projects/42/issues",
            data={"title": "Lost answer"},
            headers={"PRIVATE-TOKEN": emu.token},
            timeout=5,
        )
    assert [i["title"] for i in emu.issues(42)] == ["Lost answer"]
    assert [c.status for c in emu.calls][-1] == 0


def test_unknown_routes_and_keyset_are_json_errors(emu, project):
    """Unknown paths are a JSON 404; keyset pagination is refused for issues as GitLab does."""
    r = get(emu, "/projects/42/boards/nope")
    assert r.status_code == 404 and r.json() == {"error": "404 Not Found"}
    assert requests.get(emu.url + "/elsewhere", timeout=5).status_code == 404
    keyset = get(emu, "/projects/42/issues", pagination="keyset")
    assert keyset.status_code == 405 and "Keyset" in keyset.json()["error"]


def test_huge_listings_drop_the_totals(emu, project):
    """Past GitLab's count limit, X-Total, X-Total-Pages and rel="last" are left out."""
    for n in range(COUNT_LIMIT + 1):
        emu.add_issue(42, title=f"Bulk {n}", updated_at="2026-05-04T09:00:00Z")
    r = get(emu, "/projects/42/issues", per_page=100, page=2)
    assert len(r.json()) == 100
    assert "X-Total" not in r.headers and "X-Total-Pages" not in r.headers
    assert (r.headers["X-Next-Page"], r.headers["X-Prev-Page"]) == ("3", "1")
    assert set(r.links) == {"prev", "next", "first"}


# ----------------------------------------------------------------------------- two-way sync

FIXTURES = Path(__file__).parent / "fixtures"
HOOK_HEADERS = (
    "Content-Type",
    "User-Agent",
    "Idempotency-Key",
    "X-Gitlab-Event",
    "X-Gitlab-Webhook-UUID",
    "X-Gitlab-Instance",
    "X-Gitlab-Event-UUID",
    "webhook-id",
    "webhook-timestamp",
)
SIGNING_TOKEN = "whsec_ufl7s1jGsMaqRBiiyqVp8URYjKKVbqalZHKdtRAcnnU="


class Receiver:
    """A webhook endpoint on loopback: records each POST and answers ``status`` (after
    ``delay`` seconds)."""

    def __init__(self) -> None:
        self.status = 200
        self.delay = 0.0
        self.received: list[tuple[dict[str, str], bytes]] = []
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._cond:
                    receiver.received.append((dict(self.headers), body))
                    receiver._cond.notify_all()
                if receiver.delay:
                    time.sleep(receiver.delay)
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/gitlab"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def payloads(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    hook_receiver = Receiver()
    yield hook_receiver
    hook_receiver.close()


@pytest.fixture
def hooked(emu, project, receiver):
    """Project 42 with one hook to ``receiver`` and issue 1 (labelled bug, assigned to alice,
    due at the end of May)."""
    emu.add_user("bridge-bot", "Trello Bridge Bot")
    emu.add_user("alice", "Alice Liddell")
    emu.add_user("bob", "Bob Ross")
    emu.add_hook(42, receiver.url, "hook-secret")
    emu.add_issue(
        42,
        title="Export drops rows",
        description="Card: https://trello.com/c/AbC123xy/7-export",
        labels=["bug"],
        assignees=["alice"],
        due_date="2026-05-31",
    )
    return emu


def api(emu: GitLabEmulator, method: str, path: str, token: str | None = None, **kwargs: Any):
    headers = {"PRIVATE-TOKEN": emu.token if token is None else token}
    return requests.request(method, emu.api_url + path, headers=headers, timeout=5, **kwargs)


def delivered(emu: GitLabEmulator, receiver: Receiver) -> list[dict[str, Any]]:
    assert emu.wait_hooks_idle(10)
    return receiver.payloads


def user_id(emu: GitLabEmulator, username: str) -> int:
    return emu.user(username)["id"]


WRITES = [
    ({"state_event": "close"}, "close", {"closed_at", "state_id", "updated_at"}),
    ({"add_labels": "doing,bug"}, "update", {"labels", "updated_at", "updated_by_id"}),
    ({"remove_labels": "bug"}, "update", {"labels", "updated_at", "updated_by_id"}),
    ({"labels": "doing,p1"}, "update", {"labels", "updated_at", "updated_by_id"}),
    ({"assignee_ids": "ALICE,BOB"}, "update", {"assignees", "updated_at", "updated_by_id"}),
    ({"assignee_ids": []}, "update", {"assignees", "updated_at", "updated_by_id"}),
    ({"assignee_ids": 0}, "update", {"assignees", "updated_at", "updated_by_id"}),
    ({"due_date": "2026-06-30"}, "update", {"due_date", "updated_at", "updated_by_id"}),
    ({"due_date": ""}, "update", {"due_date", "updated_at", "updated_by_id"}),
    (
        {"title": "Export drops unicode rows"},
        "update",
        {"title", "last_edited_at", "last_edited_by_id", "updated_at", "updated_by_id"},
    ),
    (
        {"description": "New text"},
        "update",
        {"description", "last_edited_at", "last_edited_by_id", "updated_at", "updated_by_id"},
    ),
]


WRITE_IDS = [
    "close", "add_labels", "remove_labels", "replace_labels", "assign", "unassign_list",
    "unassign_zero", "due_date", "clear_due_date", "title", "description",
]  # fmt: skip


@pytest.mark.parametrize(("params", "action", "changed"), WRITES, ids=WRITE_IDS)
def test_each_issue_write_changes_it_and_fires_one_webhook(
    hooked, receiver, params, action, changed
):
    """A PUT changes the issue, answers it, and fires one Issue Hook: its action, changes, user."""
    emu = hooked
    emu.add_token("glpat-bot", user="bridge-bot")
    ids = {"ALICE": str(user_id(emu, "alice")), "BOB": str(user_id(emu, "bob"))}
    if isinstance(params.get("assignee_ids"), str):
        params = {"assignee_ids": ",".join(ids[n] for n in params["assignee_ids"].split(","))}
    before = emu.issue(42, 1)
    r = api(emu, "PUT", "/projects/42/issues/1", token="glpat-bot", json=params)
    assert r.status_code == 200, r.text
    after = r.json()
    assert after == emu.issue(42, 1) and after["updated_at"] > before["updated_at"]
    assert ISO_MS.match(after["updated_at"])
    expected = {
        "close": lambda i: i["state"] == "closed" and i["closed_by"]["username"] == "bridge-bot",
        "add_labels": lambda i: i["labels"] == ["bug", "doing"],
        "remove_labels": lambda i: i["labels"] == [],
        "labels": lambda i: i["labels"] == ["doing", "p1"],
        "assignee_ids": lambda i: (
            [a["username"] for a in i["assignees"]]
            == (["alice", "bob"] if isinstance(params["assignee_ids"], str) else [])
        ),
        "due_date": lambda i: i["due_date"] == (params["due_date"] or None),
        "title": lambda i: i["title"] == "Export drops unicode rows",
        "description": lambda i: i["description"] == "New text",
    }
    name = "close" if "state_event" in params else next(iter(params))
    assert expected[name](after), after
    (payload,) = delivered(emu, receiver)
    assert emu.hook_deliveries == [("Issue Hook", action, 200)]
    assert payload["object_attributes"]["action"] == action
    assert set(payload["changes"]) == changed
    assert payload["user"]["username"] == "bridge-bot"
    assert payload["user"]["id"] == user_id(emu, "bridge-bot")
    attrs = payload["object_attributes"]
    assert attrs["updated_at"] == after["updated_at"] == payload["changes"]["updated_at"]["current"]
    assert payload["changes"]["updated_at"]["previous"] == before["updated_at"]
    assert attrs["state"] == after["state"] and attrs["iid"] == 1 and attrs["id"] == after["id"]
    assert [lab["title"] for lab in attrs["labels"]] == after["labels"]
    assert attrs["assignee_ids"] == [a["id"] for a in after["assignees"]]
    assert attrs["due_date"] == after["due_date"]
    assert attrs["url"] == f"{emu.url}/acme/widget-api/-/issues/1"
    if "labels" in payload["changes"]:
        titles = [
            [lab["title"] for lab in payload["changes"]["labels"][k]]
            for k in ("previous", "current")
        ]
        assert titles == [before["labels"], after["labels"]]
    if "assignees" in payload["changes"]:
        names = [
            [u["username"] for u in payload["changes"]["assignees"][k]]
            for k in ("previous", "current")
        ]
        assert names == [[a["username"] for a in x["assignees"]] for x in (before, after)]
    assert ("assignees" in payload) == bool(after["assignees"])


def test_reopen_and_a_put_that_closes_and_edits(hooked, receiver):
    """state_event=reopen fires reopen; a PUT that also edits fires close, then update."""
    emu = hooked
    r = api(
        emu, "PUT", "/projects/42/issues/1", json={"state_event": "close", "add_labels": "done"}
    )
    assert r.status_code == 200 and r.json()["state"] == "closed" and "done" in r.json()["labels"]
    r = api(emu, "PUT", "/projects/42/issues/1", json={"state_event": "reopen"})
    assert r.status_code == 200 and r.json()["state"] == "opened"
    assert r.json()["closed_at"] is None and r.json()["closed_by"] is None
    payloads = delivered(emu, receiver)
    assert [p["object_attributes"]["action"] for p in payloads] == ["close", "update", "reopen"]
    reopen = payloads[2]
    assert reopen["changes"]["state_id"] == {"previous": 2, "current": 1}
    assert reopen["changes"]["closed_at"]["current"] is None
    stamps = [p["object_attributes"]["updated_at"] for p in payloads]
    assert stamps == sorted(stamps) and len(set(stamps)) == 3  # each event is newer
    assert {p["user"]["username"] for p in payloads} == {"bridge"}


def test_nothing_changes_nothing_fires(hooked, receiver):
    """Closing a closed issue or setting the labels it has answers 200 and fires no webhook."""
    emu = hooked
    emu.update_issue(42, 1, state="closed")
    before = emu.issue(42, 1)
    for params in ({"state_event": "close"}, {"labels": "bug"}, {"title": before["title"]}):
        r = api(emu, "PUT", "/projects/42/issues/1", json=params)
        assert r.status_code == 200 and r.json() == before
    assert emu.wait_hooks_idle(5) and receiver.received == [] and emu.hook_deliveries == []


def test_form_and_json_bodies_both_write(hooked, receiver):
    """Form-encoded bodies (assignee_ids[] or a comma list) write like JSON ones."""
    emu = hooked
    alice, bob = user_id(emu, "alice"), user_id(emu, "bob")
    form = [("assignee_ids[]", str(alice)), ("assignee_ids[]", str(bob)), ("add_labels", "p1")]
    r = api(emu, "PUT", "/projects/42/issues/1", data=form)
    assert r.status_code == 200, r.text
    assert [a["username"] for a in r.json()["assignees"]] == ["alice", "bob"]
    assert r.json()["labels"] == ["bug", "p1"]
    r = api(emu, "PUT", "/projects/42/issues/1", data={"assignee_ids": str(bob), "due_date": ""})
    assert [a["username"] for a in r.json()["assignees"]] == ["bob"]
    r = api(emu, "PUT", "/projects/42/issues/1", params={"due_date": "2026-07-01"})
    assert r.json()["due_date"] == "2026-07-01"  # query parameters count too
    r = api(emu, "PUT", "/projects/42/issues/1", json={"due_date": None})
    assert r.json()["due_date"] is None
    assert [w.params for w in emu.writes] == [
        {"assignee_ids": [str(alice), str(bob)], "add_labels": "p1"},
        {"assignee_ids": str(bob), "due_date": ""},
        {"due_date": "2026-07-01"},
        {"due_date": None},
    ]
    assert [d.action for d in (emu.wait_hooks_idle(5) and emu.hook_deliveries)] == ["update"] * 4


def test_add_labels_creates_a_missing_project_label(hooked, receiver):
    """add_labels makes a label the project lacks; the webhook carries its full label form."""
    emu = hooked
    api(emu, "PUT", "/projects/42/issues/1", json={"add_labels": "needs review"})
    (payload,) = delivered(emu, receiver)
    label = next(lab for lab in payload["labels"] if lab["title"] == "needs review")
    assert set(label) == {
        "id", "title", "color", "project_id", "created_at", "updated_at", "template",
        "description", "type", "group_id",
    }  # fmt: skip
    assert label["project_id"] == 42 and label["type"] == "ProjectLabel"
    listed = get(emu, "/projects/42/issues/1", with_labels_details="true").json()
    assert listed["labels"] == ["bug", "needs review"]


def test_create_issue_answers_201_and_fires_open(hooked, receiver):
    """POST /issues answers the new issue with the next iid and fires open by the token's user."""
    emu = hooked
    body = {
        "title": "From a card",
        "description": "https://trello.com/c/ZZ",
        "labels": "doing",
        "assignee_ids": [user_id(emu, "bob")],
        "due_date": "2026-08-01",
    }
    r = api(emu, "POST", "/projects/42/issues", json=body)
    assert r.status_code == 201, r.text
    new = r.json()
    assert new["iid"] == 2 and new["author"]["username"] == "bridge" and new["labels"] == ["doing"]
    assert new["due_date"] == "2026-08-01" and new["assignees"][0]["username"] == "bob"
    (payload,) = delivered(emu, receiver)
    assert payload["object_attributes"]["action"] == "open"
    assert payload["object_attributes"]["iid"] == 2 and payload["user"]["username"] == "bridge"
    assert {"title", "description", "iid", "id", "author_id", "due_date"} <= set(payload["changes"])
    assert payload["changes"]["iid"] == {"previous": None, "current": 2}
    assert api(emu, "POST", "/projects/42/issues", json={"description": "x"}).json() == {
        "error": "title is missing"
    }


def test_bad_values_are_400_and_unknown_targets_404(hooked, receiver):
    """Bad values answer 400 (error or message), unknown project or issue 404; nothing fires."""
    emu = hooked
    cases = [
        ({"state_event": "shut"}, {"error": "state_event does not have a valid value"}),
        ({"title": ""}, {"message": {"title": ["can't be blank"]}}),
        ({"title": "x" * 256}, {"message": {"title": ["is too long (maximum is 255 characters)"]}}),
        ({"due_date": "30/06/2026"}, {"message": {"due_date": ["is not a valid date"]}}),
        ({"assignee_ids": "one,two"}, {"error": "assignee_ids is invalid"}),
        ({"confidential": "maybe"}, {"error": "confidential is invalid"}),
    ]
    for params, answer in cases:
        r = api(emu, "PUT", "/projects/42/issues/1", json=params)
        assert (r.status_code, r.json()) == (400, answer), params
    r = api(emu, "PUT", "/projects/42/issues/1", json={"colour": "red"})
    assert r.status_code == 400 and "at least one parameter must be provided" in r.json()["error"]
    bad_json = requests.put(
        emu.api_url + "/projects/42/issues/1",
        data=b"{nope",
        headers={"PRIVATE-TOKEN": emu.token, "Content-Type": "application/json"},
        timeout=5,
    )
    assert bad_json.status_code == 400 and "message" in bad_json.json()
    assert api(emu, "PUT", "/projects/42/issues/9", json={"title": "x"}).json() == {
        "message": "404 Not found"
    }
    assert api(emu, "PUT", "/projects/9/issues/1", json={"title": "x"}).status_code == 404
    assert api(emu, "POST", "/projects/42/issues/9/notes", json={"body": "x"}).status_code == 404
    assert api(emu, "POST", "/projects/42/issues/1/notes", json={"body": " "}).status_code == 400
    assert emu.issue(42, 1)["title"] == "Export drops rows"
    assert emu.wait_hooks_idle(5) and receiver.received == []


def test_note_is_created_listed_and_fires_a_note_hook(hooked, receiver):
    """POST /notes answers the note and fires one Note Hook shaped like fixture 07."""
    emu = hooked
    before = emu.issue(42, 1)
    r = api(emu, "POST", "/projects/42/issues/1/notes", json={"body": "From Trello: <ok> & go"})
    assert r.status_code == 201, r.text
    note = r.json()
    assert set(note) >= {
        "id", "body", "author", "created_at", "updated_at", "system", "noteable_id",
        "noteable_type", "noteable_iid", "internal",
    }  # fmt: skip
    assert (note["body"], note["author"]["username"], note["system"]) == (
        "From Trello: <ok> & go",
        "bridge",
        False,
    )
    assert (note["noteable_type"], note["noteable_iid"], note["noteable_id"]) == (
        "Issue",
        1,
        before["id"],
    )
    after = emu.issue(42, 1)
    assert after["user_notes_count"] == 1 and after["updated_at"] == note["created_at"]
    listed = get(emu, "/projects/42/issues/1/notes", sort="asc").json()
    assert [n["id"] for n in listed] == [note["id"]]
    assert get(emu, f"/projects/42/issues/1/notes/{note['id']}").json() == listed[0]
    (payload,) = delivered(emu, receiver)
    assert emu.hook_deliveries == [("Note Hook", "create", 200)]
    headers, body = receiver.received[0]
    assert b"\\u003cok\\u003e \\u0026 go" in body  # GitLab's JSON escapes <, > and &
    fixture = json.loads((FIXTURES / "07-note-on-issue.json").read_text())
    assert set(payload) == set(fixture)
    for part in ("object_attributes", "project", "issue", "user", "repository"):
        assert set(payload[part]) == set(fixture[part]), part
    attrs = payload["object_attributes"]
    assert (attrs["note"], attrs["noteable_type"], attrs["action"]) == (
        note["body"],
        "Issue",
        "create",
    )
    assert attrs["url"] == f"{emu.url}/acme/widget-api/-/issues/1#note_{note['id']}"
    assert payload["issue"]["iid"] == 1 and payload["user"]["username"] == "bridge"
    internal = api(emu, "POST", "/projects/42/issues/1/notes", json={"body": "x", "internal": True})
    assert internal.json()["internal"] is True
    assert emu.wait_hooks_idle(5)
    assert emu.hook_deliveries[-1] == ("Confidential Note Hook", "create", 200)
    assert receiver.payloads[-1]["event_type"] == "confidential_note"


def test_issue_hook_payload_is_shaped_like_the_fixtures(hooked, receiver):
    """The Issue Hook body has fixture 01's keys at every level; assignees only when assigned."""
    emu = hooked
    emu.as_user("dortiz").edit_issue(42, 1, assignees=[])
    emu.as_user("dortiz").edit_issue(42, 1, assignees=["alice", "bob"], due_date="2026-06-30")
    unassigned, assigned = delivered(emu, receiver)
    fixture = json.loads((FIXTURES / "01-issue-open.json").read_text())
    assert set(unassigned) == set(fixture) and "assignees" not in unassigned
    assert set(assigned) == set(fixture) | {"assignees"}
    for part in ("object_attributes", "project", "user", "repository"):
        assert set(assigned[part]) == set(fixture[part]), part
    assert set(assigned["labels"][0]) == set(fixture["labels"][0])
    assert assigned["object_kind"] == assigned["event_type"] == "issue"
    assert assigned["object_attributes"]["type"] == "Issue"
    assert assigned["object_attributes"]["state_id"] == 1
    assert [u["username"] for u in assigned["assignees"]] == ["alice", "bob"]
    assert set(assigned["assignees"][0]) == {"id", "name", "username", "avatar_url", "email"}
    assert assigned["changes"]["due_date"] == {"previous": "2026-05-31", "current": "2026-06-30"}
    assert assigned["project"]["path_with_namespace"] == "acme/widget-api"
    assert assigned["project"]["web_url"] == f"{emu.url}/acme/widget-api"


def test_webhook_headers_and_standard_webhooks_signature(emu, project, receiver):
    """Each delivery carries GitLab's headers; keys are per delivery; the signature verifies."""
    emu.add_hook(42, receiver.url, "tok-1", signing_token=SIGNING_TOKEN)
    emu.add_hook(42, receiver.url)  # the same URL twice fires twice, with different keys
    emu.as_user("dortiz").open_issue(42, "First")
    emu.as_user("dortiz").close_issue(42, 1)
    assert len(delivered(emu, receiver)) == 4
    sent = [headers for headers, _ in receiver.received]
    for headers in sent:
        assert set(HOOK_HEADERS) <= set(headers)
        assert headers["Content-Type"] == "application/json"
        assert headers["User-Agent"] == "GitLab/19.1.0-ee"
        assert headers["X-Gitlab-Event"] == "Issue Hook"
        assert headers["X-Gitlab-Instance"] == emu.url
        assert headers["webhook-id"] == headers["Idempotency-Key"]
    with_token = [h for h in sent if "X-Gitlab-Token" in h]
    assert len(with_token) == 2 and {h["X-Gitlab-Token"] for h in with_token} == {"tok-1"}
    assert len({h["Idempotency-Key"] for h in sent}) == 4
    assert len({h["X-Gitlab-Webhook-UUID"] for h in sent}) == 4
    assert len({h["X-Gitlab-Event-UUID"] for h in sent}) == 2  # one per event, shared
    for headers, body in receiver.received:
        if "webhook-signature" in headers:
            expected = sign_webhook(
                SIGNING_TOKEN, headers["webhook-id"], headers["webhook-timestamp"], body
            )
            assert headers["webhook-signature"] == expected
    assert sum("webhook-signature" in h for h in sent) == 2


def test_signature_matches_the_fixture_test_vector():
    """sign_webhook reproduces the real signature recorded for fixture 01."""
    headers = json.loads((FIXTURES / "headers.json").read_text())
    expected = headers["01-issue-open.json"]
    body = (FIXTURES / "01-issue-open.json").read_bytes()
    signature = sign_webhook(
        headers["_signing_token"], expected["webhook-id"], expected["webhook-timestamp"], body
    )
    assert signature == expected["webhook-signature"]


def test_a_persons_changes_fire_with_that_person_as_user(hooked, receiver):
    """as_user changes state as the API would, fires with user = the person, makes no API call."""
    emu = hooked
    lee = emu.as_user("lpark")
    emu.reset_calls()
    lee.close_issue(42, 1)
    lee.reopen_issue(42, 1)
    edited = lee.edit_issue(42, 1, title="Renamed", labels=["bug", "ux"], due_date="2026-06-30")
    assert edited["title"] == "Renamed" and edited["labels"] == ["bug", "ux"]
    note = lee.comment(42, 1, "Looks fixed")
    opened = lee.open_issue(42, "By hand", "text", labels=["p2"], assignees=["bob"])
    assert note["author"]["username"] == "lpark" and opened["author"]["username"] == "lpark"
    assert opened["iid"] == 2 and emu.issue(42, 2)["labels"] == ["p2"]
    payloads = delivered(emu, receiver)
    assert [(d.event, d.action) for d in emu.hook_deliveries] == [
        ("Issue Hook", "close"),
        ("Issue Hook", "reopen"),
        ("Issue Hook", "update"),
        ("Note Hook", "create"),
        ("Issue Hook", "open"),
    ]
    assert {p["user"]["username"] for p in payloads} == {"lpark"}
    assert payloads[0]["user"]["id"] == user_id(emu, "lpark")
    assert set(payloads[2]["changes"]) >= {"title", "labels", "due_date"}
    assert emu.issue(42, 1)["closed_by"] is None
    assert emu.calls == [] and emu.count_writes() == 0
    with pytest.raises(KeyError):
        lee.close_issue(42, 99)
    with pytest.raises(ValueError):
        lee.edit_issue(42, 1, title="")
    with pytest.raises(ValueError):
        lee.edit_issue(42, 1, due_date="soon")
    with pytest.raises(TypeError):
        lee.edit_issue(42, 1, colour="red")


def test_seeding_stays_silent(hooked, receiver):
    """add_issue and update_issue change state without a webhook, as a lost delivery."""
    emu = hooked
    emu.add_issue(42, title="Quiet")
    emu.update_issue(42, 1, state="closed")
    assert emu.wait_hooks_idle(5) and receiver.received == []


def test_confidential_issues_and_hook_triggers(emu, project, receiver):
    """Confidential issues go to Confidential Issue Hook; unticked triggers get nothing."""
    emu.add_hook(42, receiver.url, issues_events=True, note_events=False)
    other = Receiver()
    try:
        emu.add_hook(42, other.url, issues_events=True, confidential_issues_events=False)
        dana = emu.as_user("dortiz")
        dana.open_issue(42, "Leak", confidential=True)
        dana.comment(42, 1, "hush")
        assert emu.wait_hooks_idle(5)
        assert [json.loads(b)["event_type"] for _, b in receiver.received] == ["confidential_issue"]
        assert receiver.received[0][0]["X-Gitlab-Event"] == "Confidential Issue Hook"
        payload = receiver.payloads[0]
        assert payload["object_kind"] == "issue"
        assert payload["changes"]["confidential"] == {"previous": False, "current": True}
        assert [json.loads(b)["event_type"] for _, b in other.received] == ["confidential_note"]
        dana.open_issue(42, "Outage", issue_type="incident")
        assert emu.wait_hooks_idle(5)
        incident = receiver.payloads[-1]
        assert (incident["object_kind"], incident["object_attributes"]["type"]) == (
            "work_item",
            "Incident",
        )
    finally:
        other.close()


def test_gitlab_never_retries_a_failed_delivery(hooked, receiver):
    """A 500, a timeout or a refused connection is one attempt, logged with its status or 0."""
    emu = hooked
    emu.hook_timeout = 0.3
    receiver.status = 500
    emu.as_user("lpark").close_issue(42, 1)
    assert emu.wait_hooks_idle(5)
    receiver.status, receiver.delay = 200, 1.0
    emu.as_user("lpark").reopen_issue(42, 1)
    assert emu.wait_hooks_idle(5)
    receiver.delay = 0.0
    dead = f"http://127.0.0.1:{free_port()}/nobody"
    emu.remove_hook(emu.hooks(42)[0]["id"])
    emu.add_hook(42, dead)
    emu.as_user("lpark").close_issue(42, 1)
    assert emu.wait_hooks_idle(5)
    assert emu.hook_deliveries == [
        ("Issue Hook", "close", 500),
        ("Issue Hook", "reopen", 0),
        ("Issue Hook", "close", 0),
    ]
    assert len(receiver.received) == 2  # no second attempt of either
    assert all(r.error for r in emu.hook_requests[1:])


def test_resend_keeps_the_idempotency_key(hooked, receiver):
    """Resend request sends the same body and Idempotency-Key with a new Webhook-UUID."""
    emu = hooked
    emu.as_user("lpark").close_issue(42, 1)
    assert emu.wait_hooks_idle(5)
    emu.resend_hook(0)
    assert emu.wait_hooks_idle(5)
    (h1, b1), (h2, b2) = receiver.received
    assert b1 == b2 and h1["Idempotency-Key"] == h2["Idempotency-Key"]
    assert h1["X-Gitlab-Webhook-UUID"] != h2["X-Gitlab-Webhook-UUID"]


def test_test_button_sends_the_latest_issue_as_open(hooked, receiver):
    """The hook's Test button sends the most recent issue with action open and no changes."""
    emu = hooked
    emu.add_issue(42, title="Newest")
    emu.test_hook(emu.hooks(42)[0]["id"])
    (payload,) = delivered(emu, receiver)
    assert payload["object_attributes"]["title"] == "Newest"
    assert (payload["object_attributes"]["action"], payload["changes"]) == ("open", {})


def test_held_deliveries_can_arrive_out_of_order(hooked, receiver):
    """Paused deliveries resume in reverse: the receiver sees close before the update."""
    emu = hooked
    emu.pause_hooks()
    emu.as_user("lpark").edit_issue(42, 1, title="Edited")
    emu.as_user("lpark").close_issue(42, 1)
    assert not emu.wait_hooks_idle(0.2)
    emu.resume_hooks("reverse")
    actions = [p["object_attributes"]["action"] for p in delivered(emu, receiver)]
    assert actions == ["close", "update"]


def test_auto_disable_drops_events_after_four_failures(hooked, receiver):
    """An auto_disable hook stops after the 4th failure in a row; events meanwhile are dropped."""
    emu = hooked
    emu.remove_hook(emu.hooks(42)[0]["id"])
    hook = emu.add_hook(42, receiver.url, auto_disable=True)
    receiver.status = 502
    lee = emu.as_user("lpark")
    for _ in range(3):
        lee.close_issue(42, 1)
        lee.reopen_issue(42, 1)
    assert emu.wait_hooks_idle(5)
    assert len(receiver.received) == 4
    assert [r.dropped for r in emu.hook_requests] == [False] * 4 + [True] * 2
    view = emu.hooks(42)[0]
    assert view["id"] == hook["id"] and view["alert_status"] == "temporarily_disabled"
    assert view["disabled_until"] is not None


def test_read_api_token_is_refused_every_write(hooked, receiver):
    """A read_api token reads, but each write answers 403 insufficient_scope and changes nothing."""
    emu = hooked
    emu.add_token("glpat-read", user="bridge-bot", scopes=("read_api",))
    refusal = {
        "error": "insufficient_scope",
        "error_description": "The request requires higher privileges than provided by the "
        "access token.",
        "scope": "api",
    }
    assert api(emu, "GET", "/projects/42/issues/1", token="glpat-read").status_code == 200
    assert api(emu, "GET", "/user", token="glpat-read").json()["username"] == "bridge-bot"
    writes = [
        ("PUT", "/projects/42/issues/1", {"state_event": "close"}),
        ("POST", "/projects/42/issues", {"title": "x"}),
        ("POST", "/projects/42/issues/1/notes", {"body": "x"}),
        ("DELETE", "/projects/42/issues/1", None),
    ]
    for method, path, body in writes:
        r = api(emu, method, path, token="glpat-read", json=body)
        assert (r.status_code, r.json()) == (403, refusal), (method, path)
    gl = python_gitlab.Gitlab(emu.url, private_token="glpat-read", timeout=5)
    issue = gl.projects.get(42).issues.get(1)
    issue.state_event = "close"
    with pytest.raises(python_gitlab.exceptions.GitlabUpdateError) as info:
        issue.save()
    assert info.value.response_code == 403
    assert emu.issue(42, 1)["state"] == "opened" and len(emu.issues(42)) == 1
    assert emu.count_writes() == 5
    assert emu.wait_hooks_idle(5) and receiver.received == []
    emu.add_token("glpat-user", scopes=["read_user"])
    assert api(emu, "GET", "/user", token="glpat-user").status_code == 200
    denied = api(emu, "GET", "/projects/42", token="glpat-user")
    assert denied.status_code == 403 and denied.json()["scope"] == "api read_api"


def test_revoked_and_expired_tokens_are_401_invalid_token(emu, project):
    """A revoked or expired token answers GitLab's 401 invalid_token with its description."""
    emu.add_token("glpat-old", expires_at="2020-01-01")
    emu.add_token("glpat-gone")
    emu.revoke_token("glpat-gone")
    expired = api(emu, "GET", "/user", token="glpat-old")
    assert expired.status_code == 401 and expired.json() == {
        "error": "invalid_token",
        "error_description": "Token is expired. You can either do re-authorization or token "
        "refresh.",
    }
    revoked = api(emu, "GET", "/personal_access_tokens/self", token="glpat-gone")
    assert revoked.status_code == 401
    assert revoked.json()["error_description"].startswith("Token was revoked")
    assert 'error="invalid_token"' in revoked.headers["WWW-Authenticate"]
    assert emu.token_info("glpat-gone")["active"] is False


def test_token_self_users_and_user_answer(emu, project):
    """/personal_access_tokens/self, /users?username= and /user describe the token and users."""
    emu.add_user("bridge-bot", "Trello Bridge Bot")
    emu.add_token("glpat-bot", user="bridge-bot", scopes=("api", "read_user"))
    me = api(emu, "GET", "/personal_access_tokens/self", token="glpat-bot").json()
    assert set(me) >= {
        "id", "name", "revoked", "created_at", "scopes", "user_id", "active", "expires_at",
    }  # fmt: skip
    bot = api(emu, "GET", "/user", token="glpat-bot").json()
    assert (me["scopes"], me["active"], me["revoked"]) == (["api", "read_user"], True, False)
    assert me["user_id"] == bot["id"] and bot["username"] == "bridge-bot"
    assert bot["name"] == "Trello Bridge Bot"
    found = api(emu, "GET", "/users", params={"username": "Bridge-Bot"}).json()
    assert [u["username"] for u in found] == ["bridge-bot"]
    assert set(found[0]) >= {"id", "username", "name", "state", "avatar_url", "web_url"}
    assert found[0]["web_url"] == f"{emu.url}/bridge-bot" and found[0]["state"] == "active"
    assert api(emu, "GET", "/users", params={"username": "nobody"}).json() == []
    assert api(emu, "GET", f"/users/{bot['id']}").json()["username"] == "bridge-bot"
    assert api(emu, "GET", "/users/999").status_code == 404
    assert emu.token_info()["user_id"] == api(emu, "GET", "/user").json()["id"]


def test_search_in_description_finds_an_issue_by_url(hooked):
    """search=URL with in=description finds the issue whose description holds it, only that."""
    emu = hooked
    emu.add_issue(42, title="https://trello.com/c/AbC123xy in the title", description="none")
    emu.add_issue(42, title="Other", description="https://trello.com/c/Zz9")

    def found(**params: Any) -> list[int]:
        return sorted(i["iid"] for i in get(emu, "/projects/42/issues", **params).json())

    url = "https://trello.com/c/AbC123xy"
    assert found(search=url, **{"in": "description"}) == [1]
    assert found(search=url, **{"in": "title"}) == [2]
    assert found(search=url) == [1, 2]
    assert found(search="EXPORT drops", **{"in": "title"}) == [1]  # every word, any case
    assert found(search="trello.com/c/nothing", **{"in": "description"}) == []
    project = client(emu).projects.get(42)
    issues = project.issues.list(search=url, get_all=True, **{"in": "description"})
    assert [i.iid for i in issues] == [1]


def test_python_gitlab_does_each_write(hooked, receiver):
    """python-gitlab closes, reopens, labels, assigns, dates, comments and creates here."""
    emu = hooked
    gl = client(emu)
    assert gl.http_get("/personal_access_tokens/self")["scopes"] == ["api"]
    assert [u.username for u in gl.users.list(username="alice")] == ["alice"]
    issue = gl.projects.get(42).issues.get(1)
    issue.state_event = "close"
    issue.save()
    assert issue.state == "closed"
    issue.state_event = "reopen"
    issue.save()
    issue.labels = ["bug", "doing"]
    issue.save()
    issue.assignee_ids = [user_id(emu, "bob")]
    issue.due_date = "2026-06-30"
    issue.save()
    assert [a["username"] for a in issue.assignees] == ["bob"] and issue.due_date == "2026-06-30"
    issue.due_date = None
    issue.save()
    project = gl.projects.get(42, lazy=True)
    project.issues.update(1, {"add_labels": "p1", "remove_labels": "bug"})
    note = issue.notes.create({"body": "Mirrored from Trello"})
    assert note.author["username"] == "bridge" and note.body == "Mirrored from Trello"
    assert [n.body for n in issue.notes.list(get_all=True) if not n.system] == [note.body]
    created = project.issues.create({"title": "New from Trello", "labels": ["doing"]})
    assert created.iid == 2 and created.labels == ["doing"]
    final = emu.issue(42, 1)
    assert final["state"] == "opened" and final["labels"] == ["doing", "p1"]
    assert final["due_date"] is None
    assert emu.count_writes() == 8
    assert emu.wait_hooks_idle(5)
    assert [d.action for d in emu.hook_deliveries] == [
        "close", "reopen", "update", "update", "update", "update", "create", "open",
    ]  # fmt: skip
    assert {p["user"]["username"] for p in receiver.payloads} == {"bridge"}


def test_count_writes_counts_non_get_calls(hooked):
    """count_writes counts every API call that is not GET or HEAD, refused ones included."""
    emu = hooked
    get(emu, "/projects/42/issues")
    api(emu, "PUT", "/projects/42/issues/1", json={"title": "New"})
    api(emu, "PUT", "/projects/42/issues/1", token="wrong", json={"title": "New"})
    api(emu, "POST", "/projects/42/issues/1/notes", json={"body": "hi"})
    assert emu.count_writes() == 3 and len(emu.calls) == 4
    assert [(w.method, w.status) for w in emu.writes] == [("PUT", 200), ("PUT", 401), ("POST", 201)]
    emu.reset_calls()
    assert emu.count_writes() == 0


def test_system_notes_are_listed_not_hooked(hooked, receiver):
    """Edits add GitLab's system notes to the notes listing; they fire no Note Hook."""
    emu = hooked
    lee = emu.as_user("lpark")
    lee.edit_issue(42, 1, title="Renamed", assignees=["bob"], due_date="2026-06-30")
    lee.edit_issue(42, 1, due_date=None)
    system = [n["body"] for n in emu.notes(42, 1, system=True)]
    assert system == [
        "changed title from **Export drops rows** to **Renamed**",
        "assigned to @bob and unassigned @alice",
        "changed due date to June 30, 2026",
        "removed due date",
    ]
    listed = get(emu, "/projects/42/issues/1/notes", per_page=2)
    assert listed.headers["X-Total"] == "4" and len(listed.json()) == 2
    assert all(n["system"] for n in listed.json())
    assert emu.wait_hooks_idle(5)
    assert [d.event for d in emu.hook_deliveries] == ["Issue Hook", "Issue Hook"]


def test_quick_actions_in_a_comment_run(hooked, receiver):
    """/close in a comment closes the issue; a comment of commands only answers 202."""
    emu = hooked
    r = api(emu, "POST", "/projects/42/issues/1/notes", json={"body": "Done here\n/close"})
    assert r.status_code == 201 and r.json()["body"] == "Done here"
    assert emu.issue(42, 1)["state"] == "closed"
    r = api(emu, "POST", "/projects/42/issues/1/notes", json={"body": "/reopen\n/label ~p1"})
    assert r.status_code == 202
    assert r.json()["commands_changes"]["state_event"] == "reopen"
    assert emu.issue(42, 1)["state"] == "opened" and "p1" in emu.issue(42, 1)["labels"]
    fenced = "```\n/close\n```"
    assert api(emu, "POST", "/projects/42/issues/1/notes", json={"body": fenced}).status_code == 201
    assert emu.issue(42, 1)["state"] == "opened"
    assert emu.wait_hooks_idle(5)
    assert [d.action for d in emu.hook_deliveries] == [
        "create",
        "close",
        "reopen",
        "update",
        "create",
    ]


def test_move_and_delete(hooked, receiver):
    """A move fires open of the new issue, then close of the old with moved_to_id; delete none."""
    emu = hooked
    emu.add_project("acme/other", project_id=43)
    emu.add_hook(43, receiver.url)
    moved = emu.as_user("lpark").move_issue(42, 1, 43)
    assert moved["project_id"] == 43 and moved["title"] == "Export drops rows"
    old = emu.issue(42, 1)
    assert old["state"] == "closed" and old["moved_to_id"] == moved["id"]
    opened, closed = delivered(emu, receiver)
    assert (opened["object_attributes"]["action"], opened["project"]["id"]) == ("open", 43)
    assert closed["object_attributes"]["action"] == "close"
    assert closed["object_attributes"]["moved_to_id"] == moved["id"]
    assert closed["changes"]["moved_to_id"] == {"previous": None, "current": moved["id"]}
    assert api(emu, "DELETE", f"/projects/43/issues/{moved['iid']}").status_code == 204
    assert emu.issues(43) == []
    assert emu.wait_hooks_idle(5) and len(receiver.received) == 2


def test_event_uuid_passes_through_api_calls(hooked, receiver):
    """An API write carrying X-Gitlab-Event-UUID fires events with that same UUID."""
    emu = hooked
    headers = {
        "PRIVATE-TOKEN": emu.token,
        "X-Gitlab-Event-UUID": "11111111-2222-4333-8444-555555555555",
    }
    requests.put(
        emu.api_url + "/projects/42/issues/1", json={"title": "T"}, headers=headers, timeout=5
    )
    assert emu.wait_hooks_idle(5)
    assert receiver.received[0][0]["X-Gitlab-Event-UUID"] == headers["X-Gitlab-Event-UUID"]


def test_free_tier_keeps_the_first_assignee(receiver):
    """With multiple_assignees off, only the first of several assignee_ids is kept."""
    with GitLabEmulator(multiple_assignees=False, username="bridge-bot") as emu:
        emu.add_project("acme/widget-api", project_id=42)
        emu.add_issue(42, title="x")
        a, b = emu.add_user("alice")["id"], emu.add_user("bob")["id"]
        r = api(emu, "PUT", "/projects/42/issues/1", json={"assignee_ids": [b, a, 999]})
        assert [u["username"] for u in r.json()["assignees"]] == ["bob"]
        assert api(emu, "GET", "/user").json()["username"] == "bridge-bot"


def test_hooks_must_stay_on_loopback(emu, project):
    """A hook URL off this machine, or not http, is refused."""
    for url in ("http://example.com/hook", "https://127.0.0.1/hook", "http://10.0.0.1/x"):
        with pytest.raises(ValueError):
            emu.add_hook(42, url)
    assert emu.add_hook(42, "http://localhost:9/x")["alert_status"] == "executable"


def test_control_routes_act_as_a_person(hooked, receiver):
    """POST /_emulator/act runs a person's action for another process; it fires, unrecorded."""
    emu = hooked
    control = emu.url + "/_emulator"
    r = requests.post(
        control + "/act",
        json={"username": "lpark", "what": "close_issue", "args": {"project_id": 42, "iid": 1}},
        timeout=5,
    )
    assert r.status_code == 200 and r.json()["ok"] is True
    assert r.json()["result"]["state"] == "closed"
    r = requests.post(
        control + "/act",
        json={"username": "lpark", "what": "comment", "args": [42, 1, "From the demo"]},
        timeout=5,
    )
    assert r.json()["result"]["body"] == "From the demo"
    bad = requests.post(control + "/act", json={"username": "lpark", "what": "explode"}, timeout=5)
    assert bad.status_code == 400 and "error" in bad.json()
    missing = requests.post(
        control + "/act",
        json={"username": "lpark", "what": "close_issue", "args": [42, 99]},
        timeout=5,
    )
    assert missing.status_code == 404
    extra = Receiver()
    try:
        hook = requests.post(control + "/hooks", json={"project": 42, "url": extra.url}, timeout=5)
        assert hook.status_code == 200 and hook.json()["result"]["url"] == extra.url
        idle = requests.post(control + "/wait_hooks_idle", json={"timeout": 5}, timeout=10)
        assert idle.json()["idle"] is True
        listed = requests.get(control + "/hooks", timeout=5).json()
        assert [d["action"] for d in listed["deliveries"]] == ["close", "create"]
        assert len(listed["hooks"]) == 2
    finally:
        extra.close()
    assert emu.calls == []
    assert receiver.payloads[0]["user"]["username"] == "lpark"


# ----------------------------------------------------------------------------- merge requests


@pytest.fixture
def two_projects(emu, project):
    """acme/widget-api (42: issues 1-4, #4 closed) and acme/other (43: issue 1)."""
    emu.add_project("acme/other", project_id=43, name="Other")
    for n in range(1, 5):
        emu.add_issue(42, title=f"Issue {n}", state="closed" if n == 4 else "opened")
    emu.add_issue(43, title="Other 1")
    return emu


@pytest.fixture
def mr_hooked(two_projects, receiver):
    """Both projects with a hook to ``receiver`` that takes merge request events too."""
    for project_id in (42, 43):
        two_projects.add_hook(project_id, receiver.url, "hook-secret", merge_requests_events=True)
    return two_projects


def closing(emu: GitLabEmulator, project_id: int, iid: int) -> list[tuple[int, int]]:
    return [(issue["project_id"], issue["iid"]) for issue in emu.closes_issues(project_id, iid)]


CLOSING_CASES = [
    ("Closes #1", [(42, 1)]),
    ("fixes #2, #3", [(42, 2), (42, 3)]),
    ("Fixes #1 and #3.", [(42, 1), (42, 3)]),
    ("Resolves #1, #2, and #3", [(42, 1), (42, 2), (42, 3)]),
    ("Closing: #2", [(42, 2)]),
    ("Implements issue #3", [(42, 3)]),
    ("closes issues #1 and #2", [(42, 1), (42, 2)]),
    ("Resolved #2!", [(42, 2)]),
    ("Resolves acme/other#1", [(43, 1)]),
    ("Fixes other#1", [(43, 1)]),
    ("Closes acme/widget-api#2", [(42, 2)]),
    ("Closes {url}/acme/widget-api/-/issues/2", [(42, 2)]),
    ("Fix {url}/acme/other/-/issues/1.", [(43, 1)]),
    ("Closes #3, {url}/acme/widget-api/-/issues/1#note_7 and other#1", [(42, 3), (42, 1), (43, 1)]),
    ("Text.\n\nCloses #2\nFixes #1", [(42, 2), (42, 1)]),
    ("Closes #2 and relates to #3", [(42, 2)]),
    ("Closes #1, #1 and #1", [(42, 1)]),
    ("Closes #4", [(42, 4)]),
    ("Related to #1", []),
    ("This closes the bug in #1", []),
    ("CLOSES #1", []),
    ("Closes#1", []),
    ("Encloses #1", []),
    ("Closes #1abc", []),
    ("Closes\n#1", []),
    ("Closes #99", []),
    ("Closes nobody/nothing#1", []),
    ("Closes https://gitlab.example.com/acme/widget-api/-/issues/1", []),
    ("Fixes PROJ-12", []),
]  # fmt: skip


@pytest.mark.parametrize(("description", "expected"), CLOSING_CASES)
def test_closes_issues_follows_gitlabs_closing_pattern(two_projects, description, expected):
    """closes_issues lists the existing issues that closing keywords reference, and no other."""
    emu = two_projects
    text = description.replace("{url}", emu.url)
    emu.as_user("lpark").open_merge_request(42, "Login fix", text, source_branch="login")
    assert closing(emu, 42, 1) == expected
    listed = get(emu, "/projects/42/merge_requests/1/closes_issues")
    assert listed.status_code == 200
    assert [(i["project_id"], i["iid"]) for i in listed.json()] == expected


def test_closes_issues_is_what_gitlab_stored_for_the_request(two_projects):
    """closes_issues is stored while the request is open (closed issues too) and kept after."""
    emu = two_projects
    lee = emu.as_user("lpark")
    lee.open_merge_request(42, "Fix #3", "Closes #4 and #5", source_branch="fix")
    assert closing(emu, 42, 1) == [(42, 3), (42, 4)]  # #4 is closed, #5 does not exist yet
    emu.add_issue(42, title="Issue 5")
    assert closing(emu, 42, 1) == [(42, 3), (42, 4)]
    lee.edit_merge_request(42, 1, description="Closes #4, #5")
    assert closing(emu, 42, 1) == [(42, 3), (42, 4), (42, 5)]
    lee.open_merge_request(42, "Backport", "Closes #1", source_branch="bp", target_branch="stable")
    assert closing(emu, 42, 2) == []
    lee.edit_merge_request(42, 2, target_branch="main")
    assert closing(emu, 42, 2) == [(42, 1)]
    lee.merge(42, 1)
    assert closing(emu, 42, 1) == [(42, 3), (42, 4), (42, 5)]
    assert {i["state"] for i in emu.closes_issues(42, 1)} == {"closed"}
    lee.edit_merge_request(42, 1, description="Closes #1")
    assert closing(emu, 42, 1) == [(42, 3), (42, 4), (42, 5)]
    emu.update_issue(42, 1, state="closed")
    lee.close_merge_request(42, 2)
    assert closing(emu, 42, 2) == [(42, 1)]
    api(emu, "DELETE", "/projects/42/issues/1")
    assert closing(emu, 42, 2) == []


def test_closes_issues_answers_issue_basic_paginated(two_projects):
    """GET closes_issues answers IssueBasic objects, paginated; an unknown request is a 404."""
    emu = two_projects
    emu.as_user("lpark").open_merge_request(42, "Fix", "Closes #1, #2 and #3", source_branch="f")
    r = get(emu, "/projects/42/merge_requests/1/closes_issues", per_page=2, page=2)
    assert r.status_code == 200 and [i["iid"] for i in r.json()] == [3]
    assert (r.headers["X-Total"], r.headers["X-Page"], r.headers["X-Prev-Page"]) == ("3", "2", "1")
    (issue,) = r.json()
    listed = get(emu, "/projects/42/issues", iids=3).json()[0]
    assert issue["web_url"] == listed["web_url"] == f"{emu.url}/acme/widget-api/-/issues/3"
    assert set(issue) < set(listed) and "_links" not in issue and "references" not in issue
    assert {k: listed[k] for k in issue} == issue
    missing = get(emu, "/projects/42/merge_requests/9/closes_issues")
    assert missing.status_code == 404 and missing.json() == {
        "message": "404 Merge Request Not Found"
    }


def test_merge_request_hook_fires_each_change_shaped_like_the_fixture(mr_hooked, receiver):
    """Each change fires one Merge Request Hook: its action, user, fixture 08's keys, no issues."""
    emu = mr_hooked
    plain = Receiver()
    try:
        emu.add_hook(42, plain.url)  # issue and note events only
        lee, dana = emu.as_user("lpark"), emu.as_user("dortiz")
        opened = lee.open_merge_request(42, "Refresh the session", "Closes #1", "118-login")
        lee.edit_merge_request(42, 1, title="Refresh the session first")
        lee.close_merge_request(42, 1)
        lee.close_merge_request(42, 1)  # already closed: nothing
        lee.reopen_merge_request(42, 1)
        dana.merge(42, 1)
        payloads = delivered(emu, receiver)
        assert emu.wait_hooks_idle(5)
        assert [json.loads(body)["object_kind"] for _, body in plain.received] == ["issue"]
    finally:
        plain.close()
    mine = [
        (d.event, d.action) for d in emu.hook_deliveries if d.status and d.event != "Issue Hook"
    ]
    assert mine == [
        ("Merge Request Hook", a) for a in ("open", "update", "close", "reopen", "merge")
    ]
    assert [h["X-Gitlab-Event"] for h, _ in receiver.received] == ["Merge Request Hook"] * 5 + [
        "Issue Hook"
    ]
    fixture = json.loads((FIXTURES / "08-merge-request-open.json").read_text())
    kinds = [p for p in payloads if p["object_kind"] == "merge_request"]
    for payload in kinds:
        assert set(payload) == set(fixture) - {"assignees", "reviewers"}  # none: keys left out
        for part in ("user", "project", "object_attributes", "repository"):
            assert set(payload[part]) >= set(fixture[part]), part
        assert payload["event_type"] == "merge_request" and payload["labels"] == []
        attrs = payload["object_attributes"]
        assert (attrs["id"], attrs["iid"], attrs["url"]) == (opened["id"], 1, opened["web_url"])
        assert (attrs["source_branch"], attrs["target_branch"]) == ("118-login", "main")
        assert attrs["source_project_id"] == attrs["target_project_id"] == 42
        assert not any("clos" in key and "issue" in key for key in [*payload, *attrs])
        assert ISO_MS.match(attrs["updated_at"])
    open_, update, close, reopen, merge = kinds
    assert [p["user"]["username"] for p in kinds] == ["lpark"] * 4 + ["dortiz"]
    assert [p["object_attributes"]["state"] for p in kinds] == [
        "opened", "opened", "closed", "opened", "merged",
    ]  # fmt: skip
    stamps = [p["object_attributes"]["updated_at"] for p in kinds]
    assert stamps == sorted(set(stamps))
    assert open_["changes"] == {} and open_["object_attributes"]["merge_status"] == "checking"
    assert open_["object_attributes"]["description"] == "Closes #1"
    assert set(update["changes"]) == {
        "title", "last_edited_at", "last_edited_by_id", "updated_at", "updated_by_id",
    }  # fmt: skip
    assert update["changes"]["title"] == {
        "previous": "Refresh the session",
        "current": "Refresh the session first",
    }
    assert close["changes"]["state_id"] == {"previous": 1, "current": 2}
    assert reopen["changes"]["state_id"] == {"previous": 2, "current": 1}
    assert merge["changes"]["state_id"] == {"previous": 4, "current": 3}  # locked, then merged
    assert set(close["changes"]) == set(reopen["changes"]) == set(merge["changes"]) == {
        "state_id", "updated_at",
    }  # fmt: skip
    attrs = merge["object_attributes"]
    assert attrs["merged_at"] == attrs["updated_at"] and attrs["merge_commit_sha"]
    assert attrs["merge_user_id"] == user_id(emu, "dortiz")
    assert attrs["detailed_merge_status"] == "not_open"


def test_merging_closes_its_issues_and_fires_their_close_hooks(mr_hooked, receiver):
    """Merging closes each open issue it closes, as the merger, each firing its Issue Hook close."""
    emu = mr_hooked
    emu.as_user("lpark").open_merge_request(
        42, "Login fix", "Closes #1, #4 and acme/other#1. See #2.", source_branch="fix"
    )
    assert emu.wait_hooks_idle(5)
    emu.reset_hook_deliveries()
    receiver.received.clear()
    merged = emu.as_user("dortiz").merge(42, 1)
    assert merged["state"] == "merged" and merged["merged_by"]["username"] == "dortiz"
    assert (
        merged["merged_at"] == merged["updated_at"]
        and merged["detailed_merge_status"] == "not_open"
    )
    mr_hook, *issue_hooks = delivered(emu, receiver)
    assert [(d.event, d.action) for d in emu.hook_deliveries] == [
        ("Merge Request Hook", "merge"),
        ("Issue Hook", "close"),
        ("Issue Hook", "close"),
    ]
    assert mr_hook["object_attributes"]["action"] == "merge"
    closed = [(p["project"]["id"], p["object_attributes"]["iid"]) for p in issue_hooks]
    assert closed == [(42, 1), (43, 1)]
    for payload in issue_hooks:
        assert payload["user"]["username"] == "dortiz"
        assert payload["object_attributes"]["state"] == "closed"
        assert set(payload["changes"]) >= {"state_id", "closed_at"}
    for project_id, iid in closed:
        issue = emu.issue(project_id, iid)
        assert issue["state"] == "closed" and issue["closed_by"]["username"] == "dortiz"
    assert emu.issue(42, 2)["state"] == "opened" and emu.issue(42, 3)["state"] == "opened"
    with pytest.raises(ValueError):
        emu.as_user("dortiz").merge(42, 1)
    assert emu.wait_hooks_idle(5) and len(receiver.received) == 3


def test_a_merge_into_another_branch_or_a_draft_closes_nothing(mr_hooked, receiver):
    """A merge into a branch other than main closes nothing; drafts and closed ones can't merge."""
    emu = mr_hooked
    lee = emu.as_user("lpark")
    lee.open_merge_request(42, "Backport", "Closes #1", "bp", target_branch="stable")
    lee.merge(42, 1)
    lee.open_merge_request(42, "Draft: Fix", "Closes #2", "fix")
    with pytest.raises(ValueError):
        lee.merge(42, 2)
    assert emu.merge_request(42, 2)["draft"] is True
    lee.edit_merge_request(42, 2, title="Fix")
    lee.close_merge_request(42, 2)
    with pytest.raises(ValueError):
        lee.merge(42, 2)
    assert [i["state"] for i in emu.issues(42)] == ["opened", "opened", "opened", "closed"]
    assert emu.wait_hooks_idle(5)
    assert "Issue Hook" not in {d.event for d in emu.hook_deliveries}


def test_merge_request_rest_endpoints_answer_as_gitlab(mr_hooked, receiver):
    """The merge request endpoints answer GitLab's shapes and errors, acting as the token's user."""
    emu = mr_hooked
    body = {
        "title": "Fix",
        "source_branch": "fix",
        "target_branch": "main",
        "description": "Fixes #2",
    }
    r = api(emu, "POST", "/projects/42/merge_requests", json=body)
    assert r.status_code == 201, r.text
    created = r.json()
    assert (created["iid"], created["state"], created["author"]["username"]) == (
        1,
        "opened",
        "bridge",
    )
    assert created["web_url"] == f"{emu.url}/acme/widget-api/-/merge_requests/1"
    assert (
        created["references"]["full"] == "acme/widget-api!1"
        and created["merge_status"] == "checking"
    )
    assert created["merged_at"] is None and created["closed_at"] is None and created["sha"]
    got = get(emu, "/projects/42/merge_requests/1").json()
    assert got["merge_status"] == "can_be_merged" and got["detailed_merge_status"] == "mergeable"
    assert got == emu.merge_request(42, 1) and got["user"] == {"can_merge": True}
    again = api(emu, "POST", "/projects/42/merge_requests", json=body)
    assert again.status_code == 409
    assert again.json() == {
        "message": ["Another open merge request already exists for this source branch: !1"]
    }
    same = api(emu, "POST", "/projects/42/merge_requests", json={**body, "source_branch": "main"})
    assert same.status_code == 422
    missing = api(emu, "POST", "/projects/42/merge_requests", json={"title": "x"})
    assert missing.status_code == 400
    assert missing.json() == {"error": "source_branch is missing, target_branch is missing"}
    assert api(emu, "PUT", "/projects/42/merge_requests/1", json={}).status_code == 400
    assert api(emu, "PUT", "/projects/42/merge_requests/1", json={"title": ""}).json() == {
        "error": "title is empty"
    }
    assert get(emu, "/projects/42/merge_requests/7").json() == {
        "message": "404 Merge Request Not Found"
    }
    r = api(emu, "PUT", "/projects/42/merge_requests/1", json={"state_event": "close"})
    assert r.json()["state"] == "closed" and r.json()["closed_by"]["username"] == "bridge"
    assert api(emu, "PUT", "/projects/42/merge_requests/1/merge").status_code == 405
    r = api(emu, "PUT", "/projects/42/merge_requests/1", data={"state_event": "reopen"})
    assert r.json()["state"] == "opened" and r.json()["closed_at"] is None
    assert [m["iid"] for m in get(emu, "/projects/42/merge_requests", state="opened").json()] == [1]
    assert get(emu, "/projects/42/merge_requests", state="merged").json() == []
    assert get(emu, "/projects/42/merge_requests", state="shut").status_code == 400
    emu.add_token("glpat-read", scopes=["read_api"])
    refused = api(emu, "PUT", "/projects/42/merge_requests/1/merge", token="glpat-read")
    assert refused.status_code == 403
    wrong = api(emu, "PUT", "/projects/42/merge_requests/1/merge", json={"sha": "0" * 40})
    assert wrong.status_code == 409
    assert wrong.json() == {"message": f"SHA does not match HEAD of source branch: {got['sha']}"}
    uuid = "11111111-2222-4333-8444-555555555555"
    merged = requests.put(
        emu.api_url + "/projects/42/merge_requests/1/merge",
        json={"sha": got["sha"], "should_remove_source_branch": True},
        headers={"PRIVATE-TOKEN": emu.token, "X-Gitlab-Event-UUID": uuid},
        timeout=5,
    )
    assert merged.status_code == 200 and merged.json()["state"] == "merged"
    assert merged.json()["merged_by"]["username"] == "bridge" and merged.json()["merge_commit_sha"]
    assert [m["iid"] for m in get(emu, "/projects/42/merge_requests", state="merged").json()] == [1]
    assert emu.issue(42, 2)["closed_by"]["username"] == "bridge"
    payloads = delivered(emu, receiver)
    assert {p["user"]["username"] for p in payloads} == {"bridge"}
    assert [h["X-Gitlab-Event-UUID"] for h, _ in receiver.received[-2:]] == [uuid, uuid]
    assert [w.status for w in emu.writes] == [
        201,
        409,
        422,
        400,
        400,
        400,
        200,
        405,
        200,
        403,
        409,
        200,
    ]


def test_python_gitlab_reads_closes_issues(two_projects):
    """python-gitlab creates, lists and merges a merge request and reads its closes_issues."""
    emu = two_projects
    gl = client(emu)
    project = gl.projects.get(42)
    created = project.mergerequests.create(
        {
            "source_branch": "fix",
            "target_branch": "main",
            "title": "Fix the login",
            "description": "Closes #1 and acme/other#1",
        }
    )
    assert created.iid == 1 and created.state == "opened"
    mr = gl.projects.get(42).mergerequests.get(1)
    issues = list(mr.closes_issues())
    assert [(i.project_id, i.iid) for i in issues] == [(42, 1), (43, 1)]
    assert all(isinstance(i, python_gitlab.v4.objects.ProjectIssue) for i in issues)
    assert [i.web_url for i in issues] == [
        f"{emu.url}/acme/widget-api/-/issues/1",
        f"{emu.url}/acme/other/-/issues/1",
    ]
    assert [m.iid for m in project.mergerequests.list(state="opened")] == [1]
    mr.merge()
    assert mr.state == "merged"
    assert [m.iid for m in project.mergerequests.list(state="merged", get_all=True)] == [1]
    assert emu.issue(42, 1)["state"] == emu.issue(43, 1)["state"] == "closed"


def test_control_route_acts_on_merge_requests(mr_hooked, receiver):
    """POST /_emulator/act opens, edits, closes, reopens and merges merge requests, unrecorded."""
    emu = mr_hooked
    control = emu.url + "/_emulator"

    def act(what: str, args: Any) -> requests.Response:
        return requests.post(
            control + "/act", json={"username": "lpark", "what": what, "args": args}, timeout=5
        )

    opened = act(
        "open_merge_request", {"project_id": 42, "title": "Fix", "description": "Closes #1"}
    )
    assert opened.status_code == 200 and opened.json()["result"]["iid"] == 1
    assert act("edit_merge_request", {"project": 42, "iid": 1, "title": "Fix it"}).ok
    assert act("close_merge_request", [42, 1]).json()["result"]["state"] == "closed"
    assert act("reopen_merge_request", [42, 1]).json()["result"]["state"] == "opened"
    assert act("merge", [42, 1]).json()["result"]["state"] == "merged"
    assert act("merge", [42, 1]).status_code == 400
    assert act("close_merge_request", [42, 9]).status_code == 404
    state = requests.get(control + "/state", timeout=5).json()
    assert [(m["iid"], m["title"], m["state"]) for m in state["merge_requests"]] == [
        (1, "Fix it", "merged")
    ]
    assert emu.issue(42, 1)["state"] == "closed"
    assert emu.wait_hooks_idle(5)
    assert [d.action for d in emu.hook_deliveries] == [
        "open", "update", "close", "reopen", "merge", "close",
    ]  # fmt: skip
    assert emu.calls == []
