"""Hostile and random input: timestamps, comment rendering, and a corpus posted at the service."""

from __future__ import annotations

import copy
import json
import random
import re
from datetime import UTC, datetime, timedelta

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

import events
import gitlab_hook
import sync
from tests.conftest import FIXTURES, load_fixture

FORMATS = (
    lambda d: d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z",
    lambda d: (
        d.astimezone(_tz(2)).strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}+02:00"
    ),
    lambda d: d.strftime("%Y-%m-%d %H:%M:%S UTC"),
    lambda d: d.astimezone(_tz(-5)).strftime("%Y-%m-%d %H:%M:%S -0500"),
    lambda d: d.strftime("%Y-%m-%dT%H:%M:%SZ"),
)


def _tz(hours: int):
    from datetime import timezone

    return timezone(timedelta(hours=hours))


instants = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2099, 12, 31)).map(
    lambda d: d.replace(tzinfo=UTC, microsecond=(d.microsecond // 1000) * 1000)
)


@given(instant=instants, form=st.integers(0, len(FORMATS) - 1))
@settings(max_examples=300, deadline=None)
def test_every_timestamp_format_gives_the_same_instant(instant, form):
    """Each GitLab timestamp format of one instant parses to that instant (UTC)."""
    text = FORMATS[form](instant)
    expected = instant.timestamp() if form in (0, 1) else instant.replace(microsecond=0).timestamp()
    assert gitlab_hook.parse_time(text) == pytest.approx(expected, abs=1e-3)


@given(text=st.text(max_size=60))
@settings(max_examples=300, deadline=None)
def test_timestamp_parser_never_raises_anything_but_value_error(text):
    """Arbitrary text is either a timestamp or a ValueError, nothing else."""
    try:
        result = gitlab_hook.parse_time(text)
    except ValueError:
        return
    assert isinstance(result, float)


texts = st.text(
    alphabet=st.sampled_from(list("ab @_.-\n\u00e9\U0001f600/[]()")) | st.characters(), max_size=300
)


@given(body=texts, author=st.text(max_size=40), repeat=st.sampled_from([1, 100]))
@settings(max_examples=200, deadline=None)
def test_comments_stay_within_limits_and_never_mention(body, author, repeat):
    """A rendered comment is at most 16384 characters and has no raw @mention."""
    note = events.Note(
        id=1, body=body * repeat, author=author, url="https://g.example/a/b/-/issues/1#note_1"
    )
    text = sync.comment_text(note, "https://g.example/a/b")
    assert len(text) <= sync.MAX_TEXT
    assert not re.search(r"@[\w.\-]", text)


def corpus(size: int, seed: int = 5) -> list[tuple[dict[str, str], bytes]]:
    """Deterministic hostile deliveries: mutated fixtures, odd JSON, broken bytes, headers."""
    rng = random.Random(seed)
    bases = [
        load_fixture(path.name)
        for path in sorted(FIXTURES.glob("0*.json"))
        if path.name != "headers.json"
    ]
    odd_values = [None, True, 0, -1, 2**70, 1.5, "", "x" * 5000, [], {}, [1, "a"], {"a": None}]
    events = ["Issue Hook", "Note Hook", "Confidential Issue Hook", "Push Hook", None, "\u00e9"]
    items = []
    for _ in range(size):
        payload = copy.deepcopy(rng.choice(bases))
        target = payload.get("object_attributes") if rng.random() < 0.8 else payload
        for _ in range(rng.randint(1, 4)):
            if isinstance(target, dict) and target:
                key = rng.choice(sorted(target))
                if rng.random() < 0.3:
                    del target[key]
                else:
                    target[key] = rng.choice(odd_values)
        body = json.dumps(payload).encode()
        roll = rng.random()
        if roll < 0.1:
            body = body[: rng.randint(0, len(body))]
        elif roll < 0.15:
            body = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300)))
        elif roll < 0.2:
            body = b"[" * 5000 + b"]" * 5000
        headers = {}
        event = rng.choice(events)
        if event is not None:
            headers["X-Gitlab-Event"] = event
        if rng.random() < 0.5:
            headers["Idempotency-Key"] = f"fuzz-{rng.getrandbits(40)}"
        items.append((headers, body))
    return items


@pytest.mark.integration
def test_fuzz_corpus_never_breaks_the_service(service):
    """Hostile deliveries get 2xx or 4xx with a readable body, never 5xx; the service stays up."""
    statuses: dict[int, int] = {}
    for headers, body in corpus(300):
        answer = requests.post(service.url + "/issue", data=body, headers=headers, timeout=10)
        statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
        assert answer.status_code in (200, 202, 400), (answer.status_code, answer.text, body[:200])
        assert answer.text.strip(), "every answer has a readable body"
    assert statuses.get(400, 0) > 30 and statuses.get(202, 0) > 10, statuses
    service.wait_idle(timeout=60)
    assert service.health()["status"] == "ok"
    assert "Traceback" not in service.log()
