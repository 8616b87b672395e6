"""The Trello emulator keeps the contract in shared/contracts/trello-api.md."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from tests.trello_emulator import MAX_TEXT, NOT_FOUND, TrelloEmulator

ROOT = Path(__file__).resolve().parent.parent
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
        assert set(info) == {"url", "key", "token", "board_id", "list_id", "done_list_id"}
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
