"""Moving from one host to several: ``./gitlab2trello migrate --to postgresql://...`` and
``check`` naming the store, on a real SQLite file and a real PostgreSQL database."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from store import SCHEMA_VERSION
from store.postgres import PostgresStore
from store.sqlite import SqliteStore
from tests.conftest import PG_PASSWORD, ROOT, issue_payload, wait_for, with_password

pytestmark = pytest.mark.integration

ISSUE = "https://gitlab.example.com|42|{}"


def run_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "GITLAB2TRELLO_CONFIG": str(config)},
        timeout=120,
        cwd=ROOT,
    )


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def sqlite_state(tmp_path) -> tuple[Path, Path]:
    """A SQLite file holding a card, a pending delivery, a waiting comment, a dead letter and a
    watermark, with the configuration that names it."""
    from events import IssueEvent, Note

    path = tmp_path / "var" / "bridge.sqlite3"
    db = SqliteStore(path)
    db.setup()

    def event(iid: int, note: bool = False) -> str:
        return IssueEvent(
            instance="https://gitlab.example.com",
            project_id=42,
            iid=iid,
            title=f"Issue {iid}",
            url=f"https://gitlab.example.com/acme/w/-/issues/{iid}",
            action="open",
            state="opened",
            updated_at=float(iid),
            note=Note(9, "hi", "ann", "https://x/n/9") if note else None,
        ).to_json()

    for iid in (1, 2, 3, 4):
        db.add_delivery(f"key:{iid}", ISSUE.format(iid), event(iid), updated_at=float(iid))
    db.add_delivery("note:9", ISSUE.format(4), event(4, True), kind="note")
    claims = {c.issue_key: c for c in db.claim(time.time())}
    one, three, four = (claims[ISSUE.format(i)] for i in (1, 3, 4))
    db.save_card(one, "c" * 24, "b" * 24, {"name": "[ ISSUE 1 ] Issue 1"}, 1.0, done=[(1, "x")])
    db.dead_letter(three, [3], "HTTP 400 from Trello")
    db.wait_for_card(four, [5])
    db.retry_later(four, [4], "HTTP 503", next_attempt_at=time.time() + 3600)
    db.set_meta("reconcile_watermark:42", "1700000000.0")
    db.close()
    config = write(tmp_path / "config.ini", f"[store]\ndatabase = {path}\n")
    return path, config


def test_migrate_copies_the_state_once_and_says_what_it_copied(sqlite_state, pg_url):
    """migrate copies map, queue, waiting comments, dead letters, watermarks; twice is safe."""
    _path, config = sqlite_state
    target = with_password(pg_url)
    first = run_cli(config, "migrate", "--to", target)
    assert first.returncode == 0, first.stderr
    assert "issues      2 copied, 0 already there" in first.stdout
    assert "deliveries  4 copied, 0 already there" in first.stdout  # done ones stay behind
    assert PG_PASSWORD not in first.stdout + first.stderr
    db = PostgresStore(pg_url)
    assert db.schema_version() == SCHEMA_VERSION
    assert db.issue(ISSUE.format(1)).card_id == "c" * 24
    assert db.issue(ISSUE.format(4)).attempts == 1
    assert [d["reason"] for d in db.dead_letters()] == ["HTTP 400 from Trello"]
    assert db.meta("reconcile_watermark:42") == "1700000000.0"
    health = db.health()
    assert (health["pending"], health["waiting_for_card"], health["dead_letters"]) == (2, 1, 1)
    assert db.add_delivery("key:2", ISSUE.format(2), "{}")[1] is False  # dedupe goes along
    again = run_cli(config, "migrate", "--to", target)
    assert again.returncode == 0, again.stderr
    assert "deliveries  0 copied, 4 already there" in again.stdout
    assert db.health() == health
    db.close()


def test_migrate_refuses_while_the_service_runs_on_the_file(make_service, pg_url):
    """migrate stops with a clear message while a service works on the SQLite file."""
    service = make_service()
    assert service.post(issue_payload(1)).status_code == 202
    result = run_cli(service.config_path, "migrate", "--to", pg_url)
    assert result.returncode == 1
    assert "the service is running" in result.stderr
    db = PostgresStore(pg_url)
    assert db.schema_version() == 0  # nothing written
    db.close()


def test_migrate_refuses_what_is_not_a_postgresql_url(sqlite_state, tmp_path):
    """--to must be a postgresql:// URL; anything else is a usage error."""
    _path, config = sqlite_state
    result = run_cli(config, "migrate", "--to", str(tmp_path / "other.sqlite3"))
    assert result.returncode == 2
    assert "postgresql://" in result.stderr


def test_moved_state_is_delivered_by_instances_on_postgresql(
    sqlite_state, pg_url, make_service, trello
):
    """After the move, an instance on PostgreSQL delivers what was pending on the old host."""
    _path, config = sqlite_state
    assert run_cli(config, "migrate", "--to", pg_url).returncode == 0
    service = make_service({"store": {"database": pg_url}})
    wait_for(lambda: service.health()["pending"] == 1, 20, "issue 2 delivered")  # 4 backs off
    assert [c["name"] for c in trello.cards()] == ["[ ISSUE 2 ] Issue 2"]


def test_check_names_the_store_and_its_schema_version(tmp_path, pg_url):
    """check says which store is used, that it answers, and its schema version."""
    on_file = write(tmp_path / "a.ini", f"[store]\ndatabase = {tmp_path / 'b.sqlite3'}\n")
    result = run_cli(on_file, "check")
    assert f"ok: store: SQLite file {tmp_path / 'b.sqlite3'} is reachable" in result.stdout
    assert f"schema version {SCHEMA_VERSION} (current)" in result.stdout
    on_pg = write(tmp_path / "c.ini", f"[store]\ndatabase = {with_password(pg_url)}\n")
    result = run_cli(on_pg, "check")
    assert "ok: store: PostgreSQL postgresql://postgres:***@" in result.stdout
    assert "upgraded from version 0" in result.stdout
    assert PG_PASSWORD not in result.stdout + result.stderr
    down = write(
        tmp_path / "d.ini", f"[store]\ndatabase = postgresql://u:{PG_PASSWORD}@127.0.0.1:9/x\n"
    )
    result = run_cli(down, "check")
    assert result.returncode == 1
    assert "problem: store: PostgreSQL postgresql://u:***@127.0.0.1:9/x" in result.stdout
    assert PG_PASSWORD not in result.stdout + result.stderr
