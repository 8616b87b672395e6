"""Unit tests of the webhook path's helpers: headers read lazily, the log line, the JSON body."""

from __future__ import annotations

import io
import logging
import os
import urllib.parse

import hypothesis
import pytest
from hypothesis import strategies as st

import gitlab_hook
import observe
from server import Headers

ENVIRON = {
    "HTTP_X_GITLAB_TOKEN": "s3cret",
    "HTTP_IDEMPOTENCY_KEY": "key-1",
    # a header of UTF-8 bytes, as a WSGI server hands them over (decoded as latin-1)
    "HTTP_X_GITLAB_INSTANCE": "https://gitlab.example.com/é".encode().decode("latin-1"),
    "HTTP_X_BAD": b"\xff\xfe".decode("latin-1"),
    "CONTENT_TYPE": "application/json",
    "CONTENT_LENGTH": "12",
    "REQUEST_METHOD": "POST",
    "wsgi.input": io.BytesIO(),
}


def test_headers_are_case_insensitive_and_read_from_the_environ():
    headers = Headers(ENVIRON)
    assert headers["X-Gitlab-Token"] == "s3cret"
    assert headers.get("x-gitlab-token") == "s3cret"
    assert headers.get("IDEMPOTENCY-KEY") == "key-1"
    assert headers.get("Content-Type") == "application/json"
    assert headers.get("X-Missing") is None
    assert headers.get("X-Missing", "") == ""
    assert "x-gitlab-token" in headers
    assert "request-method" not in headers  # not a header, though it is in the environ
    with pytest.raises(KeyError):
        headers["X-Missing"]


def test_headers_decode_utf8_and_never_fail_on_bad_bytes():
    headers = Headers(ENVIRON)
    assert headers["X-Gitlab-Instance"] == "https://gitlab.example.com/é"
    assert headers["X-Bad"] == "\ufffd\ufffd"


def test_headers_list_only_the_headers():
    headers = Headers(ENVIRON)
    assert sorted(headers) == [
        "content-length",
        "content-type",
        "idempotency-key",
        "x-bad",
        "x-gitlab-instance",
        "x-gitlab-token",
    ]
    assert len(headers) == 6


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("gitlab2trello.server", logging.INFO, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


@pytest.mark.parametrize("created", [1_700_000_000.0, 1_700_000_000.999, 1_700_000_061.5])
def test_the_log_line_is_the_standard_formatters(created):
    fast, standard = observe._Formatter(), logging.Formatter(observe.FORMAT)
    record = _record("%s -> queued (delivery %d)", "alice open issue #5", 7, request_id="r-1")
    record.created, record.msecs = created, (created - int(created)) * 1000
    assert fast.format(record) == standard.format(record)
    assert fast.format(record).endswith(
        "INFO gitlab2trello.server [r-1] alice open issue #5 -> queued (delivery 7)"
    )


def test_a_log_line_with_a_traceback_keeps_it():
    fast = observe._Formatter()
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord(
            "gitlab2trello.worker", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    record.request_id = "d7"
    text = fast.format(record)
    assert "[d7] failed\nTraceback" in text
    assert "ValueError: boom" in text


def test_secrets_are_blanked_on_the_fast_log_line():
    stream = io.StringIO()
    observe.setup_logging("info", ["tok-secret-1234"])
    root = logging.getLogger()
    root.handlers[0].stream = stream
    try:
        logging.getLogger("gitlab2trello.test").info("calling with %s", "tok-secret-1234")
    finally:
        root.handlers[:] = []
    assert "tok-secret-1234" not in stream.getvalue()
    assert "calling with ***" in stream.getvalue()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"a": ', "body is not valid JSON"),
        (b'{"a": "\xff"}', "body is not valid UTF-8 (byte 7)"),
        (b"[" * 2000 + b"]" * 2000, "nested too deeply"),
        (b'{"a": NaN}', "body is not valid JSON"),
        (b"[1, 2]", "body must be a JSON object, not an array"),
    ],
)
def test_bodies_that_do_not_decode_are_named(body, message):
    with pytest.raises(
        gitlab_hook.BadDelivery, match=message.replace("(", r"\(").replace(")", r"\)")
    ):
        gitlab_hook.decode_body(body)


def _origin_by_urlsplit(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


@pytest.mark.parametrize(
    "url",
    [
        "https://gitlab.example.com/group/project/-/issues/5",
        "http://GitLab.Example.com:8080/g/p/issues/1",
        "https://[2001:db8::1]:8443/g/p/-/issues/2",
        "https://h/",
        "HTTPS://gitlab.example.com/g/p/issues/3",  # not a form GitLab writes: urlsplit's way
        "https://user:pw@gitlab.example.com/g/p/issues/3",
        "https://gitlab.example.com/g/p?x=/y#z",
        "https://gitlab.example.com",
        "ftp://gitlab.example.com/x",
    ],
)
def test_instance_of_agrees_with_urlsplit(url):
    assert gitlab_hook.instance_of(url) == _origin_by_urlsplit(url)


@hypothesis.given(
    st.from_regex(r"\Ahttps?://[A-Za-z0-9.-]{1,20}(:[0-9]{1,5})?/[!-~]{0,30}\Z")
    | st.text(max_size=40).map(lambda tail: "https://" + tail)
)
def test_instance_of_agrees_with_urlsplit_on_any_url(url):
    try:
        expected = _origin_by_urlsplit(url)
    except ValueError:  # urlsplit refuses it (a broken IPv6 host): so does instance_of
        with pytest.raises(ValueError):
            gitlab_hook.instance_of(url)
        return
    assert gitlab_hook.instance_of(url) == expected


def test_request_ids_are_unique_and_fresh_in_each_process():
    ids = {observe.new_request_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(observe._SAFE_ID.match(rid) and rid.startswith("r-") for rid in ids)
    assert observe.new_request_id("nginx-abc.1") == "nginx-abc.1"  # a sane given id is kept
    assert observe.new_request_id("bad id!").startswith("r-")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child draws a prefix of its own
        os.write(write, observe.new_request_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    assert child[:10] != next(iter(ids))[:10]
