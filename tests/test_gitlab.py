"""Unit tests of gitlab_hook.py: parsing deliveries, timestamps, tokens and signatures."""

import base64
import copy
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import events
import gitlab_hook

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ALL_HEADERS: dict[str, Any] = json.loads((FIXTURES / "headers.json").read_text(encoding="utf-8"))
SIGNING_TOKEN: str = ALL_HEADERS["_signing_token"]
SECRET = "my-legacy-secret-token"
SIGNED = [
    name for name, value in ALL_HEADERS.items() if isinstance(value, dict) and "webhook-id" in value
]
ISSUE_URL = "https://gitlab.example.com/acme/widget-api/-/issues/118"
TITLE_2 = "CSV export drops rows whose names contain non-ASCII characters"


def body_of(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def headers_of(name: str) -> dict[str, str]:
    return dict(ALL_HEADERS[name])


def payload_of(name: str) -> dict[str, Any]:
    return json.loads(body_of(name))


def encode(payload: Any) -> bytes:
    return json.dumps(payload).encode("utf-8")


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


def outcome(headers: dict[str, str], body: bytes) -> Any:
    """parse_delivery's answer, or the BadDelivery it raised; anything else propagates."""
    try:
        result = gitlab_hook.parse_delivery(headers, body)
    except gitlab_hook.BadDelivery as exc:
        assert str(exc), "a BadDelivery must name the problem"
        return exc
    assert isinstance(result, gitlab_hook.Delivery | gitlab_hook.Ignored), result
    return result


def bad(headers: dict[str, str], body: bytes) -> str:
    with pytest.raises(gitlab_hook.BadDelivery) as info:
        gitlab_hook.parse_delivery(headers, body)
    return str(info.value)


def with_attrs(**changes: Any) -> bytes:
    payload = payload_of("01-issue-open.json")
    payload["object_attributes"].update(changes)
    return encode(payload)


HOOK = {"X-Gitlab-Event": "Issue Hook"}


# ---------------------------------------------------------------------------- fixtures


EXPECTED = {
    "01-issue-open.json": {
        "title": "Export to CSV drops rows with unicode names",
        "action": "open",
        "state": "opened",
        "labels": ("bug",),
        "assignees": (),
        "due_date": None,
        "updated_at": utc(2026, 5, 4, 9, 12, 33) + 0.418,
        "author": "dortiz",
    },
    "02-issue-update-title-labels.json": {
        "title": TITLE_2,
        "action": "update",
        "state": "opened",
        "labels": ("bug", "priority::high"),
        "assignees": (),
        "due_date": None,
        "updated_at": utc(2026, 5, 4, 10, 47, 2) + 0.905,
        "author": "lpark",
    },
    "03-issue-close.json": {
        "title": TITLE_2,
        "action": "close",
        "state": "closed",
        "labels": ("bug", "priority::high"),
        "assignees": (),
        "due_date": None,
        "updated_at": utc(2026, 5, 6, 15, 3, 41),
        "author": "sokafor",
    },
    "04-issue-reopen.json": {
        "title": TITLE_2,
        "action": "reopen",
        "state": "opened",
        "labels": ("bug", "priority::high"),
        "assignees": (),
        "due_date": None,
        "updated_at": utc(2026, 5, 9, 8, 20, 55) + 0.003,
        "author": "dortiz",
    },
    "06-issue-multi-assignee-milestone-due.json": {
        "title": TITLE_2,
        "action": "update",
        "state": "opened",
        "labels": ("bug", "priority::high"),
        "assignees": ("lpark", "sokafor"),
        "due_date": "2026-06-30",
        "updated_at": utc(2026, 5, 11, 13, 5, 9) + 0.771,
        "author": "lpark",
    },
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_parses_to_delivery(name):
    """Each of today's issue payloads, with its real headers, becomes the Delivery it describes."""
    expected = EXPECTED[name]
    headers = headers_of(name)
    result = gitlab_hook.parse_delivery(headers, body_of(name))
    assert isinstance(result, gitlab_hook.Delivery)
    assert result.dedupe_key == "key:" + headers["Idempotency-Key"]
    event = result.event
    assert event.iid == 118
    assert event.project_id == 42
    assert event.url == ISSUE_URL
    assert event.title == expected["title"]
    assert event.action == expected["action"]
    assert event.state == expected["state"]
    assert tuple(label.name for label in event.labels) == expected["labels"]
    assert event.assignees == expected["assignees"]
    assert event.due_date == expected["due_date"]
    assert event.updated_at == pytest.approx(expected["updated_at"], abs=1e-3)
    assert event.author == expected["author"]
    assert event.instance == "https://gitlab.example.com"
    assert event.project_path == "acme/widget-api"
    assert event.project_url == "https://gitlab.example.com/acme/widget-api"
    assert event.issue_key == "https://gitlab.example.com|42|118"
    assert event.confidential is False
    assert event.work_item_type == "Issue"
    assert event.description.startswith("Steps:\n1. Create a widget named `Ünïcødé`")


def test_fixture_label_colours_are_kept():
    """Labels keep the colour GitLab gave them."""
    result = gitlab_hook.parse_delivery(
        headers_of("02-issue-update-title-labels.json"),
        body_of("02-issue-update-title-labels.json"),
    )
    assert isinstance(result, gitlab_hook.Delivery)
    assert result.event.labels == (
        events.Label("bug", "#d9534f"),
        events.Label("priority::high", "#ed9121"),
    )


def test_confidential_fixture_is_passed_on_flagged():
    """The confidential issue (fixture 05) becomes a Delivery flagged confidential."""
    name = "05-confidential-issue-open.json"
    result = gitlab_hook.parse_delivery(headers_of(name), body_of(name))
    assert isinstance(result, gitlab_hook.Delivery)
    assert result.event.confidential is True
    assert result.event.iid == 131
    assert result.event.title == "Session token leaks in export log"


def test_confidential_attribute_flags_the_event():
    """An Issue Hook whose issue has confidential: true gives an event flagged confidential."""
    result = gitlab_hook.parse_delivery(HOOK, with_attrs(confidential=True))
    assert isinstance(result, gitlab_hook.Delivery)
    assert result.event.confidential is True


def test_confidential_issue_hook_header_flags_the_event():
    """A Confidential Issue Hook is flagged confidential even if the attribute says otherwise."""
    headers = {"X-Gitlab-Event": "Confidential Issue Hook"}
    result = gitlab_hook.parse_delivery(headers, with_attrs(confidential=False))
    assert isinstance(result, gitlab_hook.Delivery)
    assert result.event.confidential is True


def test_issue_made_confidential_reaches_the_worker():
    """An update that makes an issue confidential is passed on so its public card can be hidden."""
    payload = payload_of("02-issue-update-title-labels.json")
    payload["object_attributes"]["confidential"] = True
    headers = {**headers_of("02-issue-update-title-labels.json")}
    headers["X-Gitlab-Event"] = "Confidential Issue Hook"
    result = gitlab_hook.parse_delivery(headers, encode(payload))
    assert isinstance(result, gitlab_hook.Delivery)
    assert result.event.confidential is True
    assert result.event.action == "update"


def test_seed_payload_without_headers_is_keyed_on_body_digest():
    """The 2013 payload, with no X-Gitlab-Event nor Idempotency-Key, is keyed on its digest."""
    body = body_of("00-seed-2013.json")
    result = gitlab_hook.parse_delivery({}, body)
    assert isinstance(result, gitlab_hook.Delivery)
    assert result.dedupe_key == "sha256:" + hashlib.sha256(body).hexdigest()
    event = result.event
    assert event.iid == 23
    assert event.title == "New API: create/update/delete file"
    assert event.action == "open"
    assert event.state == "opened"
    assert event.url == "http://example.com/diaspora/issues/23"
    assert event.project_id == 14
    assert event.instance == "http://example.com"
    assert event.project_url == "http://example.com/diaspora"
    assert event.project_path is None
    assert event.labels == ()
    assert event.assignees == ()
    assert event.due_date is None
    assert event.description == "Create new API for manipulations with repository"
    assert event.updated_at == utc(2013, 12, 3, 17, 15, 43)
    assert event.author == "root"


def test_incident_type_is_synced_by_default_and_filtered_by_types():
    """Incidents are synced with the default types and ignored when types leaves them out."""
    body = with_attrs(type="Incident")
    assert isinstance(gitlab_hook.parse_delivery(HOOK, body), gitlab_hook.Delivery)
    result = gitlab_hook.parse_delivery(HOOK, body, types=("Issue",))
    assert isinstance(result, gitlab_hook.Ignored)
    assert "Incident" in result.reason


def test_instance_falls_back_to_issue_url_host():
    """Without X-Gitlab-Instance the instance is the issue URL's scheme and host, lower-cased."""
    body = with_attrs(url="https://GitLab.Example.COM/acme/widget-api/-/issues/118")
    result = gitlab_hook.parse_delivery(HOOK, body)
    assert isinstance(result, gitlab_hook.Delivery)
    assert result.event.instance == "https://gitlab.example.com"


# ---------------------------------------------------------------------------- dedupe keys


def test_dedupe_key_prefers_idempotency_key():
    """Idempotency-Key wins over the body digest, so two bodies with one key share a dedupe key."""
    headers = {"Idempotency-Key": "abc-123"}
    assert gitlab_hook.dedupe_key(headers, b"one") == "key:abc-123"
    assert gitlab_hook.dedupe_key(headers, b"two") == "key:abc-123"


def test_dedupe_key_without_idempotency_key_is_body_digest():
    """With no (or a blank) Idempotency-Key the key is the body's SHA-256, different per body."""
    digest = "sha256:" + hashlib.sha256(b"one").hexdigest()
    assert gitlab_hook.dedupe_key({}, b"one") == digest
    assert gitlab_hook.dedupe_key({"Idempotency-Key": "   "}, b"one") == digest
    assert gitlab_hook.dedupe_key({}, b"two") != digest


def test_webhook_uuid_is_not_a_dedupe_key():
    """X-Gitlab-Webhook-UUID, new on every attempt, does not change the dedupe key."""
    first = {"Idempotency-Key": "k", "X-Gitlab-Webhook-UUID": "a"}
    second = {"Idempotency-Key": "k", "X-Gitlab-Webhook-UUID": "b"}
    assert gitlab_hook.dedupe_key(first, b"x") == gitlab_hook.dedupe_key(second, b"x")


# ---------------------------------------------------------------------------- timestamps


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-05-04T09:12:33.418Z", utc(2026, 5, 4, 9, 12, 33) + 0.418),
        ("2026-05-04T11:12:33.418+02:00", utc(2026, 5, 4, 9, 12, 33) + 0.418),
        ("2026-03-16 18:00:15 UTC", utc(2026, 3, 16, 18, 0, 15)),
        ("2026-03-16 20:00:15 +0200", utc(2026, 3, 16, 18, 0, 15)),
        ("2013-12-03T17:15:43Z", utc(2013, 12, 3, 17, 15, 43)),
        ("2026-06-30", utc(2026, 6, 30)),
        ("2026-03-16T13:00:15-05:00", utc(2026, 3, 16, 18, 0, 15)),
    ],
)
def test_parse_time_formats(text, expected):
    """Every timestamp format of the contract parses to the right UTC instant."""
    assert gitlab_hook.parse_time(text) == pytest.approx(expected, abs=1e-6)


def test_parse_time_null_is_none():
    """A null timestamp is None."""
    assert gitlab_hook.parse_time(None) is None


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ("2026-05-04T09:12:33.418Z", "2026-05-04T11:12:33.418+02:00"),
        ("2026-03-16 18:00:15 UTC", "2026-03-16 20:00:15 +0200"),
        ("2026-03-16 18:00:15 UTC", "2026-03-16T18:00:15Z"),
        ("2026-03-16T18:00:15.000Z", "2026-03-16 13:00:15 -0500"),
        ("2026-06-30", "2026-06-30T00:00:00Z"),
    ],
)
def test_equal_instants_compare_equal_across_formats(left, right):
    """The same instant written in two formats parses to equal values."""
    assert gitlab_hook.parse_time(left) == gitlab_hook.parse_time(right)


def test_later_instant_in_other_format_compares_greater():
    """Order follows the instant, not the string: 10:00+02:00 is before 09:00Z."""
    assert gitlab_hook.parse_time("2026-05-04T10:00:00+02:00") < gitlab_hook.parse_time(
        "2026-05-04T09:00:00Z"
    )


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "yesterday",
        "2026-13-01",
        "2026-02-30",
        "2026-05-04T25:00:00Z",
        "2026-05-04T09:61:00Z",
        "2026/05/04",
        "20260504",
        "04.05.2026",
        "2026-05-04T09:12:33 CEST",
        "2026-05-04T09:12:33Zjunk",
        "2026-05-04T09:12:33.Z",
        1777885953,
        17.5,
        True,
        [],
        {},
    ],
)
def test_parse_time_rejects_garbage(value):
    """Anything that is not one of the contract's timestamp formats raises ValueError."""
    with pytest.raises(ValueError, match="timestamp|out of range|must be in"):
        gitlab_hook.parse_time(value)


@pytest.mark.parametrize("value", ["٢٠٢٦-٠٥-٠٤", "2026-05-04T09:12:33+99:99"])
def test_parse_time_rejects_non_ascii_digits_and_impossible_offsets(value):
    """Timestamps with non-ASCII digits or an offset beyond +-23:59 raise ValueError."""
    with pytest.raises(ValueError):
        gitlab_hook.parse_time(value)


def test_format_time_round_trips_parse_time():
    """format_time writes ISO 8601 UTC that parse_time reads back to the same instant."""
    stamp = gitlab_hook.parse_time("2026-05-04T11:12:33+02:00")
    assert gitlab_hook.format_time(stamp) == "2026-05-04T09:12:33Z"
    assert gitlab_hook.parse_time(gitlab_hook.format_time(stamp)) == stamp
    assert gitlab_hook.format_time(None) is None


# ---------------------------------------------------------------------------- signatures


def stamp_of(headers: dict[str, str]) -> int:
    return int(headers["webhook-timestamp"])


@pytest.mark.parametrize("name", SIGNED)
def test_signature_vectors_verify(name):
    """GitLab's real Standard-Webhooks signatures verify at the moment they were sent."""
    headers = headers_of(name)
    assert (
        gitlab_hook.check_signature(headers, body_of(name), SIGNING_TOKEN, stamp_of(headers))
        is None
    )


def test_there_are_signature_vectors():
    """headers.json carries signed deliveries to test with."""
    assert len(SIGNED) >= 4


@pytest.mark.parametrize("name", SIGNED)
def test_signature_fails_when_one_body_byte_changes(name):
    """Changing a single byte of the body makes the signature invalid."""
    headers = headers_of(name)
    body = bytearray(body_of(name))
    middle = len(body) // 2
    body[middle] = body[middle] ^ 0x01
    with pytest.raises(gitlab_hook.Unauthorized, match="invalid webhook-signature"):
        gitlab_hook.check_signature(headers, bytes(body), SIGNING_TOKEN, now=stamp_of(headers))


@pytest.mark.parametrize("offset", [301, -301])
def test_signature_fails_outside_tolerance(offset):
    """A webhook-timestamp 301 s away from now is refused even with a valid signature."""
    name = SIGNED[0]
    headers = headers_of(name)
    with pytest.raises(gitlab_hook.Unauthorized, match="tolerance"):
        gitlab_hook.check_signature(
            headers, body_of(name), SIGNING_TOKEN, now=stamp_of(headers) + offset
        )


@pytest.mark.parametrize("offset", [300, -300])
def test_signature_passes_at_tolerance_edge(offset):
    """A webhook-timestamp exactly 300 s away is still accepted."""
    name = SIGNED[0]
    headers = headers_of(name)
    now = stamp_of(headers) + offset
    assert gitlab_hook.check_signature(headers, body_of(name), SIGNING_TOKEN, now) is None


def test_signature_fails_with_wrong_key():
    """A signature checked with another signing key is refused."""
    name = SIGNED[0]
    headers = headers_of(name)
    other = "whsec_" + base64.b64encode(b"k" * 32).decode()
    with pytest.raises(gitlab_hook.Unauthorized, match="invalid webhook-signature"):
        gitlab_hook.check_signature(headers, body_of(name), other, now=stamp_of(headers))


def test_signature_fails_with_changed_webhook_id():
    """The webhook-id is part of the signed message: changing it invalidates the signature."""
    name = SIGNED[0]
    headers = headers_of(name)
    headers["webhook-id"] = "00000000-0000-0000-0000-000000000000"
    with pytest.raises(gitlab_hook.Unauthorized):
        gitlab_hook.check_signature(headers, body_of(name), SIGNING_TOKEN, now=stamp_of(headers))


def test_signature_second_in_list_passes():
    """During key rotation the right signature may come second in a space-separated list."""
    name = SIGNED[0]
    headers = headers_of(name)
    wrong = "v1," + base64.b64encode(b"\0" * 32).decode()
    headers["webhook-signature"] = f"{wrong} {headers['webhook-signature']}"
    assert (
        gitlab_hook.check_signature(headers, body_of(name), SIGNING_TOKEN, stamp_of(headers))
        is None
    )


def test_signature_with_other_version_prefix_fails():
    """Only v1 signatures count: the right digest under another version is refused."""
    name = SIGNED[0]
    headers = headers_of(name)
    headers["webhook-signature"] = headers["webhook-signature"].replace("v1,", "v2,", 1)
    with pytest.raises(gitlab_hook.Unauthorized):
        gitlab_hook.check_signature(headers, body_of(name), SIGNING_TOKEN, now=stamp_of(headers))


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_signature_headers_are_required(missing):
    """Each of the three webhook-* headers is needed to verify."""
    name = SIGNED[0]
    headers = headers_of(name)
    now = stamp_of(headers)
    del headers[missing]
    with pytest.raises(gitlab_hook.Unauthorized, match="missing"):
        gitlab_hook.check_signature(headers, body_of(name), SIGNING_TOKEN, now=now)


def test_signature_non_integer_timestamp_is_refused():
    """A webhook-timestamp that is not an integer is refused."""
    name = SIGNED[0]
    headers = headers_of(name)
    now = stamp_of(headers)
    headers["webhook-timestamp"] = "soon"
    with pytest.raises(gitlab_hook.Unauthorized, match="webhook-timestamp"):
        gitlab_hook.check_signature(headers, body_of(name), SIGNING_TOKEN, now=now)


def test_signing_key_decodes_whsec_token():
    """The signing key is the base64 payload after whsec_; other text is a ValueError."""
    assert gitlab_hook.signing_key("whsec_" + base64.b64encode(b"secret").decode()) == b"secret"
    with pytest.raises(ValueError, match="whsec_"):
        gitlab_hook.signing_key("whsec_not base64!")


# ---------------------------------------------------------------------------- tokens


def test_check_token_accepts_right_token():
    """The exact secret token passes."""
    assert gitlab_hook.check_token({"X-Gitlab-Token": SECRET}, SECRET) is None


@pytest.mark.parametrize("given", ["wrong", "", SECRET + "x", SECRET[:-1], SECRET.upper()])
def test_check_token_refuses_wrong_token(given):
    """Any token other than the exact secret raises Unauthorized."""
    with pytest.raises(gitlab_hook.Unauthorized, match="invalid X-Gitlab-Token"):
        gitlab_hook.check_token({"X-Gitlab-Token": given}, SECRET)


def test_check_token_refuses_missing_token():
    """A request without X-Gitlab-Token raises Unauthorized naming the header."""
    with pytest.raises(gitlab_hook.Unauthorized, match="missing X-Gitlab-Token"):
        gitlab_hook.check_token({}, SECRET)


def test_check_token_compares_in_constant_time(monkeypatch):
    """The token comparison goes through hmac.compare_digest."""
    calls = []
    original = gitlab_hook.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return original(a, b)

    monkeypatch.setattr(gitlab_hook.hmac, "compare_digest", spy)
    gitlab_hook.check_token({"X-Gitlab-Token": SECRET}, SECRET)
    with pytest.raises(gitlab_hook.Unauthorized):
        gitlab_hook.check_token({"X-Gitlab-Token": "nope"}, SECRET)
    assert len(calls) == 2


# ---------------------------------------------------------------------------- authenticate


def signed_request() -> tuple[dict[str, str], bytes, int]:
    name = SIGNED[0]
    headers = headers_of(name)
    return headers, body_of(name), stamp_of(headers)


def auth(headers: dict[str, str], body: bytes, now: int, secret: str, signing: str) -> None:
    gitlab_hook.authenticate(headers, body, secret_token=secret, signing_token=signing, now=now)


def test_authenticate_without_configuration_accepts_anything():
    """With neither token configured every request passes."""
    junk = {"X-Gitlab-Token": "anything", "webhook-signature": "v1,bogus"}
    assert gitlab_hook.authenticate(junk, b"{}", secret_token="", signing_token="", now=0) is None


def test_authenticate_secret_only():
    """With only a secret token, the token decides, signatures are not needed."""
    headers, body, now = signed_request()
    unsigned = {k: v for k, v in headers.items() if not k.startswith("webhook-")}
    auth(unsigned, body, now, SECRET, "")
    with pytest.raises(gitlab_hook.Unauthorized):
        auth({**unsigned, "X-Gitlab-Token": "wrong"}, body, now, SECRET, "")
    with pytest.raises(gitlab_hook.Unauthorized):
        auth({}, body, now, SECRET, "")


def test_authenticate_signing_only_makes_signature_mandatory():
    """With only a signing token, an unsigned request fails even if it carries a token."""
    headers, body, now = signed_request()
    auth(headers, body, now, "", SIGNING_TOKEN)
    unsigned = {k: v for k, v in headers.items() if not k.startswith("webhook-")}
    with pytest.raises(gitlab_hook.Unauthorized, match="missing"):
        auth(unsigned, body, now, "", SIGNING_TOKEN)
    with pytest.raises(gitlab_hook.Unauthorized):
        auth(headers, body + b" ", now, "", SIGNING_TOKEN)


def test_authenticate_both_tokens():
    """With both, the token must match and a present signature must verify."""
    headers, body, now = signed_request()
    auth(headers, body, now, SECRET, SIGNING_TOKEN)
    unsigned = {k: v for k, v in headers.items() if not k.startswith("webhook-")}
    auth(unsigned, body, now, SECRET, SIGNING_TOKEN)
    with pytest.raises(gitlab_hook.Unauthorized, match="X-Gitlab-Token"):
        auth({**headers, "X-Gitlab-Token": "wrong"}, body, now, SECRET, SIGNING_TOKEN)
    with pytest.raises(gitlab_hook.Unauthorized, match="webhook-signature"):
        auth(headers, body + b" ", now, SECRET, SIGNING_TOKEN)
    with pytest.raises(gitlab_hook.Unauthorized, match="tolerance"):
        auth(headers, body, now + 3600, SECRET, SIGNING_TOKEN)


# ---------------------------------------------------------------------------- bad deliveries


def test_invalid_utf8_is_bad():
    """A body that is not UTF-8 is refused, naming UTF-8."""
    assert "UTF-8" in bad(HOOK, b'{"object_kind": "issue\xff"}')


def test_malformed_json_is_bad():
    """A body that is not JSON is refused, naming JSON."""
    assert "not valid JSON" in bad(HOOK, b'{"object_kind": ')


def test_deeply_nested_json_is_bad():
    """JSON nested too deeply for the parser is a BadDelivery, not a crash."""
    assert "JSON" in bad(HOOK, b"[" * 200_000 + b"]" * 200_000)


@pytest.mark.parametrize(
    ("body", "kind"),
    [(b"[1, 2]", "an array"), (b'"issue"', "a string"), (b"42", "a number"), (b"null", "null")],
)
def test_non_object_body_is_bad(body, kind):
    """A JSON body that is not an object is refused, naming what it is."""
    message = bad(HOOK, body)
    assert "must be a JSON object" in message
    assert kind in message


def test_huge_integer_literal_is_bad():
    """A body with an integer too long for Python to convert is a BadDelivery."""
    body = b'{"object_kind": "issue", "object_attributes": {"iid": ' + b"7" * 5000 + b"}}"
    assert "JSON" in bad(HOOK, body)


def test_missing_event_and_kind_is_bad():
    """With no X-Gitlab-Event and no object_kind the delivery cannot be classified."""
    message = bad({}, b'{"object_attributes": {}}')
    assert "X-Gitlab-Event" in message
    assert "object_kind" in message


def test_missing_object_attributes_is_bad():
    """An issue delivery without object_attributes is refused, naming the field."""
    payload = payload_of("01-issue-open.json")
    del payload["object_attributes"]
    assert "missing object_attributes" in bad(HOOK, encode(payload))


def test_object_attributes_not_an_object_is_bad():
    """object_attributes that is not an object is refused, naming its type."""
    payload = payload_of("01-issue-open.json")
    payload["object_attributes"] = [1]
    assert "object_attributes must be an object, not an array" in bad(HOOK, encode(payload))


@pytest.mark.parametrize(
    ("value", "kind"),
    [("118", "a string"), (True, "a boolean"), (118.0, "a number"), (None, "null")],
)
def test_iid_must_be_integer(value, kind):
    """iid given as a string, boolean, float or null is refused, naming iid and the type."""
    message = bad(HOOK, with_attrs(iid=value))
    assert "iid must be an integer" in message
    assert kind in message


@pytest.mark.parametrize("value", [5, None, ["a"], {"t": 1}, False])
def test_title_must_be_string(value):
    """A title that is not a string is refused, naming title."""
    assert "title must be a string" in bad(HOOK, with_attrs(title=value))


@pytest.mark.parametrize("value", ["delete", "Open", "", 1])
def test_unknown_action_is_bad(value):
    """An action other than open/update/close/reopen is refused, naming the action."""
    message = bad(HOOK, with_attrs(action=value))
    assert "action must be one of open, update, close, reopen" in message
    assert repr(value) in message


def without_action(**changes: Any) -> bytes:
    payload = payload_of("01-issue-open.json")
    del payload["object_attributes"]["action"]
    payload["object_attributes"].update(changes)
    return encode(payload)


@pytest.mark.parametrize(
    ("changes", "action", "state"),
    [
        ({"state": "opened"}, "open", "opened"),
        ({"state": "closed"}, "close", "closed"),
        ({"state": "reopened"}, "open", "opened"),
        ({"state": None, "state_id": 2}, "close", "closed"),
        ({"state": None}, "open", "opened"),
        ({"action": None, "state": "closed"}, "close", "closed"),
    ],
)
def test_missing_action_is_decided_from_state(changes, action, state):
    """Without action (or with null) a closed issue is a close and any other one an open."""
    result = gitlab_hook.parse_delivery(HOOK, without_action(**changes))
    assert isinstance(result, gitlab_hook.Delivery)
    assert (result.event.action, result.event.state) == (action, state)


@pytest.mark.parametrize("value", ["ftp://h/x", "not a url", "", 5, "https://host"])
def test_url_must_be_http(value):
    """An issue URL given but not an http(s) URL with a path is refused, naming url."""
    assert "object_attributes.url" in bad(HOOK, with_attrs(url=value))


def without_url(**top: Any) -> bytes:
    payload = payload_of("01-issue-open.json")
    del payload["object_attributes"]["url"]
    for key, value in top.items():
        if value is None:
            payload.pop(key, None)
        else:
            payload[key] = value
    return encode(payload)


@pytest.mark.parametrize("absent", ["missing", "null"])
def test_missing_url_is_built_from_project_web_url(absent):
    """Without url the link is the project's web URL + /issues/<iid>, on the same issue key."""
    body = without_url() if absent == "missing" else with_attrs(url=None)
    result = gitlab_hook.parse_delivery(HOOK, body)
    assert isinstance(result, gitlab_hook.Delivery)
    event = result.event
    assert event.url == "https://gitlab.example.com/acme/widget-api/issues/118"
    assert event.issue_key == "https://gitlab.example.com|42|118"
    assert event.project_url == "https://gitlab.example.com/acme/widget-api"


def test_missing_url_and_project_uses_repository_homepage():
    """Without url and project (GitLab 8.0 to 8.4) the link comes from repository.homepage."""
    body = without_url(project=None)
    result = gitlab_hook.parse_delivery(HOOK, body)
    assert isinstance(result, gitlab_hook.Delivery)
    assert result.event.url == "https://gitlab.example.com/acme/widget-api/issues/118"


@pytest.mark.parametrize(
    ("headers", "instance", "expected"),
    [
        ({}, None, gitlab_hook.UNKNOWN_INSTANCE),
        ({"X-Gitlab-Instance": "https://GitLab.example.com"}, None, "https://gitlab.example.com"),
        ({}, "https://gitlab.example.com/", "https://gitlab.example.com"),
        ({"X-Gitlab-Instance": "junk"}, "http://old.example.com", "http://old.example.com"),
    ],
)
def test_no_url_and_no_project_gives_an_issue_without_link(headers, instance, expected):
    """With no url, project nor repository (GitLab 6.4 to 7.3) the issue has no link; its
    instance is X-Gitlab-Instance, else the configured GitLab, else a fixed placeholder."""
    body = without_url(project=None, repository=None)
    result = gitlab_hook.parse_delivery({**HOOK, **headers}, body, instance=instance)
    assert isinstance(result, gitlab_hook.Delivery)
    event = result.event
    assert event.issue_key == f"{expected}|42|118"
    assert event.url == gitlab_hook.NO_LINK + event.issue_key
    assert not event.url.startswith(("http://", "https://"))
    assert event.project_url is None


def test_bracketed_host_in_url_is_bad():
    """An issue URL with an unbalanced [ in its host is a BadDelivery, not a crash."""
    result = outcome(HOOK, with_attrs(url="http://[gitlab.example.com/acme/-/issues/1"))
    assert isinstance(result, gitlab_hook.BadDelivery)
    assert "url" in str(result)


@pytest.mark.parametrize("instance", ["https://[gitlab", "https://other.example.com", "junk"])
def test_instance_header_does_not_change_the_issue_key(instance):
    """The instance comes from the issue URL, whatever X-Gitlab-Instance says."""
    headers = {**HOOK, "X-Gitlab-Instance": instance}
    result = gitlab_hook.parse_delivery(headers, with_attrs())
    assert isinstance(result, gitlab_hook.Delivery)
    assert result.event.instance == "https://gitlab.example.com"
    assert result.event.issue_key == "https://gitlab.example.com|42|118"


@pytest.mark.parametrize("value", ["42", None, True, 4.2])
def test_project_id_must_be_integer(value):
    """A project_id that is not an integer is refused, naming project_id."""
    assert "project_id" in bad(HOOK, with_attrs(project_id=value))


def test_project_id_from_project_object_when_attribute_missing():
    """Without object_attributes.project_id the id comes from project.id."""
    payload = payload_of("01-issue-open.json")
    del payload["object_attributes"]["project_id"]
    payload["project"]["id"] = 77
    result = gitlab_hook.parse_delivery(HOOK, encode(payload))
    assert isinstance(result, gitlab_hook.Delivery)
    assert result.event.project_id == 77


def test_description_must_be_string_or_null():
    """A description that is neither a string nor null is refused; null becomes empty text."""
    assert "description" in bad(HOOK, with_attrs(description=["x"]))
    result = gitlab_hook.parse_delivery(HOOK, with_attrs(description=None))
    assert isinstance(result, gitlab_hook.Delivery)
    assert result.event.description == ""


@pytest.mark.parametrize("value", ["last tuesday", "2026-05-04T09:12:33 CEST", 1777885953, []])
def test_unparseable_updated_at_is_absent_with_a_warning(value, caplog):
    """An updated_at that is not a timestamp is treated as absent and logged, never refused."""
    with caplog.at_level("WARNING", logger="gitlab2trello.gitlab"):
        result = gitlab_hook.parse_delivery(HOOK, with_attrs(updated_at=value))
    assert isinstance(result, gitlab_hook.Delivery)
    assert result.event.updated_at is None
    assert "updated_at" in caplog.text
    assert "treated as absent" in caplog.text


@pytest.mark.parametrize("value", ["someday", 20260630, ["2026-06-30"], "2026-02-30"])
def test_unparseable_due_date_is_absent_with_a_warning(value, caplog):
    """A due_date that is not a date is treated as absent and logged, never refused."""
    with caplog.at_level("WARNING", logger="gitlab2trello.gitlab"):
        result = gitlab_hook.parse_delivery(HOOK, with_attrs(due_date=value))
    assert isinstance(result, gitlab_hook.Delivery)
    assert result.event.due_date is None
    assert "due_date" in caplog.text


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-06-30", "2026-06-30"),
        ("2026-06-30T00:00:00.000Z", "2026-06-30"),
        ("2026-06-30 00:00:00 UTC", "2026-06-30"),
        ("", None),
        (None, None),
    ],
)
def test_due_date_shapes(value, expected):
    """A due date given as a date, an ISO timestamp or a UTC-suffixed time is its date."""
    result = gitlab_hook.parse_delivery(HOOK, with_attrs(due_date=value))
    assert isinstance(result, gitlab_hook.Delivery)
    assert result.event.due_date == expected


def test_state_follows_action_when_missing():
    """Without a usable state, close means closed and every other action means opened."""
    closed = gitlab_hook.parse_delivery(HOOK, with_attrs(action="close", state=None))
    reopened = gitlab_hook.parse_delivery(HOOK, with_attrs(action="reopen", state="weird"))
    assert isinstance(closed, gitlab_hook.Delivery)
    assert isinstance(reopened, gitlab_hook.Delivery)
    assert closed.event.state == "closed"
    assert reopened.event.state == "opened"


def with_top(**top: Any) -> bytes:
    payload = payload_of("01-issue-open.json")
    for key, value in top.items():
        if value is None:
            payload.pop(key, None)
        else:
            payload[key] = value
    return encode(payload)


USER = {"name": "Lee Park", "username": "lpark"}


@pytest.mark.parametrize(
    ("top", "expected"),
    [
        ({"assignees": None, "assignee": None}, ()),
        ({"assignees": None, "assignee": USER}, ("lpark",)),
        ({"assignees": [USER, {"username": "sokafor"}], "assignee": {"username": "x"}}, None),
        ({"assignees": [], "assignee": USER}, ()),
    ],
)
def test_assignee_shapes(top, expected):
    """assignees wins; without it the single assignee object (8.x); ids alone name nobody."""
    result = gitlab_hook.parse_delivery(HOOK, with_top(**top))
    assert isinstance(result, gitlab_hook.Delivery)
    assert result.event.assignees == (expected if expected is not None else ("lpark", "sokafor"))


def test_assignee_ids_disagreeing_with_assignees_follow_assignees():
    """assignee_id and assignee_ids that disagree with assignees do not change the members."""
    payload = payload_of("06-issue-multi-assignee-milestone-due.json")
    payload["object_attributes"].update(assignee_id=1, assignee_ids=[1, 2, 3])
    result = gitlab_hook.parse_delivery(HOOK, encode(payload))
    assert isinstance(result, gitlab_hook.Delivery)
    assert result.event.assignees == ("lpark", "sokafor")


@pytest.mark.parametrize(
    ("top", "expected"),
    [
        ({"labels": None}, ("bug",)),  # falls back to object_attributes.labels
        ({"labels": None, "object_attributes_labels": None}, ()),
        ({"labels": [{"title": "Group", "color": "#3e8068", "project_id": None}]}, ("Group",)),
    ],
)
def test_label_shapes(top, expected):
    """Labels absent, only in object_attributes, or group labels with project_id null."""
    payload = payload_of("01-issue-open.json")
    if top.pop("object_attributes_labels", "keep") is None:
        payload["object_attributes"].pop("labels", None)
    for key, value in top.items():
        if value is None:
            payload.pop(key, None)
        else:
            payload[key] = value
    result = gitlab_hook.parse_delivery(HOOK, encode(payload))
    assert isinstance(result, gitlab_hook.Delivery)
    assert tuple(label.name for label in result.event.labels) == expected


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"title": {"previous": "Old", "current": "New"}},
        {
            "title": ["Old", "New"],
            "updated_at": ["2017-09-15 16:50:55 UTC", "2017-09-15 16:52:00 UTC"],
        },
        {"labels": {"previous": [], "current": [{"title": "x"}]}, "weird": 5},
    ],
)
def test_changes_in_any_shape_do_not_matter(changes):
    """changes as {previous, current}, as two-element arrays (9.x/10.x) or odd: same event."""
    plain = gitlab_hook.parse_delivery(HOOK, with_top(changes=None))
    result = gitlab_hook.parse_delivery(HOOK, with_top(changes=changes))
    assert isinstance(plain, gitlab_hook.Delivery)
    assert isinstance(result, gitlab_hook.Delivery)
    assert result.event == plain.event


def test_event_type_confidential_issue_flags_the_event():
    """event_type confidential_issue flags the event even under an Issue Hook header."""
    payload = payload_of("01-issue-open.json")
    payload["event_type"] = "confidential_issue"
    result = gitlab_hook.parse_delivery(HOOK, encode(payload))
    assert isinstance(result, gitlab_hook.Delivery)
    assert result.event.confidential is True


# ---------------------------------------------------------------------------- ignored


def test_old_push_without_header_or_kind_is_ignored():
    """A push of GitLab before 7.11 (no X-Gitlab-Event, no object_kind) is Ignored."""
    body = encode({"before": "95790bf8", "after": "da156088", "ref": "refs/heads/master"})
    result = gitlab_hook.parse_delivery({}, body)
    assert isinstance(result, gitlab_hook.Ignored)


def test_push_hook_is_ignored():
    """A Push Hook is answered Ignored naming the event."""
    body = encode({"object_kind": "push", "ref": "refs/heads/main"})
    result = gitlab_hook.parse_delivery({"X-Gitlab-Event": "Push Hook"}, body)
    assert isinstance(result, gitlab_hook.Ignored)
    assert "Push Hook" in result.reason


NOTE = "07-note-on-issue.json"


def note_payload(**changes: Any) -> dict[str, Any]:
    payload = payload_of(NOTE)
    payload["object_attributes"].update(changes)
    return payload


@pytest.mark.parametrize("noteable", ["MergeRequest", "Commit", "Snippet", None])
def test_note_hook_on_other_things_is_ignored(noteable):
    """A Note Hook on anything but an issue is Ignored naming what was commented."""
    body = encode(note_payload(noteable_type=noteable))
    result = gitlab_hook.parse_delivery({"X-Gitlab-Event": "Note Hook"}, body)
    assert isinstance(result, gitlab_hook.Ignored)
    assert "comments on" in result.reason
    assert (noteable or "unknown") in result.reason


CONFIDENTIAL_NOTE = {"X-Gitlab-Event": "Confidential Note Hook"}


@pytest.mark.parametrize(
    ("headers", "changes", "top"),
    [
        (CONFIDENTIAL_NOTE, {}, {}),
        (CONFIDENTIAL_NOTE, {"internal": True}, {}),
        ({"X-Gitlab-Event": "Note Hook"}, {"internal": True}, {}),
        ({"X-Gitlab-Event": "Note Hook"}, {"confidential": True}, {}),
        ({"X-Gitlab-Event": "Note Hook"}, {}, {"event_type": "confidential_note"}),
        ({}, {}, {"event_type": "confidential_note"}),
    ],
)
def test_internal_notes_are_ignored(headers, changes, top):
    """Internal comments are never copied; a confidential note that does not say it is not
    internal counts as internal."""
    payload = note_payload(**changes)
    payload.update(top)
    if "internal" not in changes:
        del payload["object_attributes"]["internal"]
    result = gitlab_hook.parse_delivery(headers, encode(payload))
    assert isinstance(result, gitlab_hook.Ignored)
    assert "internal" in result.reason


@pytest.mark.parametrize(
    ("headers", "top"),
    [
        (CONFIDENTIAL_NOTE, {}),
        ({"X-Gitlab-Event": "Note Hook"}, {"event_type": "confidential_note"}),
    ],
)
def test_confidential_note_is_confidential_whatever_the_issue_says(headers, top):
    """A Confidential Note Hook (or event_type confidential_note) not internal is flagged
    confidential even when its embedded issue says confidential: false."""
    payload = note_payload()
    payload.update(top)
    payload["issue"]["confidential"] = False
    result = gitlab_hook.parse_delivery(headers, encode(payload))
    assert isinstance(result, gitlab_hook.Delivery)
    assert result.event.confidential is True
    assert result.event.note is not None


def test_note_without_url_links_to_the_issue():
    """A comment without its own URL is linked to its issue's URL with #note_<id>."""
    payload = note_payload(url=None)
    result = gitlab_hook.parse_delivery({"X-Gitlab-Event": "Note Hook"}, encode(payload))
    assert isinstance(result, gitlab_hook.Delivery)
    assert result.event.note is not None
    assert result.event.note.url == ISSUE_URL + "#note_1204"


def test_note_on_issue_becomes_note_event():
    """A comment on an issue is a Delivery keyed on the note, carrying the comment."""
    result = gitlab_hook.parse_delivery({"X-Gitlab-Event": "Note Hook"}, body_of(NOTE))
    assert isinstance(result, gitlab_hook.Delivery)
    event = result.event
    assert result.dedupe_key == "note:https://gitlab.example.com|42|1204"
    assert (event.iid, event.project_id, event.url) == (118, 42, ISSUE_URL)
    assert event.note is not None
    assert event.note.id == 1204
    assert event.note.author == "lpark"
    assert event.note.body.startswith("I can reproduce this with @dortiz's file")
    assert event.note.url == ISSUE_URL + "#note_1204"
    assert event.issue_key == "https://gitlab.example.com|42|118"
    assert events.IssueEvent.from_json(event.to_json()) == event


def test_note_with_garbage_issue_url_is_refused_or_uses_note_url():
    """A comment whose issue.url is not an http(s) URL is refused or falls back to the note URL."""
    payload = payload_of(NOTE)
    payload["issue"]["url"] = "not a url"
    result = outcome({"X-Gitlab-Event": "Note Hook"}, encode(payload))
    if isinstance(result, gitlab_hook.Delivery):
        assert result.event.url == ISSUE_URL
        assert result.event.instance == "https://gitlab.example.com"
    else:
        assert isinstance(result, gitlab_hook.BadDelivery)


def test_note_without_header_is_classified_by_object_kind():
    """A note body with no X-Gitlab-Event header is treated as a Note Hook."""
    result = gitlab_hook.parse_delivery({}, encode(note_payload(noteable_type="MergeRequest")))
    assert isinstance(result, gitlab_hook.Ignored)
    assert "MergeRequest" in result.reason


def test_note_without_object_attributes_is_bad():
    """A Note Hook without object_attributes is refused, naming the field."""
    message = bad({"X-Gitlab-Event": "Note Hook"}, encode({"object_kind": "note"}))
    assert "object_attributes" in message


def test_merge_request_hook_is_ignored():
    """A Merge Request Hook is answered Ignored naming the event."""
    body = encode({"object_kind": "merge_request", "object_attributes": {"iid": 1}})
    result = gitlab_hook.parse_delivery({"X-Gitlab-Event": "Merge Request Hook"}, body)
    assert isinstance(result, gitlab_hook.Ignored)
    assert "Merge Request Hook" in result.reason


def test_other_object_kind_under_issue_hook_is_ignored():
    """A body whose object_kind is not an issue or work item is ignored, naming the kind."""
    body = encode({"object_kind": "pipeline", "object_attributes": {}})
    result = gitlab_hook.parse_delivery(HOOK, body)
    assert isinstance(result, gitlab_hook.Ignored)
    assert "pipeline" in result.reason


def test_work_item_task_is_ignored():
    """A work_item of type Task is ignored, naming the type."""
    payload = payload_of("01-issue-open.json")
    payload["object_kind"] = "work_item"
    payload["object_attributes"]["type"] = "Task"
    result = gitlab_hook.parse_delivery(HOOK, encode(payload))
    assert isinstance(result, gitlab_hook.Ignored)
    assert "Task" in result.reason


def test_issue_kind_with_task_type_is_ignored():
    """An object_kind issue whose type is Task is ignored, naming the type."""
    result = gitlab_hook.parse_delivery(HOOK, with_attrs(type="Task"))
    assert isinstance(result, gitlab_hook.Ignored)
    assert "Task" in result.reason


def test_work_item_of_issue_type_is_synced():
    """A work_item of type Issue is synced like an issue."""
    payload = payload_of("01-issue-open.json")
    payload["object_kind"] = "work_item"
    result = gitlab_hook.parse_delivery(HOOK, encode(payload))
    assert isinstance(result, gitlab_hook.Delivery)
    assert result.event.work_item_type == "Issue"


# ---------------------------------------------------------------------------- serialisation


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_issue_event_json_round_trip(name):
    """IssueEvent.from_json(to_json()) gives back an equal event."""
    result = gitlab_hook.parse_delivery(headers_of(name), body_of(name))
    assert isinstance(result, gitlab_hook.Delivery)
    event = result.event
    assert events.IssueEvent.from_json(event.to_json()) == event


def test_issue_event_with_note_round_trips():
    """An event carrying a Note, labels and assignees survives to_json/from_json."""
    event = events.IssueEvent(
        instance="https://gitlab.example.com",
        project_id=1,
        iid=2,
        title="t @x",
        url="https://gitlab.example.com/a/b/-/issues/2",
        action="update",
        state="opened",
        updated_at=1.5,
        labels=(events.Label("bug", "#ff0000"), events.Label("docs")),
        assignees=("ann", "bob"),
        moved_to_id=9,
        note=events.Note(id=3, body="hello", author="ann", url="https://x/n", internal=True),
    )
    copy_back = events.IssueEvent.from_json(event.to_json())
    assert copy_back == event
    assert isinstance(copy_back.note, events.Note)
    assert copy_back.labels[0] == events.Label("bug", "#ff0000")


# ---------------------------------------------------------------------------- properties


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
header_sets = st.sampled_from(
    [
        {},
        HOOK,
        {"X-Gitlab-Event": "Confidential Issue Hook"},
        {"X-Gitlab-Event": "Note Hook"},
        {"X-Gitlab-Event": "Push Hook"},
    ]
)
FIXTURE_01 = payload_of("01-issue-open.json")
ATTR_KEYS = sorted(FIXTURE_01["object_attributes"])
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(value=json_values, headers=header_sets)
def test_any_json_body_is_classified(value, headers):
    """Any JSON value as a body gives Delivery or Ignored, or raises BadDelivery."""
    result = outcome(headers, encode(value))
    assert isinstance(result, gitlab_hook.Delivery | gitlab_hook.Ignored | gitlab_hook.BadDelivery)


@PROPERTY
@given(body=st.binary(max_size=200), headers=header_sets)
def test_any_bytes_body_is_classified(body, headers):
    """Any bytes as a body give Delivery or Ignored, or raise BadDelivery."""
    result = outcome(headers, body)
    assert isinstance(result, gitlab_hook.Delivery | gitlab_hook.Ignored | gitlab_hook.BadDelivery)


@PROPERTY
@given(
    changes=st.dictionaries(st.sampled_from(ATTR_KEYS), json_values, min_size=1, max_size=6),
    removed=st.lists(st.sampled_from(ATTR_KEYS), max_size=3),
    top=st.dictionaries(
        st.sampled_from(["labels", "assignees", "project", "user", "object_kind"]),
        json_values,
        max_size=2,
    ),
)
def test_mutated_fixture_is_classified(changes, removed, top):
    """Fixture 01 with fields set to arbitrary JSON gives Delivery or Ignored, or BadDelivery."""
    payload = copy.deepcopy(FIXTURE_01)
    payload["object_attributes"].update(changes)
    for key in removed:
        payload["object_attributes"].pop(key, None)
    payload.update(top)
    result = outcome(HOOK, encode(payload))
    if isinstance(result, gitlab_hook.Delivery):
        assert isinstance(result.event.iid, int)
        assert isinstance(result.event.title, str)
        assert result.event.action in gitlab_hook.ACTIONS
        assert result.event.state in ("opened", "closed")


FIXTURE_07 = payload_of(NOTE)
NOTE_KEYS = sorted(FIXTURE_07["object_attributes"])
NOTE_ISSUE_KEYS = sorted(FIXTURE_07["issue"])


@PROPERTY
@given(
    changes=st.dictionaries(st.sampled_from(NOTE_KEYS), json_values, max_size=4),
    issue_changes=st.dictionaries(st.sampled_from(NOTE_ISSUE_KEYS), json_values, max_size=4),
    top=st.dictionaries(
        st.sampled_from(["issue", "project", "user", "project_id"]), json_values, max_size=2
    ),
)
def test_mutated_note_is_classified(changes, issue_changes, top):
    """The note fixture with fields set to arbitrary JSON gives Delivery, Ignored or BadDelivery."""
    payload = copy.deepcopy(FIXTURE_07)
    payload["object_attributes"].update(changes)
    payload["issue"].update(issue_changes)
    payload.update(top)
    result = outcome({"X-Gitlab-Event": "Note Hook"}, encode(payload))
    if isinstance(result, gitlab_hook.Delivery):
        assert result.event.note is not None
        assert isinstance(result.event.note.body, str)
        assert isinstance(result.event.iid, int)
