"""The command line for people who run the bridge: ``./gitlab2trello <subcommand>``.

Exit codes: 0 all well, 1 a check failed or Trello/GitLab refused, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import config as config_module
import gitlab_client
import observe
import reconcile
import store as store_module
import trello
import worker as worker_module
from gitlab_client import GitLabError
from gitlab_hook import format_time
from store import SCHEMA_VERSION, Store, StoreError

USAGE_ERROR = 2


class Failure(Exception):
    """A problem to report in plain words, with the exit code to use."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------- helpers


def load_config() -> config_module.Config:
    try:
        return config_module.load()
    except config_module.ConfigError as exc:
        raise Failure(str(exc), USAGE_ERROR) from None


def trello_client(cfg: config_module.Config) -> trello.Client:
    t = cfg.trello
    missing = [name for name in ("key", "token") if not t[name]]
    if missing:
        raise Failure(
            f"[trello] {' and '.join(missing)} not set (config file or "
            f"GITLAB2TRELLO_TRELLO_{missing[0].upper()})",
            USAGE_ERROR,
        )
    return trello.Client(
        t["api_url"],
        t["key"],
        t["token"],
        connect_timeout=t["connect_timeout"],
        read_timeout=t["read_timeout"],
        pacer=trello.Pacer(limit=t["max_requests_per_10s"]),
        retry_attempts=2,
        retry_timeout=10,
    )


def open_store(cfg: config_module.Config) -> Store:
    store = store_module.open_store(cfg)
    try:
        store.setup()
    except StoreError as exc:
        raise Failure(str(exc)) from None
    return store


def trello_words(exc: trello.TrelloError) -> str:
    """A Trello failure in plain words."""
    if isinstance(exc, trello.TrelloAuthError):
        if "key" in exc.detail:
            return f"Trello refused the API key ({exc.detail}): check [trello] key"
        return (
            f"Trello refused the token ({exc.detail}): make a new one with "
            "`./gitlab2trello authorize-url` and set [trello] token"
        )
    if isinstance(exc, trello.TrelloNotFound):
        return f"Trello has no such object ({exc.method} {exc.path})"
    if isinstance(exc, trello.TrelloUnavailable):
        return f"Trello cannot be reached ({exc})"
    return f"Trello said no: {exc}"


def table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows
    )


def when(stamp: str | float | None) -> str:
    if stamp in (None, ""):
        return "never"
    return format_time(float(stamp)) or "never"


# ---------------------------------------------------------------------- subcommands


def cmd_authorize_url(args: argparse.Namespace) -> int:
    cfg = load_config()
    if not cfg.trello["key"]:
        raise Failure(
            "[trello] key is not set: copy the API key from https://trello.com/power-ups/admin "
            "(tab API Key) into config.ini or GITLAB2TRELLO_TRELLO_KEY",
            USAGE_ERROR,
        )
    print(trello.authorize_url(cfg.trello["key"], args.name))
    print(
        "\nOpen it while logged in to Trello, allow access, and put the token it shows in "
        "GITLAB2TRELLO_TRELLO_TOKEN (or [trello] token).",
        file=sys.stderr,
    )
    return 0


def cmd_boards(args: argparse.Namespace) -> int:
    client = trello_client(load_config())
    boards = [b for b in client.my_boards() if not b.get("closed")]
    if not boards:
        print("the token sees no open board")
        return 0
    print(
        table(
            [("ID", "SHORTLINK", "NAME")]
            + [(b["id"], b.get("shortLink", ""), b["name"]) for b in boards]
        )
    )
    return 0


def cmd_lists(args: argparse.Namespace) -> int:
    client = trello_client(load_config())
    try:
        board = client.get_board(trello.board_ref(args.board))
    except (trello.TrelloNotFound, trello.TrelloBadRequest):
        raise Failure(
            f"no board {args.board!r} that this token can see (try `./gitlab2trello boards`)"
        ) from None
    lists = [item for item in client.board_lists(board["id"]) if not item.get("closed")]
    print(f"board {board['name']} ({board['id']})")
    print(table([("LIST ID", "NAME")] + [(item["id"], item["name"]) for item in lists]))
    print(
        "\nPut the id of the list for new cards in [trello] list_id, closed ones in done_list_id."
    )
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    problems: list[str] = []
    try:
        cfg = config_module.load()
    except config_module.ConfigError as exc:
        print(f"problem: {exc}")
        return 1
    print(f"ok: configuration {cfg.path or '(defaults only)'} is valid")

    def check(label: str, func: Callable[[], str]) -> None:
        try:
            print(f"ok: {label}: {func()}")
        except trello.TrelloError as exc:
            problems.append(f"{label}: {trello_words(exc)}")
            print(f"problem: {problems[-1]}")
        except (GitLabError, Failure, StoreError) as exc:
            problems.append(f"{label}: {exc}")
            print(f"problem: {problems[-1]}")

    check("store", lambda: _store_ok(cfg))
    if not cfg.trello_configured:
        problems.append("Trello: [trello] key, token and list_id must all be set")
        print(f"problem: {problems[-1]}")
    else:
        client = trello_client(cfg)
        check("Trello token", lambda: f"works, member {client.me().get('username')}")

        def can_write() -> str:
            if not client.token_permissions()["write"]:
                raise Failure("the token cannot write: make one with scope=read,write")
            return "can read and write boards"

        check("Trello permissions", can_write)
        routings = [("", cfg.default_routing)] + [
            (f"[project:{name}] ", r) for name, r in cfg.projects.items()
        ]
        seen: set[str] = set()
        for where, routing in routings:
            ids = [("list_id", routing.list_id), ("done_list_id", routing.done_list_id)]
            ids += [(f"[lists] {label}", list_id) for label, list_id in routing.lists.items()]
            for name, list_id in ids:
                if list_id and list_id not in seen:
                    seen.add(list_id)
                    check(
                        f"{where}{name} {list_id}",
                        lambda list_id=list_id: _list_ok(client, list_id),
                    )
    api = reconcile.api_from_config(cfg)
    if api is None:
        print("ok: GitLab REST API not configured (backfill and reconciliation are off)")
    else:
        check(f"GitLab {cfg.gitlab['url']}", lambda: f"token of {api.whoami()}")
        for ref in cfg.gitlab["projects"]:
            check(f"GitLab project {ref}", lambda ref=ref: api.project(ref)["web_url"])
    if cfg.twoway["enabled"]:
        _check_two_way(cfg, check, problems)
    if problems:
        print(f"\n{len(problems)} problem(s) found")
        return 1
    print("\nall well")
    return 0


def _check_two_way(
    cfg: config_module.Config, check: Callable[[str, Callable[[], str]], None], problems: list[str]
) -> None:
    """Two-way sync: a webhook active for each board, the bridge's own identities on both
    sides, and a GitLab token that may write."""
    url = cfg.twoway["callback_url"]
    if cfg.trello_configured:
        client = trello_client(cfg)
        check("two-way: the bridge's Trello member", lambda: f"@{client.me()['username']}")
        try:
            boards = _managed_boards(cfg, client)
            hooks = client.webhooks()
        except trello.TrelloError as exc:
            problems.append(f"two-way: webhooks: {trello_words(exc)}")
            print(f"problem: {problems[-1]}")
            boards, hooks = [], []
        for board in boards:

            def active(board: str = board) -> str:
                found = [
                    h for h in hooks if h.get("idModel") == board and h.get("callbackURL") == url
                ]
                if not found:
                    raise Failure(f"no webhook to {url}: run ./gitlab2trello trello-webhook")
                if not found[0].get("active"):
                    raise Failure(f"webhook {found[0]['id']} is not active (Trello turned it off)")
                return f"webhook {found[0]['id']} to {url} is active"

            check(f"two-way: board {board}", active)
    writer = _gitlab_writer(cfg)
    if writer is None:
        problems.append("two-way: set [gitlab] url and private_token (a token with api scope)")
        print(f"problem: {problems[-1]}")
        return
    check("two-way: the bridge's GitLab user", lambda: f"@{writer.me()['username']}")

    def can_write() -> str:
        scopes = writer.token_scopes()
        if "api" not in scopes:
            raise Failure(
                f"the GitLab token has scopes {', '.join(scopes) or 'none'}: writing to issues "
                "needs the api scope (read_api is read-only); make a token with api"
            )
        return "the token has the api scope"

    check("two-way: GitLab token can write", can_write)


def _gitlab_writer(cfg: config_module.Config) -> gitlab_client.Client | None:
    if not cfg.gitlab["url"] or not cfg.gitlab["private_token"]:
        return None
    return gitlab_client.Client(
        cfg.gitlab["url"], cfg.gitlab["private_token"], retry_attempts=2, retry_timeout=10
    )


def _managed_boards(cfg: config_module.Config, client: trello.Client) -> list[str]:
    boards = trello.BoardCache(client)
    lists = {
        list_id
        for routing in cfg.routings()
        for list_id in (routing.list_id, routing.done_list_id, *routing.lists.values())
        if list_id
    }
    return sorted({boards.board_of(list_id) for list_id in lists})


def cmd_trello_webhook(args: argparse.Namespace) -> int:
    """Register (or list, or remove) the Trello webhook of every configured board."""
    cfg = load_config()
    url = cfg.twoway["callback_url"]
    if not url:
        raise Failure("set [twoway] callback_url: the public URL of POST /trello", USAGE_ERROR)
    client = trello_client(cfg)
    boards = _managed_boards(cfg, client)
    hooks = [h for h in client.webhooks() if h.get("callbackURL") == url]
    if args.list:
        for hook in hooks:
            state = "active" if hook.get("active") else "INACTIVE"
            failures = hook.get("consecutiveFailures") or 0
            print(f"{hook['id']}  board {hook['idModel']}  {state}  {failures} failure(s)  {url}")
        missing = [b for b in boards if b not in {h.get("idModel") for h in hooks}]
        for board in missing:
            print(f"(none)                    board {board}  not registered")
        return 1 if missing else 0
    if args.remove:
        for hook in hooks:
            client.delete_webhook(hook["id"])
            print(f"removed {hook['id']} (board {hook['idModel']})")
        print(f"{len(hooks)} webhook(s) removed")
        return 0
    for board in boards:
        found = [h for h in hooks if h.get("idModel") == board]
        if found:
            print(f"board {board}: webhook {found[0]['id']} already there, kept")
            continue
        made = client.create_webhook(url, board, "gitlab2trello")
        print(f"board {board}: webhook {made['id']} registered -> {url}")
    store = open_store(cfg)
    store.set_meta("trello_boards", json.dumps(boards))
    return 0


def _store_ok(cfg: config_module.Config) -> str:
    """Which store, whether it answers, and its schema version (upgraded here when older)."""
    store = store_module.open_store(cfg)
    name = "PostgreSQL" if store.backend == "postgresql" else "SQLite file"
    try:
        before = store.schema_version() if store.backend == "postgresql" else None
        store.setup()
        version = store.schema_version()
    except StoreError as exc:
        raise Failure(f"{name} {store.label}: {exc}") from None
    finally:
        store.close()
    upgraded = f", upgraded from version {before}" if before not in (None, version) else ""
    state = "current" if version == SCHEMA_VERSION else f"expected {SCHEMA_VERSION}"
    return (
        f"{name} {store.label} is reachable and writable, schema version {version} ({state})"
        f"{upgraded}"
    )


def _list_ok(client: trello.Client, list_id: str) -> str:
    try:
        found = client.get_list(list_id)
    except (trello.TrelloNotFound, trello.TrelloBadRequest):
        raise Failure("no such list, or the token cannot see its board") from None
    board = client.get_board(found["idBoard"])
    return f"list {found['name']!r} on board {board['name']!r}"


def cmd_status(args: argparse.Namespace) -> int:
    cfg = load_config()
    store = open_store(cfg)
    health = store.health()
    print(f"store             {store.backend} {store.label}")
    print(f"instance          {cfg.instance}")
    print(f"pending           {health['pending']}")
    print(f"waiting for card  {health['waiting_for_card']}")
    print(f"cards mapped      {health['cards']}")
    print(f"last delivery     {when(store.meta('last_delivery_at'))}")
    print(f"last reconcile    {when(store.meta('last_reconcile_at'))}")
    dead = store.dead_letters()
    print(f"dead letters      {len(dead)}")
    for letter in dead:
        failed = when(letter["failed_at"])
        print(f"  {letter['id']:>6}  {letter['issue_key']}  {failed}  {letter['reason']}")
    if dead:
        print("\nFix the cause, then `./gitlab2trello replay --all` (or replay ID ...).")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    if not args.all and not args.ids:
        raise Failure("name dead letters to replay (ID ...) or use --all", USAGE_ERROR)
    store = open_store(load_config())
    count = store.replay(None if args.all else args.ids)
    print(f"{count} dead letter(s) queued again")
    if args.ids and count < len(args.ids):
        print("some ids were not dead letters (see `./gitlab2trello status`)", file=sys.stderr)
        return 1
    return 0


def cmd_backfill(args: argparse.Namespace) -> int:
    cfg = load_config()
    api = reconcile.api_from_config(cfg)
    if api is None:
        raise Failure("set [gitlab] url and private_token to read issues from GitLab", USAGE_ERROR)
    store = open_store(cfg)
    project = api.project(args.project)
    name = project.get("path_with_namespace", args.project)
    events = api.issues(project, state=args.state)
    with progress(f"reading {name}", total=None) as tick:
        outcome = reconcile.queue_issues(
            cfg, store, events, dry_run=args.dry_run, progress=lambda e, v: tick(f"#{e.iid} {v}")
        )
    if args.dry_run:
        for line in outcome.would:
            print(line)
        print(
            f"dry run: {outcome.seen} issue(s), {outcome.queued} to change, "
            f"{outcome.up_to_date} up to date, {outcome.ignored} ignored; nothing was changed"
        )
        return 0
    print(
        f"{outcome.seen} issue(s): {outcome.queued} queued, {outcome.up_to_date} up to date, "
        f"{outcome.ignored} ignored"
    )
    return deliver(cfg, store, outcome.delivery_ids)


def cmd_reconcile(args: argparse.Namespace) -> int:
    cfg = load_config()
    api = reconcile.api_from_config(cfg)
    if api is None or not cfg.gitlab["projects"]:
        raise Failure("set [gitlab] url, private_token and projects to reconcile", USAGE_ERROR)
    store = open_store(cfg)
    outcome = reconcile.reconcile(cfg, store, api)
    print(f"{outcome.seen} issue(s) changed since the last pass, {outcome.queued} queued")
    return deliver(cfg, store, outcome.delivery_ids)


def deliver(cfg: config_module.Config, store: Store, ids: list[int]) -> int:
    """Wait until ``ids`` are delivered: by the running service's worker, else by this process."""
    if not ids:
        return 0
    stop = threading.Event()
    runner = None
    with contextlib.ExitStack() as slot:
        if slot.enter_context(store.worker_slot(wait=False)):
            bridge = worker_module.build(cfg)
            if bridge.client is None:
                raise Failure("Trello is not configured; the issues are queued for later")
            runner = threading.Thread(target=bridge.run, args=(stop,), kwargs={"reconcile": False})
            runner.start()
            if store.shared:
                print("delivering, beside the running instances' workers", file=sys.stderr)
            else:
                print(
                    "delivering (no service is running, so this command delivers)", file=sys.stderr
                )
        else:
            print("the running service is delivering them", file=sys.stderr)
        return _wait_delivered(store, ids, stop, runner)


def _wait_delivered(
    store: Store, ids: list[int], stop: threading.Event, runner: threading.Thread | None
) -> int:
    try:
        with progress("delivering", total=len(ids)) as tick:
            done = 0
            while True:
                left = store.unfinished(ids)
                for _ in range(len(ids) - left - done):
                    tick(None)
                done = len(ids) - left
                if left == 0:
                    break
                time.sleep(0.2)
    finally:
        stop.set()
        if runner is not None:
            runner.join()
    dead = [d for d in store.dead_letters() if d["id"] in set(ids)]
    print(f"{len(ids) - len(dead)} delivered, {len(dead)} dead letter(s)")
    return 1 if dead else 0


def cmd_migrate(args: argparse.Namespace) -> int:
    """Copy the SQLite file's state into PostgreSQL (see ``migrate.py``)."""
    import migrate

    cfg = load_config()
    if cfg.postgresql:
        raise Failure(
            "[store] database is already PostgreSQL: migrate copies from the SQLite file it names",
            USAGE_ERROR,
        )
    try:
        target_cfg = config_module.load(overrides={"store": {"database": args.to}})
    except config_module.ConfigError as exc:
        raise Failure(str(exc), USAGE_ERROR) from None
    if not target_cfg.postgresql:
        raise Failure("--to takes a postgresql://user:password@host:port/dbname URL", USAGE_ERROR)
    source = open_store(cfg)
    with source.worker_slot(wait=False) as free:
        if not free:
            raise Failure(
                f"the service is running on {source.label}: stop it first "
                "(deliveries it takes meanwhile would not be copied)"
            )
        target = open_store(target_cfg)
        print(f"copying {source.label} -> {target.label}", file=sys.stderr)
        copied = migrate.copy(source, target, progress=_rows_bar)
    for table, (new, total) in copied.items():
        print(f"{table:<11} {new} copied, {total - new} already there")
    print(
        f"\ndone: set [store] database = {target.label} (with the password) and start the instances"
    )
    return 0


@contextlib.contextmanager
def progress(label: str, total: int | None) -> Iterator[Callable[[str | None], None]]:
    """A tqdm bar on a terminal; plain lines (one per item) otherwise."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        with tqdm(total=total, desc=label, unit="issue", file=sys.stderr) as bar:
            yield lambda _line: bar.update(1)
        return
    count = 0

    def line(text: str | None) -> None:
        nonlocal count
        count += 1
        suffix = f"/{total}" if total else ""
        print(f"{label}: {count}{suffix}" + (f" {text}" if text else ""), file=sys.stderr)

    yield line


@contextlib.contextmanager
def _rows_bar(label: str, total: int) -> Iterator[Callable[[int], Any]]:
    """A tqdm bar of rows on a terminal, silent otherwise (the totals are printed after)."""
    from tqdm import tqdm

    with tqdm(
        total=total, desc=label, unit="row", file=sys.stderr, disable=not sys.stderr.isatty()
    ) as bar:
        yield bar.update


# ---------------------------------------------------------------------- parser


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="gitlab2trello",
        description="Operate the GitLab-to-Trello bridge. Reads the same configuration as the "
        "service (config.ini, GITLAB2TRELLO_CONFIG, GITLAB2TRELLO_<SECTION>_<KEY>).",
    )
    sub = top.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], text: str) -> Any:
        command = sub.add_parser(name, help=text, description=text)
        command.set_defaults(func=func)
        return command

    auth = add("authorize-url", cmd_authorize_url, "print the Trello page that grants a token")
    auth.add_argument("--name", default="gitlab2trello", help="app name Trello shows")
    add("boards", cmd_boards, "list the boards the token can see, with their ids")
    lists = add("lists", cmd_lists, "list a board's lists with their ids, for config.ini")
    lists.add_argument("board", metavar="BOARD", help="board id, shortLink or board URL")
    add("check", cmd_check, "check the configuration, Trello and GitLab; exit 0 when all is well")
    add("status", cmd_status, "pending deliveries, dead letters, cards, last sync times")
    replay = add("replay", cmd_replay, "queue dead letters again once their cause is fixed")
    replay.add_argument("ids", nargs="*", type=int, metavar="ID", help="dead letter ids")
    replay.add_argument("--all", action="store_true", help="every dead letter")
    backfill = add("backfill", cmd_backfill, "make the board match a project's existing issues")
    backfill.add_argument("--project", required=True, help="project id or group/path")
    backfill.add_argument("--state", choices=("opened", "closed", "all"), default="opened")
    backfill.add_argument("--dry-run", action="store_true", help="print what would change only")
    add("reconcile", cmd_reconcile, "one reconciliation pass over [gitlab] projects now")
    hook = add("trello-webhook", cmd_trello_webhook, "register the Trello webhook of each board")
    what = hook.add_mutually_exclusive_group()
    what.add_argument("--list", action="store_true", help="show the webhooks instead")
    what.add_argument("--remove", action="store_true", help="delete them instead")
    move = add("migrate", cmd_migrate, "copy the SQLite file's state into PostgreSQL")
    move.add_argument("--to", required=True, metavar="URL", help="postgresql://user:pw@host/db")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    observe.setup_logging("warning")
    try:
        return int(args.func(args))
    except Failure as exc:
        print(f"gitlab2trello {args.command}: {exc}", file=sys.stderr)
        return exc.code
    except trello.TrelloError as exc:
        print(f"gitlab2trello {args.command}: {trello_words(exc)}", file=sys.stderr)
        return 1
    except GitLabError as exc:
        print(f"gitlab2trello {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; queued deliveries stay queued", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
