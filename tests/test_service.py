"""The bridge end to end: real uWSGI, real SQLite, the Trello emulator over HTTP."""

from __future__ import annotations

import json
import signal
import time

import pytest

from tests.conftest import fixture_bytes, issue_payload, load_fixture, wait_for

pytestmark = pytest.mark.integration


def with_attr(**attrs):
    payload = issue_payload(1)
    payload["object_attributes"].update(attrs)
    return json.dumps(payload).encode()


def test_seed_payload_becomes_one_card(service, trello):
    """The 2013 payload of the original write-up creates the card the write-up describes."""
    response = service.post(fixture_bytes("00-seed-2013.json"), key=None, event=None)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "queued"
    service.wait_idle()
    cards = trello.cards(list_id=trello.list_id)
    assert [c["name"] for c in cards] == ["[ ISSUE 23 ] New API: create/update/delete file"]
    assert cards[0]["desc"].startswith("http://example.com/diaspora/issues/23\n\n")
    assert "Create new API for manipulations with repository" in cards[0]["desc"]


def test_todays_payload_with_its_headers(service, trello):
    """Fixture 01 with the headers GitLab sends becomes one card with the issue link first."""
    headers = load_fixture("headers.json")["01-issue-open.json"]
    response = service.post(fixture_bytes("01-issue-open.json"), key=None, headers=headers)
    assert response.status_code == 202
    service.wait_idle()
    (card,) = trello.cards(list_id=trello.list_id)
    assert card["name"] == "[ ISSUE 118 ] Export to CSV drops rows with unicode names"
    assert card["desc"].startswith("https://gitlab.example.com/acme/widget-api/-/issues/118\n")
    assert "Ünïcødé" in card["desc"]


def test_same_key_three_times_is_one_delivery(service, trello):
    """A repeat of a stored Idempotency-Key answers 200 duplicate and stores nothing new."""
    answers = [service.post(issue_payload(5), key="same-key") for _ in range(3)]
    assert [a.status_code for a in answers] == [202, 200, 200]
    assert [a.json()["status"] for a in answers] == ["queued", "duplicate", "duplicate"]
    assert len({a.json()["delivery"] for a in answers}) == 1
    health = service.wait_idle()
    assert health["delivered"] == 1
    assert len(trello.cards()) == 1


def test_body_digest_dedupes_without_key(service, trello):
    """Without Idempotency-Key the same body is recognised as the same delivery."""
    first = service.post(issue_payload(6), key=None)
    second = service.post(issue_payload(6), key=None)
    assert (first.status_code, second.status_code) == (202, 200)
    assert second.json()["status"] == "duplicate"


def test_eight_concurrent_copies_store_one(service, trello):
    """Eight copies of one delivery arriving together: one queued, seven duplicates, one card."""
    from concurrent.futures import ThreadPoolExecutor

    body = json.dumps(issue_payload(7)).encode()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: service.post(body, key="race-key"), range(8)))
    statuses = sorted(a.json()["status"] for a in answers)
    assert statuses == ["duplicate"] * 7 + ["queued"]
    service.wait_idle()
    assert len(trello.cards()) == 1


def test_resent_open_with_new_key_updates_the_same_card(service, trello):
    """A second open for an issue that has a card (Test button, resend) creates no second card."""
    assert service.post(issue_payload(8, title="First title")).status_code == 202
    service.wait_idle()
    assert service.post(issue_payload(8, title="Second title")).status_code == 202
    service.wait_idle()
    (card,) = trello.cards()
    assert card["name"] == "[ ISSUE 8 ] Second title"


def test_existing_card_with_the_issue_url_is_adopted(service, trello):
    """With no map entry, a card whose description carries the issue URL is reused."""
    url = "https://gitlab.example.com/acme/widget-api/-/issues/9"
    made = trello.add_card(trello.list_id, "[ ISSUE 9 ] by hand", desc=f"{url}\n\nnotes")
    trello.add_card(trello.list_id, "[ ISSUE 99 ] other", desc=url.replace("/9", "/99"))
    assert service.post(issue_payload(9, title="Issue nine")).status_code == 202
    service.wait_idle()
    names = sorted(c["name"] for c in trello.cards())
    assert names == ["[ ISSUE 9 ] Issue nine", "[ ISSUE 99 ] other"]
    assert trello.card(made["id"])["name"] == "[ ISSUE 9 ] Issue nine"


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"\xff\xfe{}", "UTF-8"),
        (b'{"object_kind": "issue", ', "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'"issue"', "JSON object"),
        (b'{"object_kind": "issue"}', "object_attributes"),
        (with_attr(iid="1"), "iid"),
        (with_attr(title=5), "title"),
        (with_attr(action="explode"), "action"),
    ],
)
def test_bad_input_is_400_and_stores_nothing(service, body, problem):
    """Each malformed delivery gets 400 with a body naming the problem, and nothing is stored."""
    response = service.post(body)
    assert response.status_code == 400
    assert response.headers["Content-Type"].startswith("text/plain")
    assert problem in response.text
    health = service.health()
    assert (health["pending"], health["delivered"], health["dead_letters"]) == (0, 0, 0)


def test_body_over_the_limit_is_413(make_service):
    """A body larger than [server] max_body_bytes is refused with 413 and not stored."""
    service = make_service({"server": {"max_body_bytes": 20000}})
    payload = issue_payload(1, description="x" * 30000)
    response = service.post(payload)
    assert response.status_code == 413
    assert "20000" in response.text
    assert service.health()["pending"] + service.health()["delivered"] == 0


@pytest.mark.parametrize(
    ("event", "payload_kind", "reason"),
    [
        ("Push Hook", "push", "Push Hook"),
        ("Merge Request Hook", "merge_request", "Merge Request Hook"),
        ("Issue Hook", "work_item", "Task"),
    ],
)
def test_other_events_are_ignored_with_200(service, event, payload_kind, reason):
    """Events the bridge does not sync answer 200 ignored, so GitLab never disables the hook."""
    payload = issue_payload(3, type="Task")
    payload["object_kind"] = payload_kind
    response = service.post(payload, event=event)
    assert response.status_code == 200
    assert response.json()["status"] == "ignored"
    assert reason in response.json()["reason"]
    assert service.health()["pending"] == 0


def test_confidential_issue_is_ignored(service, trello):
    """A confidential issue answers 200 ignored and makes no card (default policy: skip)."""
    headers = load_fixture("headers.json")["05-confidential-issue-open.json"]
    response = service.post(
        fixture_bytes("05-confidential-issue-open.json"), key=None, headers=headers
    )
    assert response.status_code == 200
    assert response.json()["status"] == "ignored"
    assert trello.cards() == []


def test_secret_token_is_required_when_set(make_service):
    """With [gitlab] secret_token set, a missing or wrong X-Gitlab-Token is 401; nothing stored."""
    service = make_service({"gitlab": {"secret_token": "s3cret-token-value"}})
    missing = service.post(issue_payload(1))
    wrong = service.post(issue_payload(1), headers={"X-Gitlab-Token": "nope"})
    right = service.post(issue_payload(1), headers={"X-Gitlab-Token": "s3cret-token-value"})
    assert (missing.status_code, wrong.status_code, right.status_code) == (401, 401, 202)
    assert "s3cret" not in missing.text + wrong.text
    assert "s3cret-token-value" not in service.log()
    assert service.wait_idle()["delivered"] == 1


def test_signed_deliveries_are_verified(make_service):
    """With a signing token, a valid fresh signature is accepted and a forged one is 401."""
    import base64
    import hashlib
    import hmac
    import time as _time

    token = load_fixture("headers.json")["_signing_token"]
    service = make_service({"gitlab": {"signing_token": token}})
    body = json.dumps(issue_payload(11)).encode()
    stamp = str(int(_time.time()))
    key = base64.b64decode(token.removeprefix("whsec_"))
    signature = base64.b64encode(
        hmac.new(key, f"msg-11.{stamp}.".encode() + body, hashlib.sha256).digest()
    ).decode()
    good = {"webhook-id": "msg-11", "webhook-timestamp": stamp}
    ok = service.post(body, headers={**good, "webhook-signature": f"v1,AAAA v1,{signature}"})
    forged = service.post(body, headers={**good, "webhook-signature": "v1,AAAA"})
    unsigned = service.post(body)
    assert (ok.status_code, forged.status_code, unsigned.status_code) == (202, 401, 401)


def test_routes_404_and_405(service):
    """Unknown paths answer 404, a wrong method on a route 405, and /hello/<name> greets."""
    import requests

    assert requests.get(service.url + "/nope", timeout=5).status_code == 404
    assert requests.get(service.url + "/issue", timeout=5).status_code == 405
    assert requests.post(service.url + "/hello/x", timeout=5).status_code == 405
    hello = requests.get(service.url + "/hello/gitlab", timeout=5)
    assert (hello.status_code, hello.text) == (200, "Hello gitlab!\n")


def test_healthz_503_when_the_store_is_unusable(make_service, tmp_path):
    """When the database cannot be opened, /healthz and /issue answer 503 and the app still runs."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    service = make_service({"store": {"database": str(blocker / "db.sqlite3")}})
    import requests

    health = requests.get(service.url + "/healthz", timeout=5)
    assert health.status_code == 503
    assert health.json()["status"] == "error"
    assert service.post(issue_payload(1)).status_code == 503


def test_without_trello_credentials_deliveries_wait(make_service, trello):
    """Without Trello credentials the service stores deliveries and says so; later they arrive."""
    service = make_service({"trello": {"key": "", "token": ""}})
    assert service.post(issue_payload(12)).status_code == 202
    health = service.health()
    assert health["trello_configured"] is False
    assert "not configured" in health["warning"]
    assert health["pending"] == 1
    service.stop()
    service.settings["trello"].update(key=trello.key, token=trello.token)
    service.start()
    service.wait_idle()
    assert [c["name"] for c in trello.cards()] == ["[ ISSUE 12 ] Issue number 12"]


def test_trello_outage_then_rate_limit_ends_with_each_card_once(service, trello):
    """503s for a while, then 429s: every card is created once when Trello recovers."""
    trello.fault("status", status=503, seconds=2.5)
    trello.fault("status", status=429, count=4)
    for iid in range(1, 11):
        assert service.post(issue_payload(iid)).status_code == 202
    service.wait_idle(timeout=60)
    names = sorted(c["name"] for c in trello.cards())
    assert names == sorted(f"[ ISSUE {i} ] Issue number {i}" for i in range(1, 11))
    assert trello.count_calls(status=503) > 0
    assert service.health()["dead_letters"] == 0


def test_a_smaller_budget_than_configured_is_paced_to_without_429s(service, trello):
    """Trello allows 20 calls per 10 s, the bridge is configured for 90: it learns the 20 from
    the answers' headers and a batch of new issues spends two windows with (almost) no 429."""
    trello.set_rate_limit(20, 10.0)
    trello.set_latency(0.1)
    for iid in range(1, 31):
        assert service.post(issue_payload(iid)).status_code == 202
    service.wait_idle(timeout=60)
    assert len(trello.cards()) == 30
    limited = trello.count_calls(status=429)
    assert limited <= 1, f"{limited} answers 429 of {len(trello.calls)} calls"
    assert len(trello.calls) - limited > 20, "the batch did not need a second window"


def test_ambiguous_create_does_not_duplicate(service, trello):
    """A create whose answer is lost (applied, then reset) is found on the board, not redone."""
    trello.fault("apply_then_reset", method="POST", path_prefix="/cards", count=1)
    trello.fault("slow", method="POST", path_prefix="/cards", delay=3, count=1)
    for iid in (21, 22):
        assert service.post(issue_payload(iid)).status_code == 202
    service.wait_idle(timeout=60)
    names = sorted(c["name"] for c in trello.cards())
    assert names == ["[ ISSUE 21 ] Issue number 21", "[ ISSUE 22 ] Issue number 22"]


def test_permanent_error_is_a_dead_letter_and_others_go_on(service, trello):
    """A 401 from Trello dead-letters that delivery, counts it, and other issues still sync."""
    trello.fault("status", status=401, method="POST", path_prefix="/cards", count=1)
    assert service.post(issue_payload(31)).status_code == 202
    wait_for(lambda: service.health()["dead_letters"] == 1, message="dead letter")
    assert service.post(issue_payload(32)).status_code == 202
    service.wait_idle()
    assert [c["name"] for c in trello.cards()] == ["[ ISSUE 32 ] Issue number 32"]
    assert "dead letter" in service.log()


def test_kill_9_mid_burst_loses_and_doubles_nothing(service, trello):
    """kill -9 of the whole service during a burst of 100: after restart, exactly 100 cards."""
    trello.set_latency(0.02)
    for iid in range(1, 101):
        assert service.post(issue_payload(iid)).status_code == 202
        if iid == 60:
            wait_for(lambda: len(trello.cards()) >= 5, message="worker started")
            service.kill()
            service.start()
    service.wait_idle(timeout=90)
    names = [c["name"] for c in trello.cards()]
    assert len(names) == 100
    assert len(set(names)) == 100


def test_bad_configuration_stops_the_start_with_every_problem(make_service):
    """Unknown keys and bad values make uWSGI refuse to start, naming every problem at once."""
    service = make_service(
        {"server": {"max_body_bytes": "lots", "colour": "blue"}, "trello": {"list_id": "x"}},
        start=False,
    )
    service.start(wait=False)
    assert service.proc.wait(30) != 0
    log = service.log()
    assert "[server] max_body_bytes = 'lots'" in log
    assert "[server] colour: unknown key" in log
    assert "[trello] list_id = 'x'" in log


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_sigint_and_sigterm_stop_the_whole_service(service, signum):
    """Ctrl-C and SIGTERM stop master, web processes and worker promptly."""
    assert service.post(issue_payload(1)).status_code == 202
    service.wait_idle()
    started = time.monotonic()
    service.proc.send_signal(signum)
    service.proc.wait(15)
    assert time.monotonic() - started < 15
    assert "goodbye to uWSGI" in service.log()
    assert "worker stopped" in service.log()


def test_missing_secrets_warn_once_at_start(service):
    """With neither secret set, the start-up log warns exactly once."""
    wait_for(lambda: "nor signing_token is set" in service.log(), message="warning logged")
    for _ in range(4):  # both web processes have answered, so both have started
        assert service.post(issue_payload(1), key="same").status_code in (200, 202)
    time.sleep(0.5)
    assert service.log().count("nor signing_token is set") == 1


def status_or_closed(send) -> int | None:
    """The status of an answer, or None when the server closed the connection instead."""
    import requests

    try:
        return send().status_code
    except requests.ConnectionError:
        return None


def test_uwsgi_limits_body_and_headers(service):
    """Straight to uWSGI: a body over limit-post gets 413 (or the connection is closed), oversized
    headers are refused, and the service stays healthy."""
    import requests

    big = b"{" + b" " * (4 * 1024 * 1024) + b"}"
    url = service.url
    assert status_or_closed(lambda: requests.post(url + "/issue", data=big, timeout=30)) in (
        413,
        None,
    )
    filler = {"X-Filler": "a" * 40000}
    huge = status_or_closed(lambda: requests.get(url + "/hello/x", headers=filler, timeout=10))
    assert huge is None or huge >= 400
    assert service.health()["status"] == "ok"
    assert service.health()["pending"] == 0
