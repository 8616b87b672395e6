"""Running the bridge for real: the command line, backfill, reconciliation, replay, metrics."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, Service, free_port, issue_payload, wait_for
from tests.gitlab_emulator import GitLabEmulator

pytestmark = pytest.mark.integration


@pytest.fixture
def gitlab():
    """A GitLab REST API emulator with project acme/widget-api (id 42)."""
    with GitLabEmulator() as emulator:
        emulator.add_project("acme/widget-api", project_id=42)
        yield emulator


def write_config(path: Path, sections: dict[str, dict[str, object]]) -> Path:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {value}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def settings(tmp_path, trello, gitlab):
    """Configuration sections for the emulators and a database in tmp_path."""
    return {
        "trello": {
            "api_url": trello.url,
            "key": trello.key,
            "token": trello.token,
            "list_id": trello.list_id,
            "read_timeout": 3,
        },
        "gitlab": {"url": gitlab.url, "private_token": gitlab.token},
        "store": {"database": str(tmp_path / "db" / "bridge.sqlite3")},
        "worker": {"poll_interval": 0.05, "retry_initial_wait": 0.2, "retry_max_wait": 1},
    }


@pytest.fixture
def cli(tmp_path, settings):
    """Run ``gitlab2trello`` with a configuration written from ``settings``."""

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120):
        config = write_config(tmp_path / "cli.ini", settings)
        environ = {**os.environ, "GITLAB2TRELLO_CONFIG": str(config), **(env or {})}
        return subprocess.run(
            [sys.executable, str(ROOT / "cli.py"), *args],
            capture_output=True,
            text=True,
            env=environ,
            timeout=timeout,
            cwd=ROOT,
        )

    return run


def test_wrapper_script_has_help_for_each_subcommand():
    """./gitlab2trello prints help for itself and every subcommand."""
    for command in ([], ["backfill"], ["lists"], ["replay"], ["check"]):
        result = subprocess.run(
            [sys.executable, str(ROOT / "cli.py"), *command, "--help"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert "usage: gitlab2trello" in result.stdout
    assert os.access(ROOT / "gitlab2trello", os.X_OK)


def test_authorize_url(cli, settings, trello):
    """authorize-url prints Trello's page for a read,write never-expiring token for the key."""
    result = cli("authorize-url")
    assert result.returncode == 0
    url = result.stdout.strip().splitlines()[0]
    assert url.startswith("https://trello.com/1/authorize?")
    assert f"key={trello.key}" in url and "scope=read%2Cwrite" in url
    assert "expiration=never" in url and "name=gitlab2trello" in url
    settings["trello"]["key"] = ""
    missing = cli("authorize-url")
    assert missing.returncode == 2 and "[trello] key is not set" in missing.stderr


def test_boards_and_lists(cli, trello):
    """boards lists the token's boards; lists takes an id, a shortLink or a board URL."""
    boards = cli("boards")
    assert boards.returncode == 0 and trello.board_id in boards.stdout
    board = trello.state()["boards"]
    short = next(b["shortLink"] for b in board if b["id"] == trello.board_id)
    for ref in (trello.board_id, short, f"https://trello.com/b/{short}/widgets"):
        result = cli("lists", ref)
        assert result.returncode == 0, result.stderr
        assert trello.list_id in result.stdout and "To Do" in result.stdout
    unknown = cli("lists", "ffffffffffffffffffffffff")
    assert unknown.returncode == 1 and "no board" in unknown.stderr


def test_bad_key_and_bad_token_are_explained(cli, settings):
    """A wrong key or token gives exit 1 and says which one Trello refused."""
    settings["trello"]["token"] = "not-a-token"
    bad_token = cli("boards")
    assert bad_token.returncode == 1 and "refused the token" in bad_token.stderr
    assert "not-a-token" not in bad_token.stderr
    settings["trello"]["key"] = "0" * 32
    bad_key = cli("boards")
    assert bad_key.returncode == 1 and "refused the API key" in bad_key.stderr


def test_check_all_well_and_each_problem(cli, settings, trello, gitlab):
    """check exits 0 when all is well and 1 naming each problem otherwise."""
    settings["gitlab"]["projects"] = "acme/widget-api"
    good = cli("check")
    assert good.returncode == 0, good.stdout
    assert "all well" in good.stdout and "list 'To Do'" in good.stdout

    trello.add_token("read-only", scopes=("read",))
    settings["trello"]["token"] = "read-only"
    settings["trello"]["done_list_id"] = "f" * 24
    settings["gitlab"]["projects"] = "acme/nothing"
    bad = cli("check")
    assert bad.returncode == 1
    assert "cannot write" in bad.stdout
    assert "done_list_id" in bad.stdout and "no such list" in bad.stdout
    assert "GitLab project acme/nothing" in bad.stdout and "404" in bad.stdout

    settings["gitlab"]["url"] = f"http://127.0.0.1:{free_port()}"
    unreachable = cli("check")
    assert unreachable.returncode == 1 and "problem: GitLab" in unreachable.stdout
    settings["gitlab"]["url"] = gitlab.url
    settings["gitlab"]["private_token"] = "wrong"
    wrong = cli("check")
    assert wrong.returncode == 1 and "private token" in wrong.stdout


def test_check_reports_configuration_errors(cli, settings):
    """check prints every configuration problem and exits 1."""
    settings["trello"]["list_id"] = "nope"
    settings["server"] = {"unknown_key": "1"}
    result = cli("check")
    assert result.returncode == 1
    assert "list_id = 'nope'" in result.stdout and "unknown_key: unknown key" in result.stdout


def test_backfill_150_issues_twice_and_dry_run(cli, gitlab, trello):
    """Backfill of 150 issues over pages makes 150 cards; a re-run and a dry run add none."""
    for number in range(1, 151):
        gitlab.add_issue(42, title=f"Existing {number}", labels=["bug"] if number % 2 else [])
    gitlab.add_issue(42, title="Closed one", state="closed")
    dry = cli("backfill", "--project", "acme/widget-api", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert (
        "150 to change" in dry.stdout and "would create card '[ ISSUE 1 ] Existing 1'" in dry.stdout
    )
    assert trello.cards() == [] and trello.count_calls() == 0

    first = cli("backfill", "--project", "acme/widget-api", timeout=300)
    assert first.returncode == 0, first.stderr + first.stdout
    assert "150 queued" in first.stdout and "150 delivered, 0 dead" in first.stdout
    pages = [c for c in gitlab.calls if c.path.endswith("/issues") and c.status == 200]
    assert len(pages) >= 3, "150 issues come in pages of 50"
    names = sorted(c["name"] for c in trello.cards())
    assert names == sorted(f"[ ISSUE {n} ] Existing {n}" for n in range(1, 151))

    calls_before = trello.count_calls()
    again = cli("backfill", "--project", "42")
    assert again.returncode == 0 and "0 queued, 150 up to date" in again.stdout
    assert trello.count_calls() == calls_before
    assert len(trello.cards()) == 150
    gitlab.update_issue(42, 7, title="Renamed in GitLab")
    dry_edit = cli("backfill", "--project", "42", "--dry-run")
    assert "#7: would update name" in dry_edit.stdout


def test_backfill_unreachable_gitlab(cli, settings):
    """Backfill against a GitLab that does not answer exits 1 with a plain message."""
    settings["gitlab"]["url"] = f"http://127.0.0.1:{free_port()}"
    result = cli("backfill", "--project", "42")
    assert result.returncode == 1 and "GitLab project 42" in result.stderr


def test_reconcile_after_downtime(tmp_path, settings, gitlab, trello):
    """An issue filed and another closed while the bridge was down are right after a restart."""
    settings["gitlab"].update(projects="acme/widget-api", reconcile_interval=1)
    service = Service(tmp_path / "svc", settings)
    service.workdir.mkdir()
    service.database = Path(settings["store"]["database"])
    service.start()
    try:
        first = gitlab.add_issue(42, title="Before the outage")
        payload = issue_payload(first["iid"], title="Before the outage")
        payload["object_attributes"]["url"] = first["web_url"]
        payload["object_attributes"]["updated_at"] = first["updated_at"]
        assert service.post(payload).status_code == 202
        service.wait_idle()
        wait_for(lambda: len(trello.cards()) == 1, message="first card")
        service.stop()

        gitlab.add_issue(42, title="Filed during the outage")
        gitlab.update_issue(42, first["iid"], state="closed")
        service.start()
        wait_for(
            lambda: (
                sorted((c["name"], c["closed"]) for c in trello.cards())
                == [
                    ("[ ISSUE 1 ] Before the outage", True),
                    ("[ ISSUE 2 ] Filed during the outage", False),
                ]
            ),
            timeout=30,
            message="board reconciled",
        )
        metrics = requests.get(service.url + "/metrics", timeout=5).text
        families = {f.name: f for f in text_string_to_metric_families(metrics)}
        fixes = families["gitlab2trello_reconcile_fixes"].samples
        assert sum(s.value for s in fixes if s.name.endswith("_total")) >= 2
    finally:
        service.stop()


def test_replay_after_a_401_dead_letter(tmp_path, settings, trello, cli):
    """A delivery dead-lettered by Trello's 401 is delivered by replay --all once Trello accepts."""
    service = Service(tmp_path / "svc", settings)
    service.workdir.mkdir()
    service.database = Path(settings["store"]["database"])
    service.start()
    try:
        trello.fault("status", status=401, count=1)
        assert service.post(issue_payload(3)).status_code == 202
        wait_for(lambda: service.health()["dead_letters"] == 1, message="dead letter")
        status = cli("status")
        assert status.returncode == 0
        assert "dead letters      1" in status.stdout and "401" in status.stdout
        replay = cli("replay", "--all")
        assert replay.returncode == 0 and "1 dead letter(s) queued again" in replay.stdout
        service.wait_idle()
        assert [c["name"] for c in trello.cards()] == ["[ ISSUE 3 ] Issue number 3"]
        assert service.health()["dead_letters"] == 0
        assert cli("replay").returncode == 2
    finally:
        service.stop()


def test_metrics_parse_and_move(service, trello):
    """/metrics is valid Prometheus text, summed over processes, and its counters move."""

    def samples() -> dict[str, float]:
        text = requests.get(service.url + "/metrics", timeout=5).text
        found: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                key = sample.name + str(sorted(sample.labels.items()))
                found[key] = found.get(key, 0) + sample.value
        return found

    before = samples()
    for iid in range(1, 6):
        assert service.post(issue_payload(iid), key=f"m-{iid}").status_code == 202
    assert service.post(issue_payload(1), key="m-1").status_code == 200
    assert service.post(b"[]").status_code == 400
    service.wait_idle()
    after = wait_for(
        lambda: (
            (s if s.get("gitlab2trello_delivery_latency_seconds_count[]", 0) >= 5 else None)
            if (s := samples())
            else None
        ),
        message="latency observed",
    )
    queued = "gitlab2trello_deliveries_received_total[('outcome', 'queued')]"
    assert after[queued] - before.get(queued, 0) == 5
    assert after["gitlab2trello_deliveries_received_total[('outcome', 'bad_request')]"] >= 1
    assert after["gitlab2trello_deliveries_received_total[('outcome', 'duplicate')]"] == 1
    created = "gitlab2trello_trello_calls_total[('method', 'POST'), ('status', '200')]"
    assert after[created] >= 5
    assert after["gitlab2trello_queue_depth[]"] == 0
    assert after["gitlab2trello_cards[]"] == 5


def test_log_lines_carry_request_ids_and_no_secrets(make_service, trello):
    """One line per delivery and per Trello call, each with a request id; no secret anywhere."""
    service = make_service({"gitlab": {"secret_token": "hook-secret-value"}})
    answer = service.post(issue_payload(4), headers={"X-Gitlab-Token": "hook-secret-value"})
    rid = answer.headers["X-Request-Id"]
    service.wait_idle()
    log = service.log()
    assert f"[{rid}] dortiz open issue #4 in acme/widget-api -> queued" in log
    trello_lines = [line for line in log.splitlines() if "trello POST /cards -> 200 in" in line]
    assert len(trello_lines) == 1 and "[d" in trello_lines[0] and " ms" in trello_lines[0]
    for secret in ("hook-secret-value", trello.token):
        assert secret not in log
