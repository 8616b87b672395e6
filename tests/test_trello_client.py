"""The Trello client against the emulator: auth, timeouts, error family, pacing, retries."""

from __future__ import annotations

import logging

import pytest
import requests
import stamina

import trello
from tests.trello_emulator import TrelloEmulator


@pytest.fixture(autouse=True)
def no_retry_waits():
    stamina.set_testing(True, attempts=3)
    yield
    stamina.set_testing(False)


@pytest.fixture
def emu():
    with TrelloEmulator() as emulator:
        board = emulator.add_board("B")
        emulator.list_id = emulator.add_list(board["id"], "To Do")["id"]
        yield emulator


def client_for(emu: TrelloEmulator, **kwargs) -> trello.Client:
    return trello.Client(emu.url, emu.key, emu.token, read_timeout=0.5, **kwargs)


def test_credentials_travel_only_in_the_authorization_header(emu):
    """No request URL carries the key or the token; the OAuth header does."""
    client = client_for(emu)
    sent: list[requests.PreparedRequest] = []
    client.session.hooks["response"].append(lambda r, *a, **k: sent.append(r.request))
    card = client.create_card({"idList": emu.list_id, "name": "n", "desc": "d"})
    client.get_card(card["id"])
    assert len(sent) == 2
    for request in sent:
        assert emu.token not in request.url and emu.key not in request.url
        assert request.headers["Authorization"].startswith("OAuth oauth_consumer_key=")


def test_token_never_in_messages_or_logs(emu, caplog):
    """Errors and log lines name method and path, never the token (even on /tokens/<token>)."""
    client = client_for(emu)
    emu.fault("status", status=503, count=10)
    caplog.set_level(logging.INFO)
    with pytest.raises(trello.TrelloUnavailable) as raised:
        client.token_permissions()
    assert emu.token not in str(raised.value)
    assert emu.token not in caplog.text
    assert "/tokens/<token>" in caplog.text


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, trello.TrelloBadRequest),
        (401, trello.TrelloAuthError),
        (404, trello.TrelloNotFound),
        (429, trello.TrelloRateLimited),
        (500, trello.TrelloUnavailable),
        (503, trello.TrelloUnavailable),
    ],
)
def test_status_codes_map_to_one_exception_family(emu, status, error):
    """Each HTTP error status becomes its TrelloError subclass, with status and path."""
    client = client_for(emu, pacer=trello.Pacer(sleep=lambda s: None))
    emu.fault("status", status=status, count=10)
    with pytest.raises(error) as raised:
        client.get_list(emu.list_id)
    assert raised.value.status == status
    assert raised.value.path == f"/lists/{emu.list_id}"
    assert isinstance(raised.value, trello.TrelloError)


def test_timeouts_and_resets_are_unavailable(emu):
    """A read timeout, a reset and a malformed answer are all transient TrelloUnavailable."""
    client = client_for(emu)
    emu.fault("slow", delay=1.0, count=10)
    with pytest.raises(trello.TrelloUnavailable, match="timed out"):
        client.get_list(emu.list_id)
    emu.clear_faults()
    emu.fault("reset", count=10)
    with pytest.raises(trello.TrelloUnavailable, match="connection failed"):
        client.get_list(emu.list_id)
    emu.clear_faults()
    emu.fault("malformed", count=10)
    with pytest.raises(trello.TrelloUnavailable, match="not JSON"):
        client.get_list(emu.list_id)


def test_idempotent_calls_are_retried_but_creates_are_not(emu):
    """A GET after one 503 succeeds by retrying; a POST /cards after a reset is not repeated."""
    client = client_for(emu)
    emu.fault("status", status=503, count=1)
    assert client.get_list(emu.list_id)["id"] == emu.list_id
    emu.fault("apply_then_reset", method="POST", path_prefix="/cards", count=1)
    with pytest.raises(trello.TrelloUnavailable):
        client.create_card({"idList": emu.list_id, "name": "once"})
    assert [c["name"] for c in emu.cards()] == ["once"], "the create was sent exactly once"


def test_rate_limited_calls_wait_and_succeed(emu):
    """A 429 pauses every caller and the call is retried once the pause is over."""
    slept: list[float] = []
    client = client_for(emu, pacer=trello.Pacer(sleep=slept.append))
    emu.fault("status", status=429, count=1)
    assert client.get_list(emu.list_id)["id"] == emu.list_id
    assert slept and max(slept) >= 0.4


def test_pacer_keeps_under_the_limit():
    """The pacer lets `limit` calls through per window and makes the next one wait."""
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    pacer = trello.Pacer(limit=3, interval=10.0, clock=lambda: now[0], sleep=sleep)
    pacer.acquire()
    pacer.observe({}, 200)  # answered: the calls no longer go one at a time
    for _ in range(2):
        pacer.acquire()
    assert slept == []
    pacer.acquire()
    assert now[0] == pytest.approx(10.0)


def test_pacer_follows_rate_limit_headers():
    """Nearly exhausted remaining pauses for half a window; 429s double the pause."""
    now = [0.0]
    pacer = trello.Pacer(clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    headers = {
        "x-rate-limit-api-token-interval-ms": "10000",
        "x-rate-limit-api-token-remaining": "1",
    }
    pacer.observe(headers, 200)
    pacer.acquire()
    assert now[0] == pytest.approx(5.0)
    start = now[0]
    pacer.observe({}, 429)
    pacer.observe({}, 429)
    pacer.acquire()
    assert 1.0 <= now[0] - start <= 1.2 + 0.01


def test_add_label_twice_is_not_an_error(emu):
    """Adding a label that is already on the card answers False instead of raising."""
    client = client_for(emu)
    card = client.create_card({"idList": emu.list_id, "name": "n"})
    label = emu.add_label(card["idBoard"], "bug", "red")
    assert client.add_card_label(card["id"], label["id"]) is True
    assert client.add_card_label(card["id"], label["id"]) is False
    assert client.remove_card_label(card["id"], label["id"]) is True
    assert client.remove_card_label(card["id"], label["id"]) is False


def test_token_permissions_report_write_access(emu):
    """A read-only token is reported as unable to write."""
    emu.add_token("read-only-token", scopes=("read",))
    reader = trello.Client(emu.url, emu.key, "read-only-token")
    assert reader.token_permissions() == {"read": True, "write": False}
    assert client_for(emu).token_permissions() == {"read": True, "write": True}


def test_authorize_url_asks_for_a_never_expiring_read_write_token():
    """The authorize URL carries scope=read,write, expiration=never and the app name."""
    url = trello.authorize_url("k" * 32, "gitlab2trello")
    assert url.startswith("https://trello.com/1/authorize?")
    for part in ("expiration=never", "scope=read%2Cwrite", "response_type=token", "name=gitlab2"):
        assert part in url
