"""The bridge end to end: real uWSGI, real SQLite, the Trello emulator over HTTP."""

from __future__ import annotations

import pytest

from tests.conftest import fixture_bytes

pytestmark = pytest.mark.integration


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
