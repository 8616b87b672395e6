"""`make demo`: the bridge at work, with no account, no credentials and no network.

Starts the project's own Trello and GitLab emulators on loopback, starts the real service under
uWSGI the way `make run` does (web processes and worker mule, two-way sync on, SQLite in a
temporary folder), registers its Trello webhook with `./gitlab2trello trello-webhook` and its
GitLab project hook, then plays a short story, acting as people on both sides. After each step
it waits until both sides have settled and prints the board and the GitLab issues side by side.

Exits 0 when the story ended as told, 1 (saying what did not happen) otherwise. Everything it
started is stopped on the way out, on failure and on Ctrl-C too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from tests.gitlab_emulator import GitLabEmulator
from tests.trello_emulator import TrelloEmulator

ROOT = Path(__file__).resolve().parent
UWSGI = Path(sys.executable).parent / "uwsgi"
PROJECT_ID, PROJECT_PATH = 42, "acme/widget-api"
BOARD = "Widget API"
LISTS = ("To Do", "Doing", "In review", "Done")
PEOPLE = {"alice": "Alice Moreau", "bob": "Bob Lindqvist"}
WAIT = 20.0  # seconds an expected outcome may take
COLUMN = 46  # characters of each side of the table


class StoryFailed(Exception):
    """The story did not go as told."""


class Stopped(Exception):
    """SIGTERM or SIGHUP: stop like Ctrl-C."""


def wait_until(check: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise StoryFailed(f"after {timeout:.0f} s: {what}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Demo:
    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="gitlab2trello-demo-"))
        self.trello: TrelloEmulator | None = None
        self.gitlab: GitLabEmulator | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.workdir / "service.log"
        self.database = self.workdir / "bridge.sqlite3"
        self.lists: dict[str, str] = {}

    # ------------------------------------------------------------------ set up
    def start_emulators(self) -> None:
        trello = self.trello = TrelloEmulator().start()
        board = trello.add_board(BOARD)
        self.board_id = board["id"]
        for name in LISTS:
            self.lists[name] = trello.add_list(board["id"], name)["id"]
        gitlab = self.gitlab = GitLabEmulator().start()
        gitlab.add_project(PROJECT_PATH, project_id=PROJECT_ID)
        for username, full_name in PEOPLE.items():
            trello.add_member(board["id"], username, full_name)
            gitlab.add_user(username, full_name)

    def write_config(self) -> Path:
        assert self.trello is not None and self.gitlab is not None
        sections: dict[str, dict[str, Any]] = {
            "server": {"metrics_dir": self.workdir / "metrics"},
            "store": {"database": self.database},
            "trello": {
                "api_url": self.trello.url,
                "key": self.trello.key,
                "token": self.trello.token,
                "secret": self.trello.secret,
                "list_id": self.lists["To Do"],
                "done_list_id": self.lists["Done"],
                "review_list_id": self.lists["In review"],
            },
            "gitlab": {
                "url": self.gitlab.url,
                "private_token": self.gitlab.token,
                "default_project": PROJECT_PATH,  # the project new cards become issues of
                "merge_requests": "true",
            },
            "twoway": {
                "enabled": "true",
                "callback_url": self.url + "/trello",
                "actions_interval": 3600,
                "create_issues": "true",
            },
            "worker": {"poll_interval": 0.05, "retry_initial_wait": 0.2, "retry_max_wait": 1},
            "lists": {"doing": self.lists["Doing"]},
        }
        text = "".join(
            f"[{section}]\n" + "".join(f"{key} = {value}\n" for key, value in values.items())
            for section, values in sections.items()
        )
        path = self.workdir / "config.ini"
        path.write_text(text, encoding="utf-8")
        return path

    def start_bridge(self) -> None:
        assert self.trello is not None and self.gitlab is not None
        if not UWSGI.exists():
            raise StoryFailed(f"{UWSGI} is missing: run `make demo` (it installs it)")
        self.env = {**os.environ, "GITLAB2TRELLO_CONFIG": str(self.write_config())}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(UWSGI),
                    "--ini",
                    str(ROOT / "deploy" / "uwsgi-base.ini"),
                    "--http11-socket",
                    f"127.0.0.1:{self.port}",
                ],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        wait_until(self.healthy, "the bridge answers GET /healthz with 200", 60)
        registered = subprocess.run(
            [str(ROOT / "gitlab2trello"), "trello-webhook"],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        if registered.returncode != 0:
            raise StoryFailed(
                "./gitlab2trello trello-webhook failed:\n" + registered.stdout + registered.stderr
            )
        print("  " + "\n  ".join(registered.stdout.strip().splitlines()))
        self.gitlab.add_hook(PROJECT_ID, self.url + "/issue", merge_requests_events=True)
        print(f"  GitLab project hook: {self.url}/issue (issues, comments, merge requests)")
        wait_until(lambda: self.meta("trello_member_id"), "the worker knows its Trello member")

    def healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise StoryFailed(f"the bridge exited with {self.proc.returncode}")
        try:
            return requests.get(self.url + "/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def meta(self, key: str) -> str | None:
        if not self.database.exists():
            return None
        try:
            with contextlib.closing(
                sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=5)
            ) as conn:
                row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error:
            return None
        return row[0] if row else None

    def pending(self) -> int:
        answer = requests.get(self.url + "/healthz", timeout=5).json()
        if answer.get("dead_letters"):
            raise StoryFailed(f"the bridge has dead letters: {answer}")
        return int(answer["pending"])

    def settle(self) -> None:
        """Until both emulators' webhooks are delivered and the bridge's queue is empty,
        three times over (one side's change may start a delivery on the other)."""
        assert self.trello is not None and self.gitlab is not None
        for _ in range(3):
            if not self.trello.wait_webhooks_idle(WAIT):
                raise StoryFailed("Trello's webhook deliveries did not finish")
            if not self.gitlab.wait_hooks_idle(WAIT):
                raise StoryFailed("GitLab's webhook deliveries did not finish")
            wait_until(lambda: self.pending() == 0, "the bridge's queue is empty")
            time.sleep(0.3)

    # ------------------------------------------------------------------ tear down
    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(15)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        for emulator in (self.trello, self.gitlab):
            if emulator is not None:
                emulator.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # ------------------------------------------------------------------ looking
    def cards(self) -> list[dict]:
        assert self.trello is not None
        return self.trello.cards(board_id=self.board_id, include_closed=False)

    def card_of(self, iid: int) -> dict | None:
        found = [c for c in self.cards() if c["name"].startswith(f"[ ISSUE {iid} ]")]
        return found[0] if len(found) == 1 else None

    def issue(self, iid: int) -> dict:
        assert self.gitlab is not None
        return self.gitlab.issue(PROJECT_ID, iid)

    def table(self) -> str:
        assert self.trello is not None and self.gitlab is not None
        members = {m["id"]: m["username"] for m in self.trello.state()["members"]}
        left: list[str] = []
        cards = self.cards()
        for name in LISTS:
            left.append(f"{name}")
            in_list = [c for c in cards if c["idList"] == self.lists[name]]
            if not in_list:
                left.append("   (empty)")
            for card in in_list:
                left += wrap(card["name"], " * ", "   ")
                details = "labels: " + names([label["name"] for label in card["labels"]])
                details += "  members: " + names([members[m] for m in card["idMembers"]])
                left += wrap(details, "     ", "     ")
                left += wrap("due: " + (card["due"] or "-")[:10], "     ", "     ")
                for attachment in self.trello.attachments(card["id"]):
                    left += wrap("attached: " + attachment["name"], "     ", "     ")
        right: list[str] = []
        for issue in self.gitlab.issues(PROJECT_ID):
            right += wrap(f"#{issue['iid']} {issue['title']}", "", "   ")
            details = f"{issue['state']}  labels: {names(issue['labels'])}"
            right += wrap(details, "   ", "   ")
            people = names([a["username"] for a in issue["assignees"]])
            right += wrap(f"assignees: {people}  due: {issue['due_date'] or '-'}", "   ", "   ")
        if not right:
            right.append("(no issues)")
        for mr in self.gitlab.merge_requests(PROJECT_ID):
            closes = names(
                [f"#{i['iid']}" for i in self.gitlab.closes_issues(PROJECT_ID, mr["iid"])]
            )
            right += wrap(f"!{mr['iid']} {mr['title']}", "", "   ")
            right += wrap(f"{mr['state']}  closes: {closes}", "   ", "   ")
        rule = "+" + "-" * (COLUMN + 2) + "+" + "-" * (COLUMN + 2) + "+"
        rows = [
            rule,
            row(f'Trello board "{BOARD}"', f"GitLab {PROJECT_PATH} issues"),
            rule,
        ]
        for number in range(max(len(left), len(right))):
            rows.append(
                row(
                    left[number] if number < len(left) else "",
                    right[number] if number < len(right) else "",
                )
            )
        rows.append(rule)
        return "\n".join(rows)


def names(items: list[str]) -> str:
    return ", ".join(items) if items else "-"


def wrap(text: str, first: str, rest: str) -> list[str]:
    return textwrap.wrap(
        text,
        COLUMN,
        initial_indent=first,
        subsequent_indent=rest,
        break_on_hyphens=False,
    ) or [first.rstrip()]


def row(left: str, right: str) -> str:
    return f"| {left:<{COLUMN}} | {right:<{COLUMN}} |"


# ---------------------------------------------------------------------- the story
def story(demo: Demo) -> None:
    """Play the story; raise ``StoryFailed`` at the first step that does not end as told."""
    assert demo.trello is not None and demo.gitlab is not None
    trello, gitlab = demo.trello, demo.gitlab
    step = 0

    def show(title: str) -> None:
        nonlocal step
        step += 1
        demo.settle()
        print(f"\n{step}. {title}")
        print(demo.table())

    # (a) an issue opened in GitLab gets a card in To Do
    alice = gitlab.as_user("alice")
    iid = alice.open_issue(
        PROJECT_ID,
        "Login times out after 30 s",
        "Signing in on a slow connection fails after 30 seconds.",
        assignees=["alice"],
        due_date="2026-07-01",
    )["iid"]
    card = wait_until(lambda: demo.card_of(iid), f"a card for issue #{iid}")
    wait_until(
        lambda: (c := demo.card_of(iid)) and c["idList"] == demo.lists["To Do"] and c["idMembers"],
        f'the card of #{iid} in "To Do" with alice on it',
    )
    show(f'alice opens issue #{iid} in GitLab -> a card appears in "To Do"')

    # (b) edited and labelled in GitLab: renamed, moved to Doing
    title = "Login times out after 30 s on slow networks"
    alice.edit_issue(PROJECT_ID, iid, title=title, add_labels=["doing"])
    wait_until(
        lambda: (
            (c := demo.card_of(iid))
            and c["name"] == f"[ ISSUE {iid} ] {title}"
            and c["idList"] == demo.lists["Doing"]
        ),
        f'the card of #{iid} renamed and in "Doing"',
    )
    show(f'alice renames #{iid} and labels it "doing" -> the card follows, into "Doing"')

    # (c) a person moves the card to Done on the board: the issue is closed
    trello.as_person("bob").move_card(card["id"], demo.lists["Done"])
    wait_until(lambda: demo.issue(iid)["state"] == "closed", f"issue #{iid} closed")
    show(f'bob moves the card to "Done" on the board -> issue #{iid} is closed')
    if demo.issue(iid)["state"] != "closed" or demo.card_of(iid)["idList"] != demo.lists["Done"]:
        raise StoryFailed(f'after settling, #{iid} is not closed with its card in "Done"')

    # (d) a card added on the board becomes an issue
    name = "Export board as CSV"
    added = trello.as_person("alice").create_card(demo.lists["To Do"], name)
    found = wait_until(
        lambda: [i for i in gitlab.issues(PROJECT_ID) if i["title"] == name],
        f'an issue "{name}" in GitLab',
    )
    created = found[0]["iid"]
    if created != iid + 1 or len(found) != 1:
        raise StoryFailed(f'"{name}" became {[i["iid"] for i in found]}, not #{iid + 1}')
    wait_until(
        lambda: trello.card(added["id"])["name"] == f"[ ISSUE {created} ] {name}",
        f"the card renamed [ ISSUE {created} ] {name}",
    )
    show(f'alice adds a card "{name}" in "To Do" -> it becomes issue #{created}')
    if (demo.card_of(created) or {}).get("id") != added["id"]:
        raise StoryFailed(f"issue #{created} does not have exactly the card alice added")

    # (e) a merge request that will close the new issue: attached to its card, in review
    bob = gitlab.as_user("bob")
    mr = bob.open_merge_request(PROJECT_ID, "Add a CSV export", f"Closes #{created}")
    label = f"!{mr['iid']} Add a CSV export"

    def attached() -> bool:
        found = [a for a in trello.attachments(added["id"]) if a["url"] == mr["web_url"]]
        return len(found) == 1 and found[0]["name"] == label

    wait_until(attached, f'"{label}" attached to the card of #{created}')
    wait_until(
        lambda: trello.card(added["id"])["idList"] == demo.lists["In review"],
        f'the card of #{created} in "In review"',
    )
    show(f'bob opens merge request {label} (Closes #{created}) -> on the card, "In review"')

    # (f) merged: GitLab closes the issue, and the card goes to Done
    bob.merge(PROJECT_ID, mr["iid"])
    wait_until(lambda: demo.issue(created)["state"] == "closed", f"issue #{created} closed")
    wait_until(
        lambda: trello.card(added["id"])["idList"] == demo.lists["Done"],
        f'the card of #{created} in "Done"',
    )
    show(f"bob merges {label} -> GitLab closes #{created}, its card goes to Done")
    if len(trello.attachments(added["id"])) != 1:
        raise StoryFailed(f"the card of #{created} does not carry the merge request once")


def main() -> int:
    started = time.monotonic()

    def stop_signal(signum: int, _frame: Any) -> None:
        raise Stopped(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop_signal)
    signal.signal(signal.SIGHUP, stop_signal)
    demo = Demo()
    code = 1
    try:
        print("gitlab2trello demo: Trello and GitLab emulators on loopback, the real service")
        print("under uWSGI (web + worker), two-way sync on. No account, no network.\n")
        demo.start_emulators()
        print(f"  Trello emulator: {demo.trello.url}   GitLab emulator: {demo.gitlab.url}")
        demo.start_bridge()
        print(f"  the bridge: {demo.url}  (uWSGI, deploy/uwsgi-base.ini)")
        story(demo)
        seconds = time.monotonic() - started
        print(f"\nThe story ended as told ({seconds:.0f} s).")
        code = 0
    except StoryFailed as exc:
        print(f"\nDEMO FAILED: {exc}", file=sys.stderr)
        tail = demo.log_tail()
        if tail:
            print("the bridge's log ends with:\n" + tail, file=sys.stderr)
    except (KeyboardInterrupt, Stopped):
        print("\nstopped", file=sys.stderr)
        code = 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("stopping the bridge and the emulators...", file=sys.stderr)
        demo.stop()
    return code


if __name__ == "__main__":
    sys.exit(main())
