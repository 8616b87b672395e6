"""The Trello emulator keeps the contract in shared/contracts/trello-api.md."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import subprocess
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests

from tests import emulator_http
from tests.trello_emulator import MAX_TEXT, NOT_FOUND, TrelloEmulator, sign_webhook

ROOT = Path(__file__).resolve().parent.parent
TRELLO_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "trello"
RATE_HEADERS = [
    f"x-rate-limit-api-{scope}-{name}"
    for scope in ("token", "key")
    for name in ("interval-ms", "max", "remaining")
]


class Client:
    """An HTTP client bound to one emulator, authenticating by header or by query."""

    def __init__(self, emu: TrelloEmulator, *, token: str | None = None, header: bool = True):
        self.emu = emu
        self.http = requests.Session()
        token = emu.token if token is None else token
        if header:
            self.http.headers["Authorization"] = (
                f'OAuth oauth_consumer_key="{emu.key}", oauth_token="{token}"'
            )
        else:
            self.http.params = {"key": emu.key, "token": token}

    def __call__(self, method: str, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 5)
        return self.http.request(method, self.emu.url + path, **kwargs)

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def emu():
    with TrelloEmulator() as emulator:
        yield emulator


@pytest.fixture
def api(emu):
    client = Client(emu)
    yield client
    client.close()


@pytest.fixture
def board(emu):
    b = emu.add_board("Board")
    todo = emu.add_list(b["id"], "To Do")
    done = emu.add_list(b["id"], "Done")
    return SimpleNamespace(id=b["id"], short=b["shortLink"], todo=todo["id"], done=done["id"])


def raw(emu: TrelloEmulator, method: str, path: str, **kwargs) -> requests.Response:
    return requests.request(method, emu.url + path, timeout=5, **kwargs)


def test_header_and_query_auth_both_work(emu):
    """The OAuth header (with loose spacing) and key/token query params both authenticate."""
    header = f'OAuth oauth_consumer_key = "{emu.key}",oauth_token="{emu.token}"'
    r1 = raw(emu, "GET", "/members/me", headers={"Authorization": header})
    r2 = raw(emu, "GET", "/members/me", params={"key": emu.key, "token": emu.token})
    assert r1.status_code == r2.status_code == 200
    assert r1.json()["username"] == r2.json()["username"] == "bridge"


def test_credentials_in_a_json_body_authenticate(emu, board):
    """key and token may travel in a JSON body."""
    body = {"key": emu.key, "token": emu.token, "idList": board.todo, "name": "x"}
    r = raw(emu, "POST", "/cards", json=body)
    assert r.status_code == 200
    assert emu.card(r.json()["id"])["name"] == "x"


def test_bad_credentials_give_contract_errors(emu):
    """Bad key -> 401 invalid key, bad token -> 401 invalid token, empty -> JSON missing scopes."""
    r = raw(emu, "GET", "/members/me", params={"key": "f" * 32, "token": emu.token})
    assert (r.status_code, r.text) == (401, "invalid key")
    assert r.headers["Content-Type"].startswith("text/plain")
    r = raw(emu, "GET", "/members/me", params={"key": emu.key, "token": "ATTAnope"})
    assert (r.status_code, r.text) == (401, "invalid token")
    r = raw(emu, "GET", "/members/me", params={"key": emu.key, "token": ""})
    assert r.status_code == 401
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.json() == {"message": "missing scopes"}
    header = f'OAuth oauth_consumer_key="{emu.key}", oauth_token=""'
    r = raw(emu, "GET", "/members/me", headers={"Authorization": header})
    assert (r.status_code, r.json()) == (401, {"message": "missing scopes"})


def test_read_only_token_cannot_write(emu, board):
    """A token without the write scope may read but any write is 401 and changes nothing."""
    emu.add_token("ATTAreadonly", scopes=("read",), username="reader")
    reader = Client(emu, token="ATTAreadonly")
    assert reader("GET", f"/boards/{board.id}/lists").status_code == 200
    r = reader("POST", "/cards", json={"idList": board.todo, "name": "nope"})
    assert (r.status_code, r.text) == (401, "unauthorized permission requested")
    assert emu.cards() == []
    reader.close()


def test_card_lifecycle_with_json(emu, api, board):
    """Create, read, update, archive and delete a card with JSON bodies."""
    label = emu.add_label(board.id, "bug", "red")
    member = emu.add_member(board.id, "alice", "Alice")
    body = {
        "idList": board.todo,
        "name": "Fix it",
        "desc": "See https://gitlab.example/x/-/issues/1",
        "due": "2024-05-01T12:00:00Z",
        "idLabels": [label["id"]],
        "idMembers": [member["id"]],
        "pos": "top",
        "urlSource": "https://gitlab.example/x/-/issues/1",
    }
    created = api("POST", "/cards", json=body).json()
    assert created["idBoard"] == board.id and created["idList"] == board.todo
    assert created["labels"] == [label] and created["idMembers"] == [member["id"]]
    assert created["due"] == "2024-05-01T12:00:00.000Z"
    assert created["shortUrl"] == f"https://trello.com/c/{created['shortLink']}"
    assert len(created["id"]) == 24 and int(created["id"][:8], 16) <= time.time()
    cid = created["id"]
    updated = api("PUT", f"/cards/{cid}", json={"name": "Fixed", "idLabels": [], "due": None})
    assert updated.status_code == 200
    assert (updated.json()["name"], updated.json()["idLabels"], updated.json()["due"]) == (
        "Fixed",
        [],
        None,
    )
    assert updated.json()["desc"] == body["desc"]  # fields not sent stay as they are
    assert api("PUT", f"/cards/{cid}", json={"closed": True}).json()["closed"] is True
    assert emu.card(cid)["closed"] is True
    assert api("DELETE", f"/cards/{cid}").status_code == 200
    r = api("GET", f"/cards/{cid}")
    assert (r.status_code, r.text) == (404, NOT_FOUND)


def test_card_create_and_update_with_query_params(emu, board):
    """Parameters in the query string work, including comma lists and "true"/"false"."""
    api = Client(emu, header=False)
    a, b = emu.add_label(board.id, "a", "blue"), emu.add_label(board.id, "b", None)
    r = api("POST", "/cards", params={"idList": board.todo, "name": "Q", "idLabels": "x"})
    assert (r.status_code, r.text) == (400, "invalid value for idLabels")
    r = api("POST", "/cards", params={"idList": board.todo, "name": "Q", "idLabels": a["id"]})
    cid = r.json()["id"]
    api("PUT", f"/cards/{cid}", params={"idLabels": f"{a['id']},{b['id']}", "closed": "true"})
    card = emu.card(cid)
    assert card["idLabels"] == [a["id"], b["id"]] and card["closed"] is True
    api("PUT", f"/cards/{cid}", params={"closed": "false", "idList": board.done})
    assert (emu.card(cid)["closed"], emu.card(cid)["idList"]) == (False, board.done)
    api.close()


def test_form_encoded_body_is_accepted(emu, api, board):
    """A form-encoded body carries parameters too."""
    r = api("POST", "/cards", data={"idList": board.todo, "name": "form", "desc": "d"})
    assert r.status_code == 200 and emu.card(r.json()["id"])["desc"] == "d"


def test_default_get_omits_shortlink_and_fields_all_includes_it(emu, api, board):
    """GET /cards/{id} leaves out shortLink unless fields=all; shortLink works as an id."""
    card = emu.add_card(board.todo, "c")
    default = api("GET", f"/cards/{card['id']}").json()
    assert "shortLink" not in default and default["shortUrl"].endswith(card["shortLink"])
    full = api("GET", f"/cards/{card['shortLink']}", params={"fields": "all"}).json()
    assert full["shortLink"] == card["shortLink"] and full["id"] == card["id"]
    some = api("GET", f"/cards/{card['id']}", params={"fields": "name,desc"}).json()
    assert some == {"id": card["id"], "name": "c", "desc": ""}
    assert api("GET", f"/boards/{board.short}").json()["id"] == board.id


def test_invalid_id_is_400_and_unknown_id_is_404(api, board):
    """A malformed id is 400 invalid id; a well-formed unknown one is 404."""
    for path in ("/cards/nope", "/cards/ABCDEF0123456789ABCDEF01", "/lists/zz", "/boards/1234"):
        r = api("GET", path)
        assert (r.status_code, r.text) == (400, "invalid id"), path
    for path in ("/cards/", "/lists/", "/boards/"):
        r = api("GET", path + "0" * 24)
        assert (r.status_code, r.text) == (404, NOT_FOUND), path
    assert api("GET", "/nothing/here").status_code == 404
    assert api("PATCH", f"/boards/{board.id}").status_code == 404  # wrong method


def test_post_card_list_errors(api):
    """POST /cards: missing or malformed idList is 400, an unknown list is 404 with its text."""
    r = api("POST", "/cards", json={"name": "x"})
    assert (r.status_code, r.text) == (400, "invalid value for idList")
    r = api("POST", "/cards", json={"idList": "bad", "name": "x"})
    assert (r.status_code, r.text) == (400, "invalid value for idList")
    r = api("POST", "/cards", json={"idList": "a" * 24, "name": "x"})
    assert (r.status_code, r.text) == (404, "could not find the board that the card belongs to")


def test_text_limit_is_16384(emu, api, board):
    """name, desc and comment text may be 16384 characters, not one more."""
    ok = api("POST", "/cards", json={"idList": board.todo, "name": "n" * MAX_TEXT})
    assert ok.status_code == 200
    cid = ok.json()["id"]
    for name in ("name", "desc"):
        r = api("PUT", f"/cards/{cid}", json={name: "x" * (MAX_TEXT + 1)})
        assert (r.status_code, r.text) == (400, f"invalid value for {name}")
    assert emu.card(cid)["name"] == "n" * MAX_TEXT
    comments = f"/cards/{cid}/actions/comments"
    assert api("POST", comments, json={"text": "t" * MAX_TEXT}).status_code == 200
    for text in ("", "t" * (MAX_TEXT + 1)):
        r = api("POST", comments, json={"text": text})
        assert (r.status_code, r.text) == (400, "invalid value for text")
    assert len(emu.comments(cid)) == 1


def test_comments_are_actions(emu, api, board):
    """A comment returns a commentCard action and is listed by GET /cards/{id}/actions."""
    cid = emu.add_card(board.todo, "c")["id"]
    action = api("POST", f"/cards/{cid}/actions/comments", params={"text": "hello"}).json()
    assert action["type"] == "commentCard" and action["data"]["text"] == "hello"
    assert action["data"]["card"]["id"] == cid
    api("POST", f"/cards/{cid}/actions/comments", params={"text": "again"})
    listed = api("GET", f"/cards/{cid}/actions", params={"filter": "commentCard"}).json()
    assert [a["data"]["text"] for a in listed] == ["again", "hello"]  # newest first
    assert [c["text"] for c in emu.comments(cid)] == ["hello", "again"]


def test_label_and_member_sets(emu, api, board):
    """Adding a label or member twice is 400; removing works; a bad label color is 400."""
    cid = emu.add_card(board.todo, "c")["id"]
    label = api("POST", f"/boards/{board.id}/labels", json={"name": "bug", "color": "red"}).json()
    r = api("POST", f"/boards/{board.id}/labels", json={"name": "x", "color": "mauve"})
    assert (r.status_code, r.text) == (400, "invalid value for color")
    assert api("POST", f"/cards/{cid}/idLabels", json={"value": label["id"]}).status_code == 200
    r = api("POST", f"/cards/{cid}/idLabels", json={"value": label["id"]})
    assert (r.status_code, r.text) == (400, "that label is already on the card")
    assert api("DELETE", f"/cards/{cid}/idLabels/{label['id']}").status_code == 200
    assert emu.card(cid)["idLabels"] == []
    alice = emu.add_member(board.id, "alice", "Alice")
    assert api("POST", f"/cards/{cid}/idMembers", json={"value": alice["id"]}).status_code == 200
    r = api("POST", f"/cards/{cid}/idMembers", json={"value": alice["id"]})
    assert (r.status_code, r.text) == (400, "member is already on the card")
    assert api("DELETE", f"/cards/{cid}/idMembers/{alice['id']}").json() == []
    members = api("GET", f"/boards/{board.id}/members").json()
    assert {m["username"] for m in members} == {"bridge", "alice"}


def test_board_labels_limit(emu, api, board):
    """GET /boards/{id}/labels returns 50 by default and accepts limit up to 1000."""
    for i in range(55):
        emu.add_label(board.id, f"l{i}", None)
    assert len(api("GET", f"/boards/{board.id}/labels").json()) == 50
    assert len(api("GET", f"/boards/{board.id}/labels", params={"limit": 1000}).json()) == 55
    assert api("GET", f"/boards/{board.id}/labels", params={"limit": 1001}).status_code == 400


def test_list_and_board_cards_are_open_only(emu, api, board):
    """GET /lists/{id}/cards and /boards/{id}/cards return open cards with desc, in pos order."""
    first = emu.add_card(board.todo, "first", "desc 1")
    emu.add_card(board.todo, "archived", closed=True)
    top = emu.add_card(board.todo, "top", pos="top")
    emu.add_card(board.done, "done")
    listed = api("GET", f"/lists/{board.todo}/cards").json()
    assert [c["name"] for c in listed] == ["top", "first"]
    assert listed[1]["desc"] == "desc 1" and listed[0]["id"] == top["id"]
    on_board = api("GET", f"/boards/{board.id}/cards", params={"fields": "name"}).json()
    assert sorted(c["name"] for c in on_board) == ["done", "first", "top"]
    assert set(on_board[0]) == {"id", "name"}
    assert len(emu.cards(board_id=board.id)) == 4
    assert len(emu.cards(list_id=board.todo, include_closed=False)) == 2
    assert first in emu.cards(list_id=board.todo)


def test_move_to_a_list_on_another_board(emu, api, board):
    """PUT idList of a list on another board moves the card to that board."""
    other = emu.add_board("Other")
    other_list = emu.add_list(other["id"], "Inbox")
    cid = emu.add_card(board.todo, "c")["id"]
    moved = api("PUT", f"/cards/{cid}", json={"idList": other_list["id"]}).json()
    assert (moved["idBoard"], moved["idList"]) == (other["id"], other_list["id"])
    emu.move_card(cid, board.done)
    assert emu.card(cid)["idList"] == board.done
    assert emu.count_calls("PUT") == 1  # the hand move is not an API call


def test_members_me_and_boards(emu, api, board):
    """/members/me and /members/me/boards describe the token's member and its boards."""
    me = api("GET", "/members/me").json()
    assert me["idBoards"] == [board.id]
    boards = api("GET", "/members/me/boards").json()
    assert [b["id"] for b in boards] == [board.id]
    assert boards[0]["url"].startswith(f"https://trello.com/b/{board.short}/")
    lists = api("GET", f"/boards/{board.id}/lists").json()
    assert [(x["name"], x["idBoard"]) for x in lists] == [("To Do", board.id), ("Done", board.id)]
    assert api("GET", f"/lists/{board.done}").json()["name"] == "Done"


def test_rate_limit_429_json_and_headers(emu, api, board):
    """Over the per-token limit: 429 JSON, no effect on state; every response has the headers."""
    emu.set_rate_limit(5, 1.0)
    remaining = []
    for _ in range(5):
        r = api("GET", f"/boards/{board.id}")
        assert r.status_code == 200
        remaining.append(int(r.headers["x-rate-limit-api-token-remaining"]))
    assert remaining == [4, 3, 2, 1, 0]
    r = api("POST", "/cards", json={"idList": board.todo, "name": "x"})
    assert r.status_code == 429
    assert r.json() == {"error": "API_TOKEN_LIMIT_EXCEEDED", "message": "Rate limit exceeded"}
    assert all(h in r.headers for h in RATE_HEADERS)
    assert r.headers["x-rate-limit-api-token-max"] == "5"
    assert r.headers["x-rate-limit-api-token-interval-ms"] == "1000"
    assert emu.cards() == []
    assert emu.count_calls(status=429) == 1
    time.sleep(1.05)
    r = api("GET", "/cards/" + "0" * 24)
    assert r.status_code == 404 and all(h in r.headers for h in RATE_HEADERS)


def test_key_rate_limit():
    """The per-key limit spans tokens and answers API_KEY_LIMIT_EXCEEDED."""
    with TrelloEmulator(key_rate_limit=3, rate_limit=10) as small:
        small.add_token("ATTAsecond", username="second")
        first, second = Client(small), Client(small, token="ATTAsecond")
        assert [first("GET", "/members/me").status_code for _ in range(2)] == [200, 200]
        assert second("GET", "/members/me").status_code == 200
        r = second("GET", "/members/me")
        assert r.status_code == 429 and r.json()["error"] == "API_KEY_LIMIT_EXCEEDED"
        first.close()
        second.close()


def test_fault_status_has_no_effect(emu, api, board):
    """A status fault answers Trello's body for that status and does not touch state."""
    emu.fault("status", count=1, status=503, method="POST", path_prefix="/cards")
    assert api("GET", f"/boards/{board.id}").status_code == 200  # filtered out
    r = api("POST", "/cards", json={"idList": board.todo, "name": "x"})
    assert (r.status_code, r.text) == (503, "Service Unavailable")
    assert emu.cards() == []
    emu.fault("status", count=1, status=429)
    r = api("POST", "/cards", json={"idList": board.todo, "name": "x"})
    assert r.status_code == 429 and r.json()["error"] == "API_TOKEN_LIMIT_EXCEEDED"
    assert api("POST", "/cards", json={"idList": board.todo, "name": "x"}).status_code == 200
    assert len(emu.cards()) == 1


def test_fault_for_seconds(emu, api, board):
    """A fault given seconds hits every matching request until it expires."""
    emu.fault("status", seconds=0.3, status=502)
    assert [api("GET", f"/boards/{board.id}").status_code for _ in range(3)] == [502] * 3
    time.sleep(0.35)
    assert api("GET", f"/boards/{board.id}").status_code == 200
    emu.fault("status", count=5, status=500)
    emu.clear_faults()
    assert api("GET", f"/boards/{board.id}").status_code == 200


def test_fault_slow_still_applies_the_write(emu, api, board):
    """A slow answer times the client out, yet the write still happens."""
    emu.fault("slow", delay=0.5)
    with pytest.raises(requests.Timeout):
        api("POST", "/cards", json={"idList": board.todo, "name": "late"}, timeout=(2, 0.15))
    deadline = time.monotonic() + 3
    while not emu.cards() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [c["name"] for c in emu.cards()] == ["late"]


def test_fault_reset_changes_nothing(emu, api, board):
    """A reset fault drops the connection before acting: ConnectionError and no card."""
    emu.fault("reset")
    with pytest.raises(requests.ConnectionError):
        api("POST", "/cards", json={"idList": board.todo, "name": "x"})
    assert emu.cards() == []
    assert emu.count_calls("POST", "/cards", status=0) == 1
    assert api("GET", f"/boards/{board.id}").status_code == 200  # next request is fine


def test_fault_apply_then_reset_applies(emu, api, board):
    """apply_then_reset does the write, then drops the connection unanswered."""
    emu.fault("apply_then_reset", path_prefix="/1/cards")
    with pytest.raises(requests.ConnectionError):
        api("POST", "/cards", json={"idList": board.todo, "name": "ghost"})
    assert [c["name"] for c in emu.cards()] == ["ghost"]


def test_fault_malformed_body(emu, api, board):
    """A malformed fault answers 200 application/json that does not parse, and acts not."""
    emu.fault("malformed")
    r = api("POST", "/cards", json={"idList": board.todo, "name": "x"})
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    with pytest.raises(ValueError):
        r.json()
    assert emu.cards() == []


def test_latency_overlaps_across_concurrent_requests(emu, board):
    """With latency L, four concurrent calls take about L in total, not 4L."""
    emu.set_latency(0.3)
    clients = [Client(emu) for _ in range(4)]
    start = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(lambda c: c("GET", f"/boards/{board.id}").status_code, clients))
    elapsed = time.monotonic() - start
    assert codes == [200] * 4
    assert 0.3 <= elapsed < 0.9
    for client in clients:
        client.close()


def test_keep_alive_is_reused_and_stop_closes_it():
    """One HTTP/1.1 connection serves many requests; stop() closes it."""
    emu = TrelloEmulator().start()
    b = emu.add_board()
    auth = {"Authorization": f'OAuth oauth_consumer_key="{emu.key}", oauth_token="{emu.token}"'}
    conn = http.client.HTTPConnection("127.0.0.1", emu.port, timeout=5)
    sockets = []
    for _ in range(3):
        conn.request("GET", f"/1/boards/{b['id']}", headers=auth)
        response = conn.getresponse()
        assert response.status == 200 and json.loads(response.read())["id"] == b["id"]
        sockets.append(conn.sock)
    assert sockets[0] is not None and sockets == [sockets[0]] * 3
    emu.stop()
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        conn.request("GET", f"/1/boards/{b['id']}", headers=auth)
        conn.getresponse()
    conn.close()


def test_calls_are_recorded_and_counted(emu, api, board):
    """API requests are recorded with method, path, status; seeding and control are not."""
    emu.add_card(board.todo, "by hand")
    api("GET", f"/boards/{board.id}/cards", params={"fields": "name"})
    api("POST", "/cards", json={"idList": "bad"})
    requests.get(emu.url.removesuffix("/1") + "/_emulator/calls", timeout=5)
    assert [(c.method, c.path, c.status) for c in emu.calls] == [
        ("GET", f"/1/boards/{board.id}/cards", 200),
        ("POST", "/1/cards", 400),
    ]
    assert emu.count_calls("POST", "/cards") == emu.count_calls(path_prefix="/1/cards") == 1
    assert emu.count_calls(status=200) == 1
    emu.reset_calls()
    assert emu.calls == []


def test_control_endpoints(emu, api, board):
    """The /_emulator endpoints expose state and calls and drive config and faults."""
    base = emu.url.removesuffix("/1") + "/_emulator"
    api("POST", "/cards", json={"idList": board.todo, "name": "x"})
    state = requests.get(base + "/state", timeout=5).json()
    assert [c["name"] for c in state["cards"]] == ["x"]
    assert {x["name"] for x in state["lists"]} == {"To Do", "Done"}
    calls = requests.get(base + "/calls", timeout=5).json()
    assert calls[0]["method"] == "POST" and calls[0]["status"] == 200 and "t" in calls[0]
    assert requests.post(base + "/reset_calls", timeout=5).status_code == 200
    assert emu.calls == []
    requests.post(base + "/config", json={"rate_limit": 2, "rate_interval": 5}, timeout=5)
    assert api("GET", "/members/me").status_code == 200  # the POST above was the first
    assert api("GET", "/members/me").status_code == 429
    requests.post(base + "/config", json={"rate_limit": 100, "latency": 0}, timeout=5)
    body = {"kind": "status", "status": 500, "count": 1}
    assert requests.post(base + "/fault", json=body, timeout=5).status_code == 200
    requests.post(base + "/clear_faults", timeout=5)
    assert api("GET", "/members/me").status_code == 200
    assert requests.post(base + "/fault", json={"kind": "bogus"}, timeout=5).status_code == 400


def test_entry_point_prints_its_json_line():
    """python -m tests.trello_emulator serves a seeded board and prints url/key/token/ids."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.trello_emulator", "--port", "0", "--rate-limit", "50"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        info = json.loads(proc.stdout.readline())
        assert set(info) == {"url", "key", "token", "board_id", "list_id", "done_list_id", "secret"}
        auth = {"key": info["key"], "token": info["token"]}
        r = requests.get(f"{info['url']}/boards/{info['board_id']}/lists", params=auth, timeout=5)
        assert [(x["id"], x["name"]) for x in r.json()] == [
            (info["list_id"], "To Do"),
            (info["done_list_id"], "Done"),
        ]
        assert r.headers["x-rate-limit-api-token-max"] == "50"
    finally:
        proc.terminate()
        assert proc.wait(timeout=5) == 0
        proc.stdout.close()


# ------------------------------------------------------------------------- webhooks and actions


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    t: float

    def json(self) -> Any:
        return json.loads(self.body)


class _ReceiverHandler(emulator_http.EmulatorHandler):
    do_HEAD = emulator_http.EmulatorHandler.dispatch


class Receiver(emulator_http.LoopbackEmulator):
    """A webhook callback on loopback: records what arrives, answers ``head_status`` to HEAD
    and the next of ``statuses`` (then ``status``) to POST, after ``delay`` seconds."""

    _handler_class = _ReceiverHandler
    _thread_name = "webhook-receiver"

    def __init__(self, *statuses: int, head_status: int = 200, status: int = 200) -> None:
        self._host, self._port, self._lock = "127.0.0.1", 0, threading.RLock()
        self.head_status, self.status, self.statuses = head_status, status, deque(statuses)
        self.delay = 0.0
        self.received: list[Received] = []
        self.in_flight = self.most_in_flight = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/trello/hook"

    def _handle(self, method: str, target: str, headers: Any, body: bytes) -> emulator_http.Reply:
        with self._lock:
            lowered = {k.lower(): v for k, v in headers.items()}
            self.received.append(Received(method, target, lowered, body, time.monotonic()))
            if method == "HEAD":
                return emulator_http.Reply(self.head_status)
            status = self.statuses.popleft() if self.statuses else self.status
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        time.sleep(self.delay)
        with self._lock:
            self.in_flight -= 1
        return emulator_http.Reply(status)

    def posts(self) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.method == "POST"]


@pytest.fixture
def receiver():
    with Receiver() as r:
        yield r


@pytest.fixture
def hooked(emu, api, board, receiver):
    """A board-level webhook to ``receiver``, short retry delays, and alice on the board."""
    emu.webhook_retry_delays = (0.1, 0.2, 0.3)
    emu.add_member(board.id, "alice", "Alice Moreau")
    r = api("POST", "/webhooks", json={"callbackURL": receiver.url, "idModel": board.id})
    assert r.status_code == 200, r.text
    return SimpleNamespace(**vars(board), webhook=r.json())


def expected_signature(secret: str, body: bytes, callback_url: str) -> str:
    digest = hmac.new(secret.encode(), body + callback_url.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def delivered(emu: TrelloEmulator, receiver: Receiver) -> list[dict]:
    assert emu.wait_webhooks_idle(10)
    return [r.json() for r in receiver.posts()]


def test_webhook_create_checks_the_callback_with_head(emu, api, board, receiver):
    """POST /webhooks sends HEAD first: 404 (or nothing listening) -> 400, a 200 -> created."""
    receiver.head_status = 404
    body = {"callbackURL": receiver.url, "idModel": board.id, "description": "bridge"}
    r = api("POST", "/webhooks", json=body)
    expected = f"URL ({receiver.url}) did not return 200 status code, got 404"
    assert (r.status_code, r.text) == (400, expected)
    assert [x.method for x in receiver.received] == ["HEAD"]
    assert receiver.received[0].path == "/trello/hook"
    closed = Receiver()
    dead_url = closed.start().url
    closed.stop()
    r = api("POST", "/webhooks", json={**body, "callbackURL": dead_url})
    assert r.status_code == 400
    assert r.text == f"URL ({dead_url}) did not return 200 status code, got connection refused"
    assert api("POST", "/webhooks", json={**body, "idModel": "0" * 24}).status_code == 400
    assert api("POST", "/webhooks", json={**body, "callbackURL": "nope"}).status_code == 400
    assert emu.webhooks() == []
    receiver.head_status = 200
    r = api("POST", "/webhooks", json=body)
    assert r.status_code == 200
    hook = r.json()
    assert set(hook) == {
        "id", "description", "idModel", "callbackURL", "active", "consecutiveFailures",
        "firstConsecutiveFailDate",
    }  # fmt: skip
    assert (hook["idModel"], hook["callbackURL"], hook["description"]) == (
        board.id,
        receiver.url,
        "bridge",
    )
    assert (hook["active"], hook["consecutiveFailures"], hook["firstConsecutiveFailDate"]) == (
        True,
        0,
        None,
    )
    assert emu.webhooks() == [hook]


def test_duplicate_webhook_is_refused(emu, api, board, receiver):
    """The same token, model and callback twice: 400; another token may register the same."""
    body = {"callbackURL": receiver.url, "idModel": board.id}
    assert api("POST", "/webhooks", json=body).status_code == 200
    r = api("POST", "/webhooks", json=body)
    assert (r.status_code, r.text) == (
        400,
        "A webhook with that callback, model, and token already exists",
    )
    emu.add_token("ATTAother", username="other")
    other = Client(emu, token="ATTAother")
    assert other("POST", "/webhooks", json=body).status_code == 200
    assert api("POST", "/webhooks", json={**body, "callbackURL": receiver.url + "?b=1"}).ok
    other.close()
    assert len(emu.webhooks()) == 3 and len(emu.webhooks(emu.token)) == 2


def test_webhooks_list_get_update_delete(emu, api, board, receiver):
    """GET /tokens/{token}/webhooks lists the token's own; GET/PUT/DELETE /webhooks/{id} work."""
    hook = api("POST", "/webhooks", json={"callbackURL": receiver.url, "idModel": board.id}).json()
    emu.add_token("ATTAother", username="other")
    other = Client(emu, token="ATTAother")
    assert api("GET", f"/tokens/{emu.token}/webhooks").json() == [hook]
    assert other("GET", "/tokens/ATTAother/webhooks").json() == []
    assert other("GET", f"/webhooks/{hook['id']}").status_code == 404  # not its webhook
    assert api("GET", f"/webhooks/{hook['id']}").json() == hook
    changed = api("PUT", f"/webhooks/{hook['id']}", json={"description": "x", "active": False})
    assert (changed.json()["description"], changed.json()["active"]) == ("x", False)
    heads = len(receiver.received)
    moved = api("PUT", f"/webhooks/{hook['id']}", json={"callbackURL": receiver.url + "/2"})
    assert moved.json()["callbackURL"] == receiver.url + "/2"
    assert len(receiver.received) == heads + 1  # a new callback is checked with HEAD
    assert api("DELETE", f"/webhooks/{hook['id']}").status_code == 200
    assert api("GET", f"/webhooks/{hook['id']}").status_code == 404
    assert api("GET", f"/tokens/{emu.token}/webhooks").json() == []
    assert api("GET", "/webhooks/nope").status_code == 400
    other.close()


def test_person_move_is_one_signed_delivery(emu, hooked, receiver):
    """A person's move is one delivery, signed, an updateCard by that person across lists."""
    card = emu.add_card(hooked.todo, "Login times out")  # seeding: no action
    emu.as_person("alice").move_card(card["id"], hooked.done)
    assert emu.wait_webhooks_idle(10)
    (post,) = receiver.posts()
    assert post.headers["content-type"].startswith("application/json")
    assert post.headers["x-trello-webhook"] == expected_signature(
        emu.secret, post.body, receiver.url
    )
    assert len(emu.secret) == 64 and int(emu.secret, 16) >= 0
    payload = post.json()
    assert set(payload) == {"action", "model", "webhook"}
    action = payload["action"]
    assert action["type"] == "updateCard"
    assert action["data"]["listBefore"] == {"id": hooked.todo, "name": "To Do"}
    assert action["data"]["listAfter"] == {"id": hooked.done, "name": "Done"}
    assert action["data"]["old"] == {"idList": hooked.todo}
    assert action["data"]["card"]["idList"] == hooked.done
    assert action["data"]["card"]["shortLink"] == card["shortLink"]
    assert action["data"]["board"]["id"] == hooked.id
    alice = emu.as_person("alice")
    assert action["idMemberCreator"] == alice.id
    assert action["memberCreator"] == {
        "id": alice.id,
        "username": "alice",
        "fullName": "Alice Moreau",
        "initials": "AM",
    }
    assert int(action["id"][:8], 16) <= time.time() and len(action["id"]) == 24
    assert payload["model"]["id"] == hooked.id and payload["model"]["url"].startswith("https://")
    assert payload["webhook"] == hooked.webhook
    assert emu.webhook_deliveries == [(action["id"], "updateCard", 200, 1)]


def test_api_changes_are_delivered_as_the_token_member(emu, api, hooked, receiver):
    """REST changes are the token member's actions, one per changed field, delivered in order."""
    me = api("GET", "/members/me").json()
    cid = api("POST", "/cards", json={"idList": hooked.todo, "name": "a"}).json()["id"]
    api("PUT", f"/cards/{cid}", json={"idList": hooked.done, "name": "b", "desc": "same"})
    api("POST", f"/cards/{cid}/actions/comments", json={"text": "hi"})
    api("PUT", f"/cards/{cid}", json={"closed": True})
    actions = [p["action"] for p in delivered(emu, receiver)]
    assert {a["idMemberCreator"] for a in actions} == {me["id"]}
    assert {a["memberCreator"]["username"] for a in actions} == {"bridge"}
    assert [(a["type"], sorted(a["data"].get("old", {}))) for a in actions] == [
        ("createCard", []),
        ("updateCard", ["idList"]),
        ("updateCard", ["name"]),
        ("updateCard", ["desc"]),
        ("commentCard", []),
        ("updateCard", ["closed"]),
    ]
    assert actions[2]["data"]["card"]["name"] == "b" and actions[2]["data"]["old"]["name"] == "a"
    assert actions[5]["data"]["card"]["closed"] is True
    assert actions[5]["data"]["old"] == {"closed": False}
    assert [a["id"] for a in actions] == sorted(a["id"] for a in actions)
    assert receiver.most_in_flight == 1


def test_failed_delivery_is_retried_then_dropped(emu, hooked, receiver):
    """A non-2xx answer is retried after each retry delay, then dropped and counted."""
    receiver.status = 500
    alice = emu.as_person("alice")
    card = alice.create_card(hooked.todo, "c")
    assert emu.wait_webhooks_idle(10)
    posts = receiver.posts()
    assert len(posts) == 4 and len({p.body for p in posts}) == 1  # same body every attempt
    gaps = [b.t - a.t for a, b in zip(posts, posts[1:], strict=False)]
    assert all(gap >= delay - 0.02 for gap, delay in zip(gaps, (0.1, 0.2, 0.3), strict=True))
    assert [(d.status, d.attempt) for d in emu.webhook_deliveries] == [
        (500, 1),
        (500, 2),
        (500, 3),
        (500, 4),
    ]
    hook = emu.webhook(hooked.webhook["id"])
    assert hook["consecutiveFailures"] == 1 and hook["firstConsecutiveFailDate"].endswith("Z")
    receiver.status = 200
    alice.rename(card["id"], "d")
    assert emu.wait_webhooks_idle(10)
    assert receiver.posts()[-1].json()["action"]["type"] == "updateCard"
    assert emu.webhook(hooked.webhook["id"])["consecutiveFailures"] == 0


def test_unreachable_callback_is_retried_with_status_0(emu, hooked, receiver):
    """A connection error counts as a failed attempt (status 0) and is retried like one."""
    receiver.stop()
    emu.as_person("alice").create_card(hooked.todo, "c")
    assert emu.wait_webhooks_idle(10)
    assert [(d.type, d.status, d.attempt) for d in emu.webhook_deliveries] == [
        ("createCard", 0, n) for n in (1, 2, 3, 4)
    ]


def test_410_deletes_the_webhook(emu, hooked, receiver):
    """A callback answering 410 Gone deletes its webhook: nothing more is sent."""
    receiver.status = 410
    alice = emu.as_person("alice")
    card = alice.create_card(hooked.todo, "c")
    assert emu.wait_webhooks_idle(10)
    assert emu.webhooks() == []
    alice.rename(card["id"], "again")
    assert emu.wait_webhooks_idle(10)
    assert len(receiver.posts()) == 1
    assert [d.status for d in emu.webhook_deliveries] == [410]


def test_board_actions_filter_since_before_and_limit(emu, api, hooked):
    """Board actions come newest first, filtered by type, bounded by since/before, limited."""
    alice = emu.as_person("alice")
    card = alice.create_card(hooked.todo, "c")
    alice.move_card(card["id"], hooked.done)
    alice.comment(card["id"], "one")
    alice.rename(card["id"], "c2")
    alice.comment(card["id"], "two")
    path = f"/boards/{hooked.id}/actions"
    every = api("GET", path).json()
    assert [a["type"] for a in every] == [
        "commentCard", "updateCard", "commentCard", "updateCard", "createCard",
    ]  # fmt: skip
    assert every == emu.actions(board_id=hooked.id)[::-1]
    comments = api("GET", path, params={"filter": "commentCard"}).json()
    assert [a["data"]["text"] for a in comments] == ["two", "one"]
    moves = api("GET", path, params={"filter": "updateCard:idList,createCard"}).json()
    assert [a["type"] for a in moves] == ["updateCard", "createCard"]
    after = api("GET", path, params={"since": every[3]["id"]}).json()
    assert [a["id"] for a in after] == [a["id"] for a in every[:3]]
    page = api("GET", path, params={"before": every[1]["id"], "limit": 2}).json()
    assert [a["id"] for a in page] == [every[2]["id"], every[3]["id"]]
    assert api("GET", path, params={"since": "2000-01-01T00:00:00Z"}).json() == every
    assert api("GET", path, params={"since": every[0]["date"]}).json() == []
    assert api("GET", path, params={"before": "2000-01-01T00:00:00.000Z"}).json() == []
    for bad in ({"limit": 1001}, {"since": "yesterday"}, {"filter": "no such!"}):
        assert api("GET", path, params=bad).status_code == 400
    one = api("GET", f"/actions/{every[0]['id']}").json()
    assert one == every[0]
    card_actions = api("GET", f"/cards/{card['id']}/actions", params={"filter": "all"}).json()
    assert card_actions == every


def test_board_actions_page_through_1000(emu, api, board):
    """More than a page: limit=1000 then before=<last id> reaches the rest, none twice."""
    emu.add_member(board.id, "alice", "Alice")
    person = emu.as_person("alice")
    card = person.create_card(board.todo, "c")
    for i in range(1004):
        person.rename(card["id"], f"n{i}")
    path = f"/boards/{board.id}/actions"
    first = api("GET", path, params={"limit": 1000}).json()
    rest = api("GET", path, params={"limit": 1000, "before": first[-1]["id"]}).json()
    assert len(first) == 1000 and len(rest) == 5
    ids = [a["id"] for a in first + rest]
    assert len(set(ids)) == 1005 and ids == sorted(ids, reverse=True)
    assert len(api("GET", path).json()) == 50


def test_stored_fixtures_signatures_match():
    """The HMAC the emulator signs with is the one of signatures.json for the stored fixtures."""
    vectors = json.loads((TRELLO_FIXTURES / "signatures.json").read_text())
    assert len(vectors["vectors"]) == 10
    for vector in vectors["vectors"]:
        body = (TRELLO_FIXTURES / vector["file"]).read_bytes()
        signature = sign_webhook(vectors["secret"], body, vectors["callback_url"])
        assert signature == vector["x_trello_webhook"], vector["file"]
        assert expected_signature(vectors["secret"], body, vectors["callback_url"]) == signature


def test_emulated_actions_have_the_fixtures_shape(emu, hooked, receiver):
    """Each person action has the keys of the stored fixture of the same kind."""
    alice = emu.as_person("alice")
    emu.add_member(hooked.id, "bob", "Bob Lindqvist")
    card = alice.create_card(hooked.todo, "c")
    alice.move_card(card["id"], hooked.done)
    alice.archive(card["id"])
    alice.comment(card["id"], "hi")
    alice.add_member(card["id"], "bob")
    alice.remove_member(card["id"], "bob")
    alice.set_due(card["id"], "2026-12-15T12:00:00Z")
    alice.rename(card["id"], "c2")
    names = ["08-card-created-by-person", "02-card-moved-to-done", "03-card-archived",
             "04-comment", "05-member-added", "06-member-removed", "07-due-set",
             "10-card-renamed"]  # fmt: skip
    got = delivered(emu, receiver)
    assert len(got) == len(names)
    for payload, name in zip(got, names, strict=True):
        fixture = json.loads((TRELLO_FIXTURES / f"{name}.json").read_text())
        assert set(fixture) == set(payload)
        action, want = payload["action"], fixture["action"]
        assert set(want) <= set(action), name
        assert action["type"] == want["type"], name
        assert set(want["data"]) <= set(action["data"]), name
        assert set(want["data"]["card"]) <= set(action["data"]["card"]), name
        assert set(want["memberCreator"]) == set(action["memberCreator"]), name
        assert set(fixture["model"]) == set(payload["model"]), name
        assert set(fixture["webhook"]) == set(payload["webhook"]), name
    assert got[4]["action"]["member"]["username"] == "bob"
    assert got[4]["action"]["data"]["member"] == {
        "id": got[4]["action"]["member"]["id"],
        "name": "Bob Lindqvist",
    }
    assert got[6]["action"]["data"]["card"]["due"] == "2026-12-15T12:00:00.000Z"
    assert got[6]["action"]["data"]["old"] == {"due": None}


def test_non_ascii_comment_round_trips_and_signs_utf8(emu, api, hooked, receiver):
    """Non-ASCII text arrives as UTF-8, signed over those bytes (or low 8 bits in binary mode)."""
    text = "Fix in progress – Grüße! ✓ 😀"
    card = emu.as_person("alice").create_card(hooked.todo, "c")
    r = api("POST", f"/cards/{card['id']}/actions/comments", json={"text": text})
    assert r.json()["data"]["text"] == text
    emu.webhook_signing = "binary"
    emu.as_person("alice").comment(card["id"], text)
    assert emu.wait_webhooks_idle(10)
    _created, utf8, binary = receiver.posts()
    assert text.encode() in utf8.body  # raw UTF-8, not \u escapes
    assert utf8.json()["action"]["data"]["text"] == text
    assert utf8.headers["x-trello-webhook"] == expected_signature(
        emu.secret, utf8.body, receiver.url
    )
    assert binary.headers["x-trello-webhook"] != expected_signature(
        emu.secret, binary.body, receiver.url
    )
    low = bytes(ord(c) & 0xFF for c in binary.body.decode() + receiver.url)
    digest = hmac.new(emu.secret.encode(), low, hashlib.sha1).digest()
    assert binary.headers["x-trello-webhook"] == base64.b64encode(digest).decode()
    assert [c["text"] for c in emu.comments(card["id"])] == [text, text]


def test_person_actions_change_state_like_the_api(emu, api, hooked):
    """Each as_person change is the REST change plus its action by that person."""
    label = emu.add_label(hooked.id, "bug", "red")
    emu.add_member(hooked.id, "bob", "Bob")
    alice = emu.as_person("alice")
    card = alice.create_card(hooked.todo, "c", "desc")
    cid = card["id"]
    assert alice.archive(cid)["closed"] is True
    assert alice.unarchive(cid)["closed"] is False
    assert alice.rename(cid, "renamed")["name"] == "renamed"
    assert alice.set_due(cid, "2026-12-15T12:00:00Z")["due"] == "2026-12-15T12:00:00.000Z"
    assert alice.set_due(cid, None)["due"] is None
    assert alice.add_member(cid, "bob")["idMembers"] == [emu.as_person("bob").id]
    assert alice.remove_member(cid, "bob")["idMembers"] == []
    assert alice.add_label(cid, label["id"])["idLabels"] == [label["id"]]
    assert alice.remove_label(cid, label["id"])["idLabels"] == []
    assert alice.comment(cid, "note")["type"] == "commentCard"
    attachment = alice.add_attachment(cid, "https://gitlab.example/x/-/issues/1", "issue")
    assert api("GET", f"/cards/{cid}/attachments").json() == [attachment]
    assert alice.move_card(cid, hooked.done)["idList"] == hooked.done
    actions = emu.actions(card_id=cid)
    assert [a["type"] for a in actions] == [
        "createCard", "updateCard", "updateCard", "updateCard", "updateCard", "updateCard",
        "addMemberToCard", "removeMemberFromCard", "addLabelToCard", "removeLabelFromCard",
        "commentCard", "addAttachmentToCard", "updateCard",
    ]  # fmt: skip
    assert {a["memberCreator"]["username"] for a in actions} == {"alice"}
    assert actions[1]["data"]["old"] == {"closed": False}
    assert actions[5]["data"]["old"] == {"due": "2026-12-15T12:00:00.000Z"}
    assert actions[8]["data"]["label"] == {"id": label["id"], "name": "bug", "color": "red"}
    assert actions[11]["data"]["attachment"]["url"] == "https://gitlab.example/x/-/issues/1"
    assert emu.count_calls("PUT") == 0  # acting as a person is not an API call
    with pytest.raises(KeyError):
        alice.add_member(cid, "nobody")
    alice.add_label(cid, label["id"])
    with pytest.raises(ValueError, match="that label is already on the card"):
        alice.add_label(cid, label["id"])


def test_a_person_must_be_on_the_board(emu, board):
    """as_person needs a known member, and acts only on boards that member belongs to."""
    with pytest.raises(KeyError):
        emu.as_person("carol")
    emu.add_member(emu.add_board("Other")["id"], "carol", "Carol")
    card = emu.add_card(board.todo, "c")
    with pytest.raises(ValueError, match="not a member of the board"):
        emu.as_person("carol").move_card(card["id"], board.done)
    assert emu.card(card["id"])["idList"] == board.todo and emu.actions() == []


def test_api_label_member_and_attachment_calls_record_actions(emu, api, board):
    """Label, member and attachment calls record their add/remove actions; seeding none."""
    label = emu.add_label(board.id, "bug", "red")
    alice = emu.add_member(board.id, "alice", "Alice")
    cid = emu.add_card(board.todo, "c")["id"]
    emu.move_card(cid, board.done)
    assert emu.actions() == []
    api("POST", f"/cards/{cid}/idLabels", json={"value": label["id"]})
    api("PUT", f"/cards/{cid}", json={"idLabels": [], "idMembers": [alice["id"]]})
    api("DELETE", f"/cards/{cid}/idMembers/{alice['id']}")
    att = api("POST", f"/cards/{cid}/attachments", json={"url": "https://x.example/a"}).json()
    assert (
        att["name"] == "https://x.example/a"
        and att["idMember"] == emu.actions()[0]["idMemberCreator"]
    )
    assert api("POST", f"/cards/{cid}/attachments", json={"url": "ftp:x"}).status_code == 400
    api("DELETE", f"/cards/{cid}/attachments/{att['id']}")
    api("DELETE", f"/cards/{cid}")
    assert [a["type"] for a in emu.actions()] == [
        "addLabelToCard", "removeLabelFromCard", "addMemberToCard", "removeMemberFromCard",
        "addAttachmentToCard", "deleteAttachmentFromCard", "deleteCard",
    ]  # fmt: skip
    member_action = emu.actions()[2]
    assert member_action["member"]["username"] == "alice"
    assert member_action["data"]["idMember"] == alice["id"]


def test_card_webhook_sees_only_its_card(emu, api, board, receiver):
    """A webhook whose idModel is a card gets that card's actions only, with the card as model."""
    emu.add_member(board.id, "alice", "Alice")
    watched = emu.add_card(board.todo, "watched")
    other = emu.add_card(board.todo, "other")
    api("POST", "/webhooks", json={"callbackURL": receiver.url, "idModel": watched["id"]})
    alice = emu.as_person("alice")
    alice.comment(other["id"], "not this")
    alice.comment(watched["id"], "this")
    (payload,) = delivered(emu, receiver)
    assert payload["action"]["data"]["text"] == "this"
    assert payload["model"]["id"] == watched["id"] and payload["model"]["name"] == "watched"


def test_inactive_webhook_gets_nothing_and_redeliver_repeats(emu, api, hooked, receiver):
    """An inactive webhook is not sent to; redeliver() sends an action again (at least once)."""
    alice = emu.as_person("alice")
    api("PUT", f"/webhooks/{hooked.webhook['id']}", json={"active": False})
    card = alice.create_card(hooked.todo, "c")
    assert delivered(emu, receiver) == []
    api("PUT", f"/webhooks/{hooked.webhook['id']}", json={"active": "true"})
    action = alice.comment(card["id"], "twice")
    assert emu.wait_webhooks_idle(10)
    assert emu.redeliver(action["id"]) == 1
    got = delivered(emu, receiver)
    assert [p["action"]["id"] for p in got] == [action["id"], action["id"]]


def test_revoking_the_token_deletes_its_webhooks(emu, api, board, receiver):
    """DELETE /tokens/{token} revokes it and deletes its webhooks."""
    emu.add_token("ATTAother", username="other")
    other = Client(emu, token="ATTAother")
    assert other("POST", "/webhooks", json={"callbackURL": receiver.url, "idModel": board.id}).ok
    assert api("DELETE", "/tokens/ATTAother").status_code == 401  # not the caller's token
    assert other("DELETE", "/tokens/ATTAother").status_code == 200
    assert emu.webhooks() == []
    assert other("GET", "/members/me").status_code == 401
    other.close()


def test_slow_callback_gets_one_delivery_at_a_time_in_order(emu, hooked, receiver):
    """Deliveries to one webhook go one at a time, in the order the actions happened."""
    receiver.delay = 0.05
    alice = emu.as_person("alice")
    card = alice.create_card(hooked.todo, "c")
    names = [f"name {i}" for i in range(8)]
    for name in names:
        alice.rename(card["id"], name)
    got = delivered(emu, receiver)
    assert [p["action"]["data"]["card"]["name"] for p in got[1:]] == names
    assert receiver.most_in_flight == 1


def test_act_control_route_acts_as_a_person(emu, board, receiver):
    """POST /_emulator/act {username, what, args} lets another process act as a person."""
    base = emu.url.removesuffix("/1") + "/_emulator"
    member = requests.post(
        base + "/add_member",
        json={"board_id": board.id, "username": "alice", "full_name": "Alice"},
        timeout=5,
    ).json()["result"]
    emu.add_webhook(receiver.url, board.id, "demo")
    r = requests.post(
        base + "/act",
        json={"username": "alice", "what": "create_card", "args": [board.todo, "From a demo"]},
        timeout=5,
    )
    card = r.json()["result"]
    assert r.status_code == 200 and emu.card(card["id"])["name"] == "From a demo"
    r = requests.post(
        base + "/act",
        json={"username": "alice", "what": "move_card",
              "args": {"card_id": card["id"], "list_id": board.done}},
        timeout=5,
    )  # fmt: skip
    assert r.status_code == 200 and emu.card(card["id"])["idList"] == board.done
    idle = requests.post(base + "/wait_webhooks_idle", json={"timeout": 10}, timeout=15).json()
    assert idle["idle"] is True
    listed = requests.get(base + "/webhooks", timeout=5).json()
    assert [d[1] for d in listed["deliveries"]] == ["createCard", "updateCard"]
    assert {a["idMemberCreator"] for a in emu.actions()} == {member["id"]}
    bad = {"username": "alice", "what": "explode", "args": []}
    assert requests.post(base + "/act", json=bad, timeout=5).status_code == 400
    nobody = {"username": "nobody", "what": "comment", "args": [card["id"], "x"]}
    assert requests.post(base + "/act", json=nobody, timeout=5).status_code == 404
    config = {"secret": "ab" * 32, "webhook_retry_delays": [0, 0], "webhook_signing": "binary"}
    assert requests.post(base + "/config", json=config, timeout=5).status_code == 200
    assert (emu.secret, emu.webhook_retry_delays, emu.webhook_signing) == (
        "ab" * 32,
        (0.0, 0.0),
        "binary",
    )
