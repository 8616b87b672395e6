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
import inspect
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

import config
from tests.gitlab_emulator import GitLabEmulator
from tests.trello_emulator import TrelloEmulator

ROOT = Path(__file__).resolve().parent
UWSGI = Path(sys.executable).parent / "uwsgi"
PROJECT_ID, PROJECT_PATH = 42, "acme/widget-api"
BOARD = "Widget API"
LISTS = ("To Do", "Doing", "Done")
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


def supported(section: str, key: str) -> str | None:
    """A value ``[section] key`` accepts, or None when this bridge has no such key."""
    entry = config.SCHEMA.get(section, {}).get(key)
    if entry is None:
        return None
    parse, _default = entry
    for candidate in ("true", PROJECT_PATH, str(PROJECT_ID)):
        try:
            parse(candidate)
        except (ValueError, TypeError):
            continue
        return candidate
    return None


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
        self.extra: dict[str, dict[str, str]] = {}

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
            },
            "gitlab": {"url": self.gitlab.url, "private_token": self.gitlab.token},
            "twoway": {
                "enabled": "true",
                "callback_url": self.url + "/trello",
                "actions_interval": 3600,
            },
            "worker": {"poll_interval": 0.05, "retry_initial_wait": 0.2, "retry_max_wait": 1},
            "lists": {"doing": self.lists["Doing"]},
        }
        for section, values in self.extra.items():
            sections.setdefault(section, {}).update(values)
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
        self.gitlab.add_hook(
            PROJECT_ID, self.url + "/issue", merge_requests_events="merge_requests" in self.extra
        )
        print(f"  GitLab project hook: {self.url}/issue")
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
        right: list[str] = []
        for issue in self.gitlab.issues(PROJECT_ID):
            right += wrap(f"#{issue['iid']} {issue['title']}", "", "   ")
            details = f"{issue['state']}  labels: {names(issue['labels'])}"
            right += wrap(details, "   ", "   ")
            people = names([a["username"] for a in issue["assignees"]])
            right += wrap(f"assignees: {people}  due: {issue['due_date'] or '-'}", "   ", "   ")
        if not right:
            right.append("(no issues)")
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
def story(demo: Demo) -> list[str]:
    """Play the story; return the notes about steps this bridge does not support."""
    assert demo.trello is not None and demo.gitlab is not None
    trello, gitlab = demo.trello, demo.gitlab
    notes: list[str] = []
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
    created: int | None = None
    if "create_issues" in demo.extra.get("twoway", {}):
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
    else:
        notes.append("a card added on the board becoming an issue: no [twoway] create_issues")
        print(f"\n(skipped: {notes[-1]})")

    # (e) a merge request that closes an open issue is attached to its card
    if "merge_requests" in demo.extra.get("gitlab", {}):
        target = created
        if target is None:
            alice.reopen_issue(PROJECT_ID, iid)
            wait_until(lambda: demo.card_of(iid)["idList"] != demo.lists["Done"], "card back")
            target = iid
        merge_request = open_merge_request(gitlab, "bob", "Fix login timeout", f"Closes #{target}")
        mr_url = str(merge_request.get("web_url") or "")

        def attached() -> bool:
            found = demo.card_of(target)
            if found is None:
                return False
            urls = [a.get("url", "") for a in trello.attachments(found["id"])]
            texts = [trello.card(found["id"]).get("desc", "")]
            texts += [c["text"] for c in trello.comments(found["id"])]
            return any((mr_url and mr_url in u) or "merge_requests" in u for u in urls) or any(
                mr_url and mr_url in text for text in texts
            )

        wait_until(attached, f"the merge request attached to the card of #{target}")
        show(f'bob opens merge request "Fix login timeout" (Closes #{target}) -> on its card')
    else:
        missing = "the GitLab emulator has no open_merge_request"
        if supported("gitlab", "merge_requests") is None:
            missing = "no [gitlab] merge_requests"
        notes.append(f"a merge request attached to its card: {missing}")
        print(f"\n(skipped: {notes[-1]})")
    return notes


def open_merge_request(gitlab: GitLabEmulator, username: str, title: str, description: str) -> dict:
    """Open a merge request as ``username`` through whichever form the emulator offers."""
    person = gitlab.as_user(username)
    method = getattr(person, "open_merge_request", None)
    if method is None:
        method = gitlab.open_merge_request  # type: ignore[attr-defined]
    params = inspect.signature(method).parameters
    kwargs: dict[str, Any] = {}
    if "description" in params:
        kwargs["description"] = description
    for name, value in (
        ("source_branch", "fix-login-timeout"),
        ("target_branch", "main"),
        ("username", username),
        ("author", username),
    ):
        if name in params and params[name].default is inspect.Parameter.empty:
            kwargs[name] = value
    return method(PROJECT_ID, title, **kwargs) or {}


def has_open_merge_request() -> bool:
    from tests import gitlab_emulator

    return hasattr(gitlab_emulator.Person, "open_merge_request") or hasattr(
        GitLabEmulator, "open_merge_request"
    )


def main() -> int:
    started = time.monotonic()

    def stop_signal(signum: int, _frame: Any) -> None:
        raise Stopped(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop_signal)
    signal.signal(signal.SIGHUP, stop_signal)
    demo = Demo()
    create = supported("twoway", "create_issues")
    if create:
        demo.extra.setdefault("twoway", {})["create_issues"] = create
        if "default_project" in config.SCHEMA["gitlab"]:  # the project new cards become issues of
            demo.extra.setdefault("gitlab", {})["default_project"] = PROJECT_PATH
    merge = supported("gitlab", "merge_requests")
    if merge and has_open_merge_request():
        demo.extra.setdefault("gitlab", {})["merge_requests"] = merge
    code = 1
    try:
        print("gitlab2trello demo: Trello and GitLab emulators on loopback, the real service")
        print("under uWSGI (web + worker), two-way sync on. No account, no network.\n")
        demo.start_emulators()
        print(f"  Trello emulator: {demo.trello.url}   GitLab emulator: {demo.gitlab.url}")
        demo.start_bridge()
        print(f"  the bridge: {demo.url}  (uWSGI, deploy/uwsgi-base.ini)")
        notes = story(demo)
        seconds = time.monotonic() - started
        print(f"\nThe story ended as told ({seconds:.0f} s).")
        for note in notes:
            print(f"  skipped: {note}")
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
