"""The GitLab emulator serves the REST subset python-gitlab uses for backfill and reconciling."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import re
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import requests

from tests.gitlab_emulator import COUNT_LIMIT, GitLabEmulator

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
