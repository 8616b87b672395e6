"""An emulator of the Trello REST API, served over real HTTP on loopback.

Integration tests and benchmarks give the bridge ``TrelloEmulator().url`` instead of
``https://api.trello.com/1``. It follows the project's Trello contract: key/token auth (query,
body or OAuth header), 24-hex ids and 8-char shortLinks, the board/list/card/label/member/comment
endpoints, 16384-character limits, plain-text errors, sliding-window rate limits with their
``x-rate-limit-*`` headers, plus injectable latency and faults (error statuses, slow answers,
connection resets, malformed bodies). Standard library only.

Two-way sync: every change made through the API records Trello actions (``createCard``,
``updateCard``, ``commentCard``, ``addMemberToCard``...) created by the token's member, listed by
``GET /1/boards/{id}/actions``; ``as_person(username)`` makes the same changes as a person on the
board. Webhooks (``POST /1/webhooks``, checked with a ``HEAD`` first) receive each action as a
signed ``{action, model, webhook}`` POST from a background thread, in order, retried
``len(webhook_retry_delays)`` times, then dropped; a 410 answer deletes the webhook.
Seeding (``add_card``, ``move_card``, ``add_label``...) sets state up silently: no action.

``python -m tests.trello_emulator --port N`` runs one with a seeded board and prints a JSON line
(url, key, token, secret, ids); ``POST /_emulator/act`` lets another process act as a person.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import hmac
import http.client
import ipaddress
import itertools
import json
import math
import re
import secrets
import string
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, NamedTuple, Self
from urllib.parse import parse_qs, urlsplit

from tests import emulator_http
from tests.emulator_http import ApiError

DEFAULT_KEY = "0123456789abcdef0123456789abcdef"
DEFAULT_TOKEN = "ATTA" + "t" * 72
MAX_TEXT = 16384
NOT_FOUND = "The requested resource was not found."
LABEL_COLORS = frozenset(
    {"yellow", "purple", "blue", "red", "green", "orange", "black", "sky", "pink", "lime"}
)
FAULT_KINDS = frozenset({"status", "slow", "reset", "malformed", "apply_then_reset"})
MEMBERS_LIMIT, MEMBERS_INTERVAL = 100, 900.0
CARD_FIELDS = (
    "id", "name", "desc", "idList", "idBoard", "closed", "idLabels", "labels", "idMembers",
    "due", "pos", "shortLink", "shortUrl", "url", "dateLastActivity", "idShort",
)  # fmt: skip
DEFAULT_CARD_FIELDS = tuple(f for f in CARD_FIELDS if f not in ("shortLink", "idShort"))
TOKEN_LIMIT_BODY = {"error": "API_TOKEN_LIMIT_EXCEEDED", "message": "Rate limit exceeded"}
KEY_LIMIT_BODY = {"error": "API_KEY_LIMIT_EXCEEDED", "message": "Rate limit exceeded"}
# Bodies Trello (or the proxy in front of it) sends with these statuses; used by "status" faults.
STATUS_BODIES: dict[int, str | dict[str, str]] = {
    400: "invalid id",
    401: "invalid token",
    404: NOT_FOUND,
    429: TOKEN_LIMIT_BODY,
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
MALFORMED_BODY = b'{"id": "5f0c1d2e3a4b5c6d7e8f9a0b", "name": "trunc'
_ID_RE = re.compile(r"[0-9a-f]{24}")
_OAUTH_RE = re.compile(r'(\w+)\s*=\s*"([^"]*)"')
_SHORT_ALPHABET = string.ascii_letters + string.digits
_JSON = "application/json; charset=utf-8"
# Ids are built like MongoDB ObjectIds (as Trello's are): creation time, a per-process random
# part, then a counter, so ids made later sort later (``since``/``before`` compare them).
_ID_PROCESS = secrets.token_hex(5)
_ID_COUNTER = itertools.count(secrets.randbelow(1 << 20))
# Webhooks: Trello waits about 30 s between attempts; the emulator's defaults are short.
WEBHOOK_RETRY_DELAYS = (0.2, 0.5, 1.0)
WEBHOOK_TIMEOUT = 5.0
WEBHOOK_DISABLE_AFTER = 1000  # consecutive dropped deliveries after which a webhook goes inactive
DUPLICATE_WEBHOOK = "A webhook with that callback, model, and token already exists"
SIGNING_MODES = frozenset({"utf-8", "binary"})
_FILTER_RE = re.compile(r"[A-Za-z]+(?::[A-Za-z]+)?")
# Person actions for ``as_person`` and ``POST /_emulator/act``.
PERSON_ACTS = (
    "create_card", "move_card", "archive", "unarchive", "rename", "set_desc", "set_due",
    "add_member", "remove_member", "add_label", "remove_label", "comment", "add_attachment",
    "delete_card",
)  # fmt: skip

# One dispatch table: (method, path after /1 with {} for an id segment, handler method name).
ROUTES = [
    ("GET", "/members/me", "_get_me"),
    ("GET", "/members/me/boards", "_get_my_boards"),
    ("GET", "/tokens/{}", "_get_token"),
    ("GET", "/boards/{}", "_get_board"),
    ("GET", "/boards/{}/lists", "_get_board_lists"),
    ("GET", "/boards/{}/labels", "_get_board_labels"),
    ("POST", "/boards/{}/labels", "_post_board_label"),
    ("GET", "/boards/{}/members", "_get_board_members"),
    ("GET", "/boards/{}/cards", "_get_board_cards"),
    ("GET", "/lists/{}", "_get_list"),
    ("GET", "/lists/{}/cards", "_get_list_cards"),
    ("POST", "/cards", "_post_card"),
    ("GET", "/cards/{}", "_get_card"),
    ("PUT", "/cards/{}", "_put_card"),
    ("DELETE", "/cards/{}", "_delete_card"),
    ("GET", "/cards/{}/actions", "_get_card_actions"),
    ("POST", "/cards/{}/actions/comments", "_post_comment"),
    ("POST", "/cards/{}/idLabels", "_post_card_label"),
    ("DELETE", "/cards/{}/idLabels/{}", "_delete_card_label"),
    ("POST", "/cards/{}/idMembers", "_post_card_member"),
    ("DELETE", "/cards/{}/idMembers/{}", "_delete_card_member"),
    ("GET", "/cards/{}/attachments", "_get_attachments"),
    ("POST", "/cards/{}/attachments", "_post_attachment"),
    ("DELETE", "/cards/{}/attachments/{}", "_delete_attachment"),
    ("GET", "/boards/{}/actions", "_get_board_actions"),
    ("GET", "/actions/{}", "_get_action"),
    ("DELETE", "/tokens/{}", "_delete_token"),
    ("GET", "/tokens/{}/webhooks", "_get_token_webhooks"),
    ("POST", "/tokens/{}/webhooks", "_post_token_webhook"),
    ("POST", "/webhooks", "_post_webhook"),
    ("GET", "/webhooks/{}", "_get_webhook"),
    ("PUT", "/webhooks/{}", "_put_webhook"),
    ("DELETE", "/webhooks/{}", "_delete_webhook"),
]
_COMPILED_ROUTES = emulator_http.compile_routes(ROUTES)


@dataclass(frozen=True)
class Call:
    """One API request as received: method, path without query (``/1/...``), status, wall time.

    ``status`` is 0 when the connection was reset instead of answered; ``done`` is the wall time
    the answer was ready (so overlapping calls can be told).
    """

    method: str
    path: str
    status: int
    t: float
    done: float = 0.0


@dataclass
class _Fault:
    kind: str
    status: int
    delay: float
    method: str | None
    path_prefix: str | None
    remaining: int | None
    until: float | None

    def live(self, now: float) -> bool:
        spent = self.remaining is not None and self.remaining <= 0
        return not spent and (self.until is None or now < self.until)

    def matches(self, method: str, path: str) -> bool:
        if self.method and self.method.upper() != method:
            return False
        return not self.path_prefix or path.startswith(self.path_prefix)


@dataclass
class _Reply(emulator_http.Reply):
    content_type: str = _JSON


class _Handler(emulator_http.EmulatorHandler):
    server_version = "TrelloEmulator"


def _json_reply(status: int, data: Any) -> _Reply:
    return _Reply(status, json.dumps(data).encode())


def _error_reply(exc: ApiError) -> _Reply:
    return emulator_http.error_reply(exc, _Reply)


def _status_error(status: int) -> ApiError:
    try:
        default = HTTPStatus(status).phrase
    except ValueError:
        default = "Error"
    return ApiError(status, STATUS_BODIES.get(status, default))


def _iso(ts: float | None = None) -> str:
    moment = datetime.fromtimestamp(time.time() if ts is None else ts, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _new_id(ts: float | None = None) -> str:
    moment = int(time.time() if ts is None else ts)
    return f"{moment:08x}{_ID_PROCESS}{next(_ID_COUNTER) & 0xFFFFFF:06x}"


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:64]


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _text(value: Any, name: str) -> str:
    text = "" if value is None else value if isinstance(value, str) else str(value)
    if len(text) > MAX_TEXT:
        raise ApiError(400, f"invalid value for {name}")
    return text


def _bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ApiError(400, f"invalid value for {name}")


def _due(value: Any) -> str | None:
    if value is None or value in ("", "null"):
        return None
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        raise ApiError(400, "invalid value for due") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return _iso(moment.timestamp())


def _id_list(value: Any) -> list[str]:
    """A comma list or a JSON array, de-duplicated in order."""
    if value is None:
        return []
    items = value if isinstance(value, list) else str(value).split(",")
    return list(dict.fromkeys(str(item).strip() for item in items if str(item).strip()))


def _limit(params: dict[str, Any], default: int = 50) -> int:
    try:
        limit = int(params.get("limit", default))
    except (TypeError, ValueError):
        limit = -1
    if not 0 <= limit <= 1000:
        raise ApiError(400, "invalid value for limit")
    return limit


def _action_bound(value: Any, name: str) -> tuple[str, str] | None:
    """``since``/``before``: an action id, or an ISO date (as Trello writes them)."""
    if value is None or value in ("", "null"):
        return None
    text = str(value)
    if _ID_RE.fullmatch(text):
        return ("id", text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, f"invalid value for {name}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return ("date", _iso(moment.timestamp()))


def _compare(action: dict[str, Any], bound: tuple[str, str]) -> int:
    """-1, 0 or 1 as ``action`` is before, at or after ``bound`` (ids sort by creation)."""
    mine = action["id"] if bound[0] == "id" else action["date"]
    return (mine > bound[1]) - (mine < bound[1])


def _update_key(field: str, was: Any, now: Any) -> str:
    """The ``display.translationKey`` Trello gives an updateCard of ``field``."""
    if field == "due":
        if was is None:
            return "action_added_a_due_date"
        return "action_removed_a_due_date" if now is None else "action_changed_a_due_date"
    if field == "closed":
        return "action_archived_card" if now else "action_sent_card_to_board"
    if field == "pos":
        return "action_moved_card_higher" if now < was else "action_moved_card_lower"
    return {"name": "action_renamed_card", "desc": "action_changed_description_of_card"}[field]


def _kind_matches(kind: str, action: dict[str, Any]) -> bool:
    """``updateCard`` matches every updateCard; ``updateCard:idList`` only moves, and so on."""
    name, _, field = kind.partition(":")
    if action["type"] != name:
        return False
    return not field or field in (action["data"].get("old") or {})


def _secret(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("secret must be a non-empty string")
    return value


def _delays(value: Any) -> tuple[float, ...]:
    delays = tuple(float(delay) for delay in value)
    if any(not math.isfinite(delay) or delay < 0 for delay in delays):
        raise ValueError("webhook_retry_delays must be seconds >= 0")
    return delays


def _signing_mode(value: Any) -> str:
    if value not in SIGNING_MODES:
        raise ValueError(f"webhook_signing must be one of {sorted(SIGNING_MODES)}")
    return str(value)


def _token_route(handler: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a handler that gets the caller's token (``token=``) and takes the state lock itself,
    because it calls out (a webhook's HEAD check) and must not hold the lock meanwhile."""
    handler.token_route = True  # type: ignore[attr-defined]
    return handler


def _initials(member: dict[str, Any]) -> str:
    words = (member.get("fullName") or "").split() or [member["username"]]
    return "".join(word[0] for word in words)[:4].upper()


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _callback_url(value: Any) -> str:
    url = value if isinstance(value, str) else ""
    split = urlsplit(url)
    if split.scheme not in ("http", "https") or not split.hostname or len(url) > 16384:
        raise ApiError(400, "invalid value for callbackURL")
    return url


def call_out(
    method: str, url: str, body: bytes, headers: dict[str, str], timeout: float
) -> tuple[int, str]:
    """One request from the emulator to a callback: ``(status, "")`` or ``(0, why not)``.

    Only loopback hosts are called; any other host counts as unreachable."""
    split = urlsplit(url)
    if not _is_loopback(split.hostname):
        return 0, "no answer (only loopback hosts are called)"
    connection_class = (
        http.client.HTTPSConnection if split.scheme == "https" else http.client.HTTPConnection
    )
    target = (split.path or "/") + (f"?{split.query}" if split.query else "")
    conn = connection_class(split.hostname or "", split.port, timeout=timeout)
    try:
        conn.request(method, target, body=body or None, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status, ""
    except ConnectionRefusedError:
        return 0, "connection refused"
    except TimeoutError:
        return 0, "timeout"
    except (OSError, http.client.HTTPException) as exc:
        return 0, f"connection error ({type(exc).__name__})"
    finally:
        conn.close()


def sign_webhook(secret: str, body: bytes, callback_url: str, mode: str = "utf-8") -> str:
    """``X-Trello-Webhook``: base64(HMAC-SHA1(secret, body + callbackURL)).

    ``mode="utf-8"`` signs the UTF-8 bytes; ``"binary"`` signs each character's code point & 0xFF,
    the "binary string" Trello's archived docs warn about."""
    if mode == "binary":
        message = bytes(ord(char) & 0xFF for char in body.decode("utf-8") + callback_url)
    else:
        message = body + callback_url.encode("utf-8")
    return base64.b64encode(hmac.new(secret.encode(), message, hashlib.sha1).digest()).decode()


class Delivery(NamedTuple):
    """One attempt to deliver an action to a webhook; ``status`` is 0 when nothing answered."""

    action_id: str
    type: str
    status: int
    attempt: int


@dataclass
class _Job:
    """One action on its way to one webhook: the body is built (and signed) once, on record."""

    seq: int
    webhook_id: str
    action_id: str
    type: str
    url: str
    body: bytes
    signature: str
    attempt: int = 1
    due: float = 0.0


class Person:
    """A member of the board changing things in Trello's UI: the same state changes and
    actions as the REST calls, created by that member. Card changes return the card as it is
    afterwards; ``comment`` returns the commentCard action, ``add_attachment`` the attachment."""

    def __init__(self, emulator: TrelloEmulator, member: dict[str, Any]) -> None:
        self._emu = emulator
        self.member = dict(member)
        self.id = member["id"]
        self.username = member["username"]

    def __repr__(self) -> str:
        return f"Person({self.username!r})"

    def create_card(self, list_id: str, name: str, desc: str = "", **fields: Any) -> dict:
        return self._emu._person_create_card(self.id, list_id, name, desc, fields)

    def move_card(self, card_id: str, list_id: str, pos: Any = None) -> dict:
        changes: dict[str, Any] = {"idList": list_id}
        if pos is not None:
            changes["pos"] = pos
        return self._put(card_id, changes)

    def archive(self, card_id: str) -> dict:
        return self._put(card_id, {"closed": True})

    def unarchive(self, card_id: str) -> dict:
        return self._put(card_id, {"closed": False})

    def rename(self, card_id: str, name: str) -> dict:
        return self._put(card_id, {"name": name})

    def set_desc(self, card_id: str, desc: str) -> dict:
        return self._put(card_id, {"desc": desc})

    def set_due(self, card_id: str, due: str | None) -> dict:
        return self._put(card_id, {"due": due})

    def add_member(self, card_id: str, username: str) -> dict:
        return self._card_op(card_id, "_post_card_member", member=username)

    def remove_member(self, card_id: str, username: str) -> dict:
        return self._card_op(card_id, "_delete_card_member", member=username)

    def add_label(self, card_id: str, label_id: str) -> dict:
        return self._card_op(card_id, "_post_card_label", value=label_id)

    def remove_label(self, card_id: str, label_id: str) -> dict:
        return self._card_op(card_id, "_delete_card_label", value=label_id)

    def comment(self, card_id: str, text: str) -> dict:
        return self._emu._person_call(self.id, card_id, "_post_comment", {"text": text})

    def add_attachment(self, card_id: str, url: str, name: str = "") -> dict:
        params = {"url": url, **({"name": name} if name else {})}
        return self._emu._person_call(self.id, card_id, "_post_attachment", params)

    def delete_card(self, card_id: str) -> dict:
        return self._emu._person_call(self.id, card_id, "_delete_card", {})

    def _put(self, card_id: str, changes: dict[str, Any]) -> dict:
        return self._emu._person_call(self.id, card_id, "_put_card", changes)

    def _card_op(self, card_id: str, handler: str, **what: str) -> dict:
        return self._emu._person_card_op(self.id, card_id, handler, what)


class TrelloEmulator(emulator_http.LoopbackEmulator):
    """A Trello REST API on loopback; seed and inspect its state, inject latency and faults."""

    _handler_class = _Handler
    _thread_name = "trello-emulator"

    def __init__(
        self,
        *,
        key: str = DEFAULT_KEY,
        token: str = DEFAULT_TOKEN,
        latency: float = 0.0,
        rate_limit: int = 100,
        rate_interval: float = 10.0,
        key_rate_limit: int = 300,
        host: str = "127.0.0.1",
        port: int = 0,
        secret: str | None = None,
    ) -> None:
        self.key = key
        self.token = token
        # The API key's secret, which signs webhook deliveries (64 hex, like Trello's).
        self.secret = secret or secrets.token_hex(32)
        # Waits between the attempts of a failed delivery: one retry per entry.
        self.webhook_retry_delays: tuple[float, ...] = WEBHOOK_RETRY_DELAYS
        # Seconds a callback has to answer a HEAD check or a delivery.
        self.webhook_timeout = WEBHOOK_TIMEOUT
        # "utf-8" (the body's bytes) or "binary" (each character's low 8 bits): see sign_webhook.
        self.webhook_signing = "utf-8"
        self._host = host
        self._port = port
        self._latency = latency
        self._rate_limit = rate_limit
        self._rate_interval = rate_interval
        self._key_rate_limit = key_rate_limit
        self._lock = threading.RLock()
        self._boards: dict[str, dict[str, Any]] = {}
        self._board_members: dict[str, list[str]] = {}
        self._lists: dict[str, dict[str, Any]] = {}
        self._cards: dict[str, dict[str, Any]] = {}
        self._labels: dict[str, dict[str, Any]] = {}
        self._members: dict[str, dict[str, Any]] = {}
        self._comments: dict[str, list[dict[str, Any]]] = {}
        self._short_links: dict[str, str] = {}
        self._next_id_short: dict[str, int] = {}
        self._tokens: dict[str, tuple[frozenset[str], str]] = {}
        self._windows: dict[tuple[str, str], deque[float]] = {}
        self._calls: list[Call] = []
        self._faults: list[_Fault] = []
        self._actions: list[dict[str, Any]] = []
        self._action_index: dict[str, dict[str, Any]] = {}
        self._board_actions: dict[str, list[dict[str, Any]]] = {}
        self._card_actions: dict[str, list[dict[str, Any]]] = {}
        self._attachments: dict[str, list[dict[str, Any]]] = {}
        self._webhooks: dict[str, dict[str, Any]] = {}
        self._webhook_tokens: dict[str, str] = {}
        self._queues: dict[str, deque[_Job]] = {}
        self._sending: _Job | None = None
        self._deliveries: list[Delivery] = []
        self._job_seq = itertools.count()
        self._cond = threading.Condition(self._lock)
        self._dispatcher: threading.Thread | None = None
        self._dispatch_stop = False
        self.add_token(token)

    # ----------------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._port}/1"

    def start(self) -> Self:
        """Serve the API, and start the thread that delivers webhooks."""
        super().start()
        with self._lock:
            if self._dispatcher is None:
                self._dispatch_stop = False
                self._dispatcher = threading.Thread(
                    target=self._dispatch_loop, name=f"trello-webhooks-{self._port}", daemon=True
                )
                self._dispatcher.start()
        return self

    def stop(self) -> None:
        """Stop serving; deliveries still queued are dropped."""
        super().stop()
        with self._cond:
            self._dispatch_stop = True
            self._cond.notify_all()
            thread, self._dispatcher = self._dispatcher, None
        if thread is not None:
            thread.join(timeout=self.webhook_timeout + 1)

    # ----------------------------------------------------------------- seeding
    def _not_found(self, exc: ApiError) -> bool:
        return exc.status == 404 or exc.body == "invalid id"

    def _short_link(self, object_id: str) -> str:
        while True:
            short = "".join(secrets.choice(_SHORT_ALPHABET) for _ in range(8))
            if short not in self._short_links:
                self._short_links[short] = object_id
                return short

    def _member_named(self, username: str, full_name: str = "") -> dict[str, Any]:
        for member in self._members.values():
            if member["username"] == username:
                return member
        member = {"id": _new_id(), "username": username, "fullName": full_name}
        self._members[member["id"]] = member
        return member

    def _join(self, board_id: str, member_id: str) -> None:
        if member_id not in self._board_members[board_id]:
            self._board_members[board_id].append(member_id)

    def add_token(
        self, token: str, scopes: tuple[str, ...] = ("read", "write"), username: str = "bridge"
    ) -> None:
        """Accept ``token``; its member joins every board."""
        with self._lock:
            member = self._member_named(username, username.title())
            self._tokens[token] = (frozenset(scopes), member["id"])
            for board_id in self._boards:
                self._join(board_id, member["id"])

    def add_board(self, name: str = "Board") -> dict:
        with self._lock:
            board_id = _new_id()
            short = self._short_link(board_id)
            board = {"id": board_id, "name": name, "shortLink": short, "closed": False}
            board["url"] = f"https://trello.com/b/{short}/{_slug(name)}"
            self._boards[board_id] = board
            self._board_members[board_id] = []
            self._next_id_short[board_id] = 1
            for _scopes, member_id in self._tokens.values():
                self._join(board_id, member_id)
            return dict(board)

    def add_list(self, board_id: str, name: str) -> dict:
        with self._python_api():
            board = self._resolve(self._boards, board_id, short_links=True)
            count = sum(1 for lst in self._lists.values() if lst["idBoard"] == board["id"])
            lst = {"id": _new_id(), "name": name, "idBoard": board["id"], "closed": False}
            lst["pos"] = 16384 * (count + 1)
            self._lists[lst["id"]] = lst
            return dict(lst)

    def add_member(self, board_id: str, username: str, full_name: str = "") -> dict:
        with self._python_api():
            board = self._resolve(self._boards, board_id, short_links=True)
            member = self._member_named(username, full_name)
            self._join(board["id"], member["id"])
            return dict(member)

    def add_label(self, board_id: str, name: str, color: str | None) -> dict:
        with self._python_api():
            return self._post_board_label({"name": name, "color": color}, {}, board_id)

    def add_card(self, list_id: str, name: str, desc: str = "", **fields: Any) -> dict:
        """A card made by hand in the Trello UI: not recorded as an API call."""
        with self._python_api():
            return self._post_card({**fields, "idList": list_id, "name": name, "desc": desc}, {})

    def move_card(self, card_id: str, list_id: str) -> None:
        """A card moved behind the API's back: no API call, no action (``as_person`` makes
        a move that records its action and reaches webhooks)."""
        with self._python_api():
            self._put_card({"idList": list_id}, {}, card_id)

    # ----------------------------------------------------------------- people
    def as_person(self, username: str) -> Person:
        """Act as the member ``username`` (``add_member`` them to the board first)."""
        with self._lock:
            return Person(self, self._member_by_username(username))

    def revoke_token(self, token: str) -> None:
        """Revoke ``token``: it stops authenticating and its webhooks are deleted."""
        with self._python_api():
            self._revoke(token)

    # ----------------------------------------------------------------- webhooks (Python side)
    def add_webhook(
        self,
        callback_url: str,
        id_model: str,
        description: str = "",
        *,
        token: str | None = None,
        active: bool = True,
    ) -> dict:
        """What ``POST /1/webhooks`` does (the HEAD check included), for ``token``."""
        params = {
            "callbackURL": callback_url,
            "idModel": id_model,
            "description": description,
            "active": active,
        }
        try:
            return self._create_webhook(params, self.token if token is None else token)
        except ApiError as exc:
            raise ValueError(exc.body) from exc

    def webhooks(self, token: str | None = None) -> list[dict]:
        """Every webhook, or those of ``token``."""
        with self._lock:
            return [
                dict(hook)
                for webhook_id, hook in self._webhooks.items()
                if token is None or self._webhook_tokens[webhook_id] == token
            ]

    def webhook(self, webhook_id: str) -> dict:
        with self._lock:
            if webhook_id not in self._webhooks:
                raise KeyError(webhook_id)
            return dict(self._webhooks[webhook_id])

    def delete_webhook(self, webhook_id: str) -> None:
        with self._lock:
            if webhook_id not in self._webhooks:
                raise KeyError(webhook_id)
            self._remove_webhook(webhook_id)

    @property
    def webhook_deliveries(self) -> list[Delivery]:
        """Every delivery attempt so far, in order: (action id, type, status or 0, attempt)."""
        with self._lock:
            return list(self._deliveries)

    def reset_webhook_deliveries(self) -> None:
        with self._lock:
            self._deliveries.clear()

    def wait_webhooks_idle(self, timeout: float = 10.0) -> bool:
        """Wait until no delivery is queued, being retried or in flight; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queues or self._sending is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def redeliver(self, action_id: str) -> int:
        """Send ``action_id`` again to every webhook that sees it (Trello delivers at least
        once: the same action can arrive twice). Returns how many deliveries were queued."""
        with self._lock:
            action = self._action_index.get(action_id)
            if action is None:
                raise KeyError(action_id)
            return self._enqueue(action)

    # ----------------------------------------------------------------- inspection
    def card(self, card_id: str) -> dict:
        with self._python_api():
            return self._card_view(self._resolve(self._cards, card_id, short_links=True))

    def cards(
        self,
        *,
        board_id: str | None = None,
        list_id: str | None = None,
        include_closed: bool = True,
    ) -> list[dict]:
        with self._lock:
            return [
                self._card_view(card)
                for card in self._sorted_cards()
                if (board_id is None or card["idBoard"] == board_id)
                and (list_id is None or card["idList"] == list_id)
                and (include_closed or not card["closed"])
            ]

    def comments(self, card_id: str) -> list[dict]:
        with self._python_api():
            card = self._resolve(self._cards, card_id, short_links=True)
            return [
                {"id": a["id"], "text": a["data"]["text"], "date": a["date"]}
                for a in self._comments[card["id"]]
            ]

    def actions(self, board_id: str | None = None, card_id: str | None = None) -> list[dict]:
        """Recorded actions, oldest first, optionally of one board or one card."""
        with self._lock:
            if card_id is not None:
                chosen = self._card_actions.get(card_id, [])
            elif board_id is not None:
                chosen = self._board_actions.get(board_id, [])
            else:
                chosen = self._actions
            return [
                json.loads(json.dumps(action))
                for action in chosen
                if board_id is None or action["data"]["board"]["id"] == board_id
            ]

    def attachments(self, card_id: str) -> list[dict]:
        with self._python_api():
            card = self._resolve(self._cards, card_id, short_links=True)
            return [dict(att) for att in self._attachments[card["id"]]]

    def labels(self, board_id: str) -> list[dict]:
        with self._python_api():
            board = self._resolve(self._boards, board_id, short_links=True)
            return [dict(lab) for lab in self._labels.values() if lab["idBoard"] == board["id"]]

    def state(self) -> dict:
        """Everything, closed cards included, as plain JSON-ready data."""
        with self._lock:
            return {
                "boards": [
                    {**board, "idMembers": list(self._board_members[board_id])}
                    for board_id, board in self._boards.items()
                ],
                "lists": [dict(lst) for lst in self._lists.values()],
                "cards": [self._card_view(card) for card in self._sorted_cards()],
                "labels": [dict(lab) for lab in self._labels.values()],
                "members": [dict(member) for member in self._members.values()],
                "comments": [
                    {"id": a["id"], "idCard": cid, "text": a["data"]["text"], "date": a["date"]}
                    for cid, actions in self._comments.items()
                    for a in actions
                ],
                "attachments": [
                    {**att, "idCard": cid}
                    for cid, atts in self._attachments.items()
                    for att in atts
                ],
                "webhooks": [dict(hook) for hook in self._webhooks.values()],
            }

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def count_calls(
        self, method: str | None = None, path_prefix: str | None = None, status: int | None = None
    ) -> int:
        """Count recorded calls; ``path_prefix`` may be given with or without the ``/1``."""
        if path_prefix is not None and not (path_prefix == "/1" or path_prefix.startswith("/1/")):
            path_prefix = "/1" + path_prefix
        return sum(
            1
            for call in self.calls
            if (method is None or call.method == method.upper())
            and (path_prefix is None or call.path.startswith(path_prefix))
            and (status is None or call.status == status)
        )

    def reset_calls(self) -> None:
        with self._lock:
            self._calls.clear()

    # ----------------------------------------------------------------- behaviour knobs
    def set_latency(self, seconds: float) -> None:
        with self._lock:
            self._latency = float(seconds)

    def set_rate_limit(self, limit: int, interval: float = 10.0) -> None:
        with self._lock:
            self._rate_limit, self._rate_interval = int(limit), float(interval)

    def fault(
        self,
        kind: str,
        *,
        count: int | None = None,
        seconds: float | None = None,
        status: int = 503,
        delay: float = 0.0,
        method: str | None = None,
        path_prefix: str | None = None,
    ) -> None:
        """Inject ``kind`` into the next ``count`` matching requests, or for ``seconds``.

        With neither given it applies once. ``path_prefix`` is the path after ``/1``.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {sorted(FAULT_KINDS)}")
        if count is None and seconds is None:
            count = 1
        if path_prefix and (path_prefix == "/1" or path_prefix.startswith("/1/")):
            path_prefix = path_prefix[2:]
        until = None if seconds is None else time.monotonic() + float(seconds)
        with self._lock:
            self._faults.append(
                _Fault(kind, int(status), float(delay), method, path_prefix, count, until)
            )

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    # ----------------------------------------------------------------- request pipeline
    def _handle(self, method: str, raw_path: str, headers: Any, body: bytes) -> _Reply:
        split = urlsplit(raw_path)
        if split.path.startswith("/_emulator/"):
            return self._control(method, split.path, body)
        received = time.time()
        reply = self._handle_api(method, split.path, split.query, headers, body)
        with self._lock:
            status = 0 if reply.reset else reply.status
            self._calls.append(Call(method, split.path, status, received, time.time()))
        return reply

    def _handle_api(self, method: str, path: str, query: str, headers: Any, body: bytes) -> _Reply:
        if path != "/1" and not path.startswith("/1/"):
            return _error_reply(ApiError(404, f"Cannot {method} {path}"))
        api_path = path[2:].rstrip("/") or "/"
        with self._lock:
            latency = self._latency
            fault = self._take_fault(method, api_path)
        if latency > 0:
            time.sleep(latency)
        kind = fault.kind if fault else None
        if fault and kind == "slow":
            time.sleep(fault.delay)
        if kind == "reset":
            return _Reply(0, reset=True)
        if kind == "malformed":
            return _Reply(200, MALFORMED_BODY)
        if fault and kind == "status":
            reply = _error_reply(_status_error(fault.status))
            with contextlib.suppress(ApiError), self._lock:
                params = self._params(query, headers, body)
                key, token, _scopes, _me = self._authenticate(params, headers)
                reply.headers = self._rate_headers(key, token, time.monotonic())
            return reply
        reply = self._serve(method, api_path, query, headers, body)
        if kind == "apply_then_reset":
            return _Reply(reply.status, reset=True)
        return reply

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        now = time.monotonic()
        self._faults = [f for f in self._faults if f.live(now)]
        for fault in self._faults:
            if fault.matches(method, path):
                if fault.remaining is not None:
                    fault.remaining -= 1
                return fault
        return None

    def _serve(self, method: str, path: str, query: str, headers: Any, body: bytes) -> _Reply:
        try:
            params = self._params(query, headers, body)
            with self._lock:
                key, token, scopes, me = self._authenticate(params, headers)
                limited, rate_headers = self._admit(key, token, path)
        except ApiError as exc:
            return _error_reply(exc)
        try:
            if limited is not None:
                raise limited
            if method != "GET" and "write" not in scopes:
                raise ApiError(401, "unauthorized permission requested")
            handler, args = self._route(method, path)
            if getattr(handler, "token_route", False):
                reply = _json_reply(200, handler(params, me, *args, token=token))
            else:
                with self._lock:
                    reply = _json_reply(200, handler(params, me, *args))
        except ApiError as exc:
            reply = _error_reply(exc)
        reply.headers.update(rate_headers)
        return reply

    @staticmethod
    def _params(query: str, headers: Any, body: bytes) -> dict[str, Any]:
        params: dict[str, Any] = {k: v[-1] for k, v in parse_qs(query, True).items()}
        if not body.strip():
            return params
        content_type = (headers.get("Content-Type") or "").lower()
        if "json" in content_type:
            try:
                data = json.loads(body)
            except ValueError:
                raise ApiError(400, "invalid JSON") from None
            if not isinstance(data, dict):
                raise ApiError(400, "invalid JSON")
            params.update(data)
        elif "form-urlencoded" in content_type or not content_type:
            text = body.decode("utf-8", "replace")
            params.update({k: v[-1] for k, v in parse_qs(text, True).items()})
        return params

    def _authenticate(
        self, params: dict[str, Any], headers: Any
    ) -> tuple[str, str, frozenset[str], dict[str, Any]]:
        key, token = params.get("key"), params.get("token")
        header = headers.get("Authorization") or ""
        if header[:5].lower() == "oauth":
            oauth = dict(_OAUTH_RE.findall(header))
            key = key if key is not None else oauth.get("oauth_consumer_key")
            token = token if token is not None else oauth.get("oauth_token")
        if not key or str(key) != self.key:
            raise ApiError(401, "invalid key")
        if not token:
            raise ApiError(401, {"message": "missing scopes"})
        entry = self._tokens.get(str(token))
        if entry is None:
            raise ApiError(401, "invalid token")
        scopes, member_id = entry
        return str(key), str(token), scopes, self._members[member_id]

    def _window(self, name: tuple[str, str], now: float, interval: float) -> deque[float]:
        window = self._windows.setdefault(name, deque())
        while window and window[0] <= now - interval:
            window.popleft()
        return window

    def _rate_headers(self, key: str, token: str, now: float) -> dict[str, str]:
        interval_ms = str(int(self._rate_interval * 1000))
        headers = {}
        for scope, name, limit in (
            ("token", token, self._rate_limit),
            ("key", key, self._key_rate_limit),
        ):
            used = len(self._window((scope, name), now, self._rate_interval))
            headers[f"x-rate-limit-api-{scope}-interval-ms"] = interval_ms
            headers[f"x-rate-limit-api-{scope}-max"] = str(limit)
            headers[f"x-rate-limit-api-{scope}-remaining"] = str(max(0, limit - used))
        return headers

    def _admit(self, key: str, token: str, path: str) -> tuple[ApiError | None, dict[str, str]]:
        """Count one request in the sliding windows, or say which limit refuses it."""
        now = time.monotonic()
        windows = [
            self._window(("token", token), now, self._rate_interval),
            self._window(("key", key), now, self._rate_interval),
        ]
        if path.startswith("/members"):
            windows.append(self._window(("members", token), now, MEMBERS_INTERVAL))
        error = None
        if len(windows[0]) >= self._rate_limit:
            error = ApiError(429, TOKEN_LIMIT_BODY)
        elif len(windows[1]) >= self._key_rate_limit:
            error = ApiError(429, KEY_LIMIT_BODY)
        elif len(windows) == 3 and len(windows[2]) >= MEMBERS_LIMIT:
            error = ApiError(429, TOKEN_LIMIT_BODY)
        else:
            for window in windows:
                window.append(now)
        return error, self._rate_headers(key, token, now)

    def _route(self, method: str, path: str) -> tuple[Any, tuple[str, ...]]:
        for route_method, pattern, name in _COMPILED_ROUTES:
            match = pattern.match(path)
            if match and route_method == method:
                return getattr(self, name), match.groups()
        raise ApiError(404, f"Cannot {method} /1{path}")

    # ----------------------------------------------------------------- control endpoints
    def _control(self, method: str, path: str, body: bytes) -> _Reply:
        """Unauthenticated, unlimited and unrecorded endpoints for other processes."""
        try:
            data = json.loads(body) if body.strip() else {}
            if not isinstance(data, dict):
                raise ValueError("expected a JSON object")
            if (method, path) == ("GET", "/_emulator/state"):
                return _json_reply(200, self.state())
            if (method, path) == ("GET", "/_emulator/calls"):
                return _json_reply(200, [asdict(call) for call in self.calls])
            if (method, path) == ("GET", "/_emulator/webhooks"):
                deliveries = [list(d) for d in self.webhook_deliveries]
                return _json_reply(200, {"webhooks": self.webhooks(), "deliveries": deliveries})
            if (method, path) == ("POST", "/_emulator/act"):
                return _json_reply(200, {"ok": True, "result": self._act(**data)})
            if (method, path) == ("POST", "/_emulator/add_member"):
                member = self.add_member(
                    data.get("board_id"), data.get("username"), data.get("full_name", "")
                )
                return _json_reply(200, {"ok": True, "result": member})
            if (method, path) == ("POST", "/_emulator/wait_webhooks_idle"):
                idle = self.wait_webhooks_idle(float(data.get("timeout", 10.0)))
                return _json_reply(200, {"ok": True, "idle": idle})
            if (method, path) == ("POST", "/_emulator/redeliver"):
                queued = self.redeliver(str(data.get("action_id")))
                return _json_reply(200, {"ok": True, "queued": queued})
            if (method, path) == ("POST", "/_emulator/reset_calls"):
                self.reset_calls()
            elif (method, path) == ("POST", "/_emulator/config"):
                self._configure(**data)
            elif (method, path) == ("POST", "/_emulator/fault"):
                self.fault(**data)
            elif (method, path) == ("POST", "/_emulator/clear_faults"):
                self.clear_faults()
            else:
                return _error_reply(ApiError(404, f"Cannot {method} {path}"))
        except KeyError as exc:
            return _error_reply(ApiError(404, f"not found: {exc.args[0] if exc.args else ''}"))
        except (TypeError, ValueError) as exc:
            return _error_reply(ApiError(400, str(exc)))
        return _json_reply(200, {"ok": True})

    def _act(self, username: Any = None, what: Any = None, args: Any = None) -> Any:
        """``POST /_emulator/act``: ``{username, what, args}`` runs ``as_person(username).what``
        with ``args`` (a list of positional arguments or an object of keyword arguments)."""
        if not isinstance(username, str) or what not in PERSON_ACTS:
            raise TypeError(f"expected a username and what, one of {list(PERSON_ACTS)}")
        method = getattr(self.as_person(username), what)
        if isinstance(args, dict):
            return method(**args)
        return method(*(args or []))

    def _configure(self, **settings: Any) -> None:
        """Apply ``{latency, rate_limit, rate_interval, key_rate_limit, secret,
        webhook_retry_delays, webhook_timeout, webhook_signing}`` (any subset)."""
        casts: dict[str, tuple[str, Callable[[Any], Any]]] = {
            "latency": ("_latency", float),
            "rate_limit": ("_rate_limit", int),
            "rate_interval": ("_rate_interval", float),
            "key_rate_limit": ("_key_rate_limit", int),
            "secret": ("secret", _secret),
            "webhook_retry_delays": ("webhook_retry_delays", _delays),
            "webhook_timeout": ("webhook_timeout", float),
            "webhook_signing": ("webhook_signing", _signing_mode),
        }
        unknown = set(settings) - set(casts)
        if unknown:
            raise TypeError(f"unknown settings: {sorted(unknown)}")
        with self._lock:
            for name, value in settings.items():
                attr, cast = casts[name]
                setattr(self, attr, cast(value))

    # ----------------------------------------------------------------- state access
    def _resolve(self, table: dict[str, dict], ref: str, *, short_links: bool) -> dict[str, Any]:
        if _ID_RE.fullmatch(ref):
            if ref not in table:
                raise ApiError(404, NOT_FOUND)
            return table[ref]
        if short_links and self._short_links.get(ref) in table:
            return table[self._short_links[ref]]
        raise ApiError(400, "invalid id")

    def _sorted_cards(self) -> list[dict[str, Any]]:
        def order(card: dict[str, Any]) -> tuple[str, float, float]:
            return (card["idBoard"], self._lists[card["idList"]]["pos"], card["pos"])

        return sorted(self._cards.values(), key=order)

    def _card_view(self, card: dict[str, Any], fields: tuple[str, ...] = CARD_FIELDS) -> dict:
        short_url = f"https://trello.com/c/{card['shortLink']}"
        full = {
            **card,
            "idLabels": list(card["idLabels"]),
            "idMembers": list(card["idMembers"]),
            "labels": [dict(self._labels[i]) for i in card["idLabels"]],
            "pos": _number(card["pos"]),
            "shortUrl": short_url,
            "url": f"{short_url}/{card['idShort']}-{_slug(card['name'])}",
        }
        return {name: full[name] for name in fields}

    @staticmethod
    def _fields(params: dict[str, Any], default: tuple[str, ...]) -> tuple[str, ...]:
        raw = params.get("fields")
        if raw is None:
            return default
        if raw == "all":
            return CARD_FIELDS
        names = tuple(dict.fromkeys(["id", *_id_list(raw)]))
        if any(name not in CARD_FIELDS for name in names):
            raise ApiError(400, "invalid value for fields")
        return names

    def _position(self, raw: Any, list_id: str, card_id: str | None) -> float:
        others = [
            c["pos"]
            for c in self._cards.values()
            if c["idList"] == list_id and c["id"] != card_id and not c["closed"]
        ]
        if raw == "top":
            return min(others) / 2 if others else 16384.0
        if raw == "bottom":
            return max(others) + 16384.0 if others else 16384.0
        try:
            pos = float(raw)
        except (TypeError, ValueError):
            pos = -1.0
        if not math.isfinite(pos) or pos < 0 or isinstance(raw, bool):
            raise ApiError(400, "invalid value for pos")
        return pos

    def _apply_card_fields(self, card: dict[str, Any], p: dict[str, Any]) -> dict[str, Any]:
        """Validate every given field first, then write them all: a refused request changes
        nothing. Fields not given stay as they are. Returns the old values of what changed."""
        changes: dict[str, Any] = {}
        for name in ("name", "desc"):
            if name in p:
                changes[name] = _text(p[name], name)
        if "idList" in p and p["idList"] != card["idList"]:
            lst = self._lists.get(str(p["idList"]))
            if lst is None:
                raise ApiError(400, "invalid value for idList")
            changes.update(idList=lst["id"], idBoard=lst["idBoard"])
        board_id = changes.get("idBoard", card["idBoard"])
        if "closed" in p:
            changes["closed"] = _bool(p["closed"], "closed")
        if "due" in p:
            changes["due"] = _due(p["due"])
        label_ids = _id_list(p["idLabels"]) if "idLabels" in p else card["idLabels"]
        member_ids = _id_list(p["idMembers"]) if "idMembers" in p else card["idMembers"]
        if board_id != card["idBoard"]:  # moved to another board: drop what that board lacks
            label_ids = [i for i in label_ids if self._labels[i]["idBoard"] == board_id]
            member_ids = [i for i in member_ids if i in self._board_members[board_id]]
        if any(self._labels.get(i, {}).get("idBoard") != board_id for i in label_ids):
            raise ApiError(400, "invalid value for idLabels")
        if any(i not in self._board_members[board_id] for i in member_ids):
            raise ApiError(400, "invalid value for idMembers")
        changes.update(idLabels=label_ids, idMembers=member_ids)
        if "pos" in p:
            list_id = changes.get("idList", card["idList"])
            changes["pos"] = self._position(p["pos"], list_id, card["id"])
        old = {name: card.get(name) for name, value in changes.items() if card.get(name) != value}
        card.update(changes)
        card["dateLastActivity"] = _iso()
        return old

    # ----------------------------------------------------------------- actions
    @staticmethod
    def _member_view(member: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": member["id"],
            "username": member["username"],
            "fullName": member.get("fullName", ""),
            "initials": _initials(member),
        }

    def _member_by_username(self, username: str) -> dict[str, Any]:
        for member in self._members.values():
            if member["username"] == username:
                return member
        raise KeyError(f"no member named {username!r}")

    def _board_ref(self, board_id: str) -> dict[str, Any]:
        board = self._boards[board_id]
        return {"id": board["id"], "name": board["name"], "shortLink": board["shortLink"]}

    def _list_ref(self, list_id: str) -> dict[str, Any]:
        return {"id": list_id, "name": self._lists[list_id]["name"]}

    @staticmethod
    def _card_ref(card: dict[str, Any], **extra: Any) -> dict[str, Any]:
        ref = {k: card[k] for k in ("id", "name", "idShort", "shortLink", "idList")}
        return {**ref, **extra}

    def _record(
        self,
        me: dict[str, Any],
        kind: str,
        key: str,
        data: dict[str, Any],
        member: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Record one action by ``me`` and queue it for the webhooks that see it."""
        now = time.time()
        entities: dict[str, Any] = {}
        card = data.get("card")
        if card:
            entities["card"] = {
                "type": "card", "id": card["id"], "shortLink": card.get("shortLink"),
                "text": card.get("name", ""),
            }  # fmt: skip
        for name in ("list", "listBefore", "listAfter"):
            if name in data:
                entities[name] = {
                    "type": "list",
                    "id": data[name]["id"],
                    "text": data[name]["name"],
                }
        for name, who in (("member", member), ("memberCreator", me)):
            if who is not None:
                entities[name] = {
                    "type": "member", "id": who["id"], "username": who["username"],
                    "text": who.get("fullName", ""),
                }  # fmt: skip
        action = {
            "id": _new_id(now),
            "idMemberCreator": me["id"],
            "type": kind,
            "date": _iso(now),
            "data": data,
            "appCreator": None,
            "limits": {},
            "display": {"translationKey": key, "entities": entities},
            "memberCreator": self._member_view(me),
        }
        if member is not None:
            action["member"] = self._member_view(member)
        self._actions.append(action)
        self._action_index[action["id"]] = action
        self._board_actions.setdefault(data["board"]["id"], []).append(action)
        if card:
            self._card_actions.setdefault(card["id"], []).append(action)
        self._enqueue(action)
        return action

    def _record_card_changes(
        self, me: dict[str, Any], card: dict[str, Any], old: dict[str, Any]
    ) -> None:
        """The actions a change of ``card`` (``old`` = previous values) makes, one per concern,
        the way Trello records them. Nothing when ``me`` is empty (seeding)."""
        if not me or not old:
            return
        board = self._board_ref(card["idBoard"])
        where = {"board": board, "list": self._list_ref(card["idList"])}
        if "idBoard" in old:
            source = self._board_ref(old["idBoard"])
            self._record(me, "moveCardFromBoard", "action_move_card_to_board", {
                "board": source, "boardTarget": {"id": board["id"]},
                "card": self._card_ref(card, idList=old["idList"]),
                "list": self._list_ref(old["idList"]),
            })  # fmt: skip
            self._record(me, "moveCardToBoard", "action_move_card_from_board", {
                "board": board, "boardSource": {"id": source["id"]},
                "card": self._card_ref(card), "list": self._list_ref(card["idList"]),
            })  # fmt: skip
        elif "idList" in old:
            self._record(me, "updateCard", "action_move_card_from_list_to_list", {
                "card": self._card_ref(card), "old": {"idList": old["idList"]}, "board": board,
                "listBefore": self._list_ref(old["idList"]),
                "listAfter": self._list_ref(card["idList"]),
            })  # fmt: skip
        for name in ("name", "desc", "due", "closed", "pos"):
            if name not in old or (name == "pos" and "idList" in old):
                continue
            value = _number(card["pos"]) if name == "pos" else card[name]
            was = _number(old["pos"]) if name == "pos" else old[name]
            data = {"card": self._card_ref(card, **{name: value}), "old": {name: was}}
            self._record(me, "updateCard", _update_key(name, was, value), {**data, **where})
        moved_board = "idBoard" in old
        before_labels = old.get("idLabels", card["idLabels"])
        for label_id in card["idLabels"]:
            if label_id not in before_labels:
                self._record_label(me, card, label_id, "addLabelToCard")
        for label_id in [] if moved_board else before_labels:
            if label_id not in card["idLabels"]:
                self._record_label(me, card, label_id, "removeLabelFromCard")
        before_members = old.get("idMembers", card["idMembers"])
        for member_id in card["idMembers"]:
            if member_id not in before_members:
                self._record_member(me, card, member_id, "addMemberToCard")
        for member_id in [] if moved_board else before_members:
            if member_id not in card["idMembers"]:
                self._record_member(me, card, member_id, "removeMemberFromCard")

    def _record_label(self, me: dict, card: dict, label_id: str, kind: str) -> None:
        label = self._labels[label_id]
        key = {
            "addLabelToCard": "action_add_label_to_card",
            "removeLabelFromCard": "action_remove_label_from_card",
        }[kind]
        data = {
            "card": self._card_ref(card),
            "board": self._board_ref(card["idBoard"]),
            "label": {"id": label["id"], "name": label["name"], "color": label["color"]},
            "text": label["name"],
            "value": label["color"],
        }
        self._record(me, kind, key, data)

    def _record_member(self, me: dict, card: dict, member_id: str, kind: str) -> None:
        member = self._members[member_id]
        adding = kind == "addMemberToCard"
        if member_id == me["id"]:
            key = "action_member_joined_card" if adding else "action_member_left_card"
        else:
            key = "action_added_member_to_card" if adding else "action_removed_member_from_card"
        data = {
            "idMember": member_id,
            "member": {"id": member_id, "name": member.get("fullName", "")},
            "card": self._card_ref(card),
            "board": self._board_ref(card["idBoard"]),
        }
        self._record(me, kind, key, data, member=member)

    def _action_page(
        self, actions: list[dict[str, Any]], p: dict[str, Any], default_filter: str
    ) -> list[dict]:
        """Newest first, filtered (types, ``updateCard:field``), bounded by ``since`` and
        ``before`` (exclusive; ISO dates or action ids), paged by ``limit`` and ``page``."""
        kinds = _id_list(p.get("filter", default_filter)) or [default_filter]
        if any(kind != "all" and not _FILTER_RE.fullmatch(kind) for kind in kinds):
            raise ApiError(400, "invalid value for filter")
        since, before = (
            _action_bound(p.get("since"), "since"),
            _action_bound(p.get("before"), "before"),
        )
        limit = _limit(p)
        try:
            page = int(p.get("page", 0))
        except (TypeError, ValueError):
            page = -1
        if not 0 <= page <= 100:
            raise ApiError(400, "invalid value for page")

        chosen: list[dict[str, Any]] = []
        for action in reversed(actions):  # recorded in order: stop once past what is asked
            if len(chosen) >= (page + 1) * limit or (since and _compare(action, since) <= 0):
                break
            if before is not None and _compare(action, before) >= 0:
                continue
            if "all" in kinds or any(_kind_matches(kind, action) for kind in kinds):
                chosen.append(action)
        return json.loads(json.dumps(chosen[page * limit :]))

    # ----------------------------------------------------------------- API handlers
    def _get_me(self, p: dict, me: dict) -> dict:
        boards = [b for b, members in self._board_members.items() if me["id"] in members]
        return {**me, "idBoards": boards, "url": f"https://trello.com/{me['username']}"}

    def _get_token(self, p: dict, me: dict, token: str) -> dict:
        entry = self._tokens.get(token)
        if entry is None:
            raise ApiError(404, NOT_FOUND)
        scopes, member_id = entry
        access = {"read": "read" in scopes, "write": "write" in scopes}
        return {
            "id": _new_id(),
            "identifier": "gitlab2trello",
            "idMember": member_id,
            "dateExpires": None,
            "permissions": [
                {"idModel": "*", "modelType": "Board", **access},
                {"idModel": "*", "modelType": "Organization", **access},
            ],
        }

    def _get_my_boards(self, p: dict, me: dict) -> list[dict]:
        return [dict(self._boards[board_id]) for board_id in self._get_me(p, me)["idBoards"]]

    def _get_board(self, p: dict, me: dict, board_ref: str) -> dict:
        return dict(self._resolve(self._boards, board_ref, short_links=True))

    def _get_board_lists(self, p: dict, me: dict, board_ref: str) -> list[dict]:
        board = self._resolve(self._boards, board_ref, short_links=True)
        lists = [dict(lst) for lst in self._lists.values() if lst["idBoard"] == board["id"]]
        return sorted(lists, key=lambda lst: lst["pos"])

    def _get_board_labels(self, p: dict, me: dict, board_ref: str) -> list[dict]:
        board = self._resolve(self._boards, board_ref, short_links=True)
        labels = [dict(lab) for lab in self._labels.values() if lab["idBoard"] == board["id"]]
        return labels[: _limit(p)]

    def _post_board_label(self, p: dict, me: dict, board_ref: str) -> dict:
        board = self._resolve(self._boards, board_ref, short_links=True)
        color = p.get("color")
        color = None if color in (None, "", "null") else color
        if color is not None and color not in LABEL_COLORS:
            raise ApiError(400, "invalid value for color")
        name = _text(p.get("name"), "name")
        label = {"id": _new_id(), "idBoard": board["id"], "name": name, "color": color}
        self._labels[label["id"]] = label
        return dict(label)

    def _get_board_members(self, p: dict, me: dict, board_ref: str) -> list[dict]:
        board = self._resolve(self._boards, board_ref, short_links=True)
        return [dict(self._members[m]) for m in self._board_members[board["id"]]]

    def _open_cards(self, p: dict, key: str, value: str) -> list[dict]:
        fields = self._fields(p, CARD_FIELDS)
        return [
            self._card_view(card, fields)
            for card in self._sorted_cards()
            if card[key] == value and not card["closed"]
        ]

    def _get_board_cards(self, p: dict, me: dict, board_ref: str) -> list[dict]:
        board = self._resolve(self._boards, board_ref, short_links=True)
        return self._open_cards(p, "idBoard", board["id"])

    def _get_list(self, p: dict, me: dict, list_id: str) -> dict:
        return dict(self._resolve(self._lists, list_id, short_links=False))

    def _get_list_cards(self, p: dict, me: dict, list_id: str) -> list[dict]:
        lst = self._resolve(self._lists, list_id, short_links=False)
        return self._open_cards(p, "idList", lst["id"])

    def _post_card(self, p: dict, me: dict) -> dict:
        list_id = p.get("idList")
        if not isinstance(list_id, str) or not _ID_RE.fullmatch(list_id):
            raise ApiError(400, "invalid value for idList")
        if list_id not in self._lists:
            raise ApiError(404, "could not find the board that the card belongs to")
        board_id = self._lists[list_id]["idBoard"]
        card = {
            "id": _new_id(), "name": "", "desc": "", "idList": list_id, "idBoard": board_id,
            "closed": False, "idLabels": [], "idMembers": [], "due": None,
            "pos": self._position(p.get("pos", "bottom"), list_id, None),
        }  # fmt: skip
        self._apply_card_fields(card, {k: v for k, v in p.items() if k not in ("idList", "pos")})
        card["shortLink"] = self._short_link(card["id"])
        card["idShort"] = self._next_id_short[board_id]
        self._next_id_short[board_id] += 1
        self._cards[card["id"]] = card
        self._comments[card["id"]] = []
        self._attachments[card["id"]] = []
        if me:
            data = {
                "card": {k: card[k] for k in ("id", "name", "idShort", "shortLink")},
                "list": self._list_ref(list_id),
                "board": self._board_ref(board_id),
            }
            self._record(me, "createCard", "action_create_card", data)
        return self._card_view(card)

    def _card(self, card_ref: str) -> dict[str, Any]:
        return self._resolve(self._cards, card_ref, short_links=True)

    def _get_card(self, p: dict, me: dict, card_ref: str) -> dict:
        return self._card_view(self._card(card_ref), self._fields(p, DEFAULT_CARD_FIELDS))

    def _put_card(self, p: dict, me: dict, card_ref: str) -> dict:
        card = self._card(card_ref)
        self._record_card_changes(me, card, self._apply_card_fields(card, p))
        return self._card_view(card)

    def _delete_card(self, p: dict, me: dict, card_ref: str) -> dict:
        card = self._card(card_ref)
        if me:
            data = {
                "card": {k: card[k] for k in ("id", "idShort", "shortLink")},
                "list": self._list_ref(card["idList"]),
                "board": self._board_ref(card["idBoard"]),
            }
            self._record(me, "deleteCard", "action_delete_card", data)
        del self._cards[card["id"]], self._comments[card["id"]], self._attachments[card["id"]]
        del self._short_links[card["shortLink"]]
        return {"limits": {}}

    def _post_comment(self, p: dict, me: dict, card_ref: str) -> dict:
        card = self._card(card_ref)
        text = p.get("text")
        if not isinstance(text, str) or not 1 <= len(text) <= MAX_TEXT:
            raise ApiError(400, "invalid value for text")
        data = {
            "text": text,
            "textData": {"emoji": {}},
            "card": self._card_ref(card),
            "board": self._board_ref(card["idBoard"]),
            "list": self._list_ref(card["idList"]),
        }
        action = self._record(me, "commentCard", "action_comment_on_card", data)
        self._comments[card["id"]].append(action)
        card["dateLastActivity"] = action["date"]
        return json.loads(json.dumps(action))

    def _get_card_actions(self, p: dict, me: dict, card_ref: str) -> list[dict]:
        card = self._card(card_ref)
        return self._action_page(self._card_actions.get(card["id"], []), p, "commentCard")

    def _get_board_actions(self, p: dict, me: dict, board_ref: str) -> list[dict]:
        board = self._resolve(self._boards, board_ref, short_links=True)
        return self._action_page(self._board_actions.get(board["id"], []), p, "all")

    def _get_action(self, p: dict, me: dict, action_id: str) -> dict:
        return json.loads(
            json.dumps(self._resolve(self._action_index, action_id, short_links=False))
        )

    def _post_card_label(self, p: dict, me: dict, card_ref: str) -> list[str]:
        card = self._card(card_ref)
        label = self._labels.get(str(p.get("value")))
        if label is None or label["idBoard"] != card["idBoard"]:
            raise ApiError(400, "invalid value for value")
        if label["id"] in card["idLabels"]:
            raise ApiError(400, "that label is already on the card")
        old = self._apply_card_fields(card, {"idLabels": [*card["idLabels"], label["id"]]})
        self._record_card_changes(me, card, old)
        return list(card["idLabels"])

    def _delete_card_label(self, p: dict, me: dict, card_ref: str, label_id: str) -> list[str]:
        card = self._card(card_ref)
        if not _ID_RE.fullmatch(label_id):
            raise ApiError(400, "invalid value for idLabel")
        if label_id not in card["idLabels"]:
            raise ApiError(400, "that label is not on the card")
        remaining = [i for i in card["idLabels"] if i != label_id]
        self._record_card_changes(me, card, self._apply_card_fields(card, {"idLabels": remaining}))
        return list(card["idLabels"])

    def _post_card_member(self, p: dict, me: dict, card_ref: str) -> list[dict]:
        card = self._card(card_ref)
        member_id = str(p.get("value"))
        if member_id not in self._board_members[card["idBoard"]]:
            raise ApiError(400, "invalid value for value")
        if member_id in card["idMembers"]:
            raise ApiError(400, "member is already on the card")
        old = self._apply_card_fields(card, {"idMembers": [*card["idMembers"], member_id]})
        self._record_card_changes(me, card, old)
        return [dict(self._members[m]) for m in card["idMembers"]]

    def _delete_card_member(self, p: dict, me: dict, card_ref: str, member_id: str) -> list:
        card = self._card(card_ref)
        if not _ID_RE.fullmatch(member_id):
            raise ApiError(400, "invalid value for idMember")
        if member_id not in card["idMembers"]:
            raise ApiError(400, "member is not on the card")
        remaining = [m for m in card["idMembers"] if m != member_id]
        self._record_card_changes(me, card, self._apply_card_fields(card, {"idMembers": remaining}))
        return [dict(self._members[m]) for m in remaining]

    def _get_attachments(self, p: dict, me: dict, card_ref: str) -> list[dict]:
        return [dict(att) for att in self._attachments[self._card(card_ref)["id"]]]

    def _post_attachment(self, p: dict, me: dict, card_ref: str) -> dict:
        """A link attachment (``url``, optional ``name``); file uploads are not emulated."""
        card = self._card(card_ref)
        url = p.get("url")
        split = urlsplit(url) if isinstance(url, str) else None
        if split is None or split.scheme not in ("http", "https") or not split.netloc:
            raise ApiError(400, "invalid value for url")
        name = _text(p.get("name") or url, "name")
        attachments = self._attachments[card["id"]]
        attachment = {
            "id": _new_id(), "name": name, "url": url, "date": _iso(),
            "idMember": me.get("id"), "bytes": None, "isUpload": False,
            "mimeType": str(p.get("mimeType") or ""), "pos": 16384 * (len(attachments) + 1),
        }  # fmt: skip
        attachments.append(attachment)
        card["dateLastActivity"] = attachment["date"]
        if me:
            data = {
                "attachment": {"id": attachment["id"], "name": name, "url": url},
                "card": self._card_ref(card),
                "board": self._board_ref(card["idBoard"]),
                "list": self._list_ref(card["idList"]),
            }
            self._record(me, "addAttachmentToCard", "action_add_attachment_to_card", data)
        return dict(attachment)

    def _delete_attachment(self, p: dict, me: dict, card_ref: str, attachment_id: str) -> dict:
        card = self._card(card_ref)
        attachments = self._attachments[card["id"]]
        attachment = self._resolve(
            {a["id"]: a for a in attachments}, attachment_id, short_links=False
        )
        attachments.remove(attachment)
        if me:
            data = {
                "attachment": {"id": attachment["id"], "name": attachment["name"]},
                "card": self._card_ref(card),
                "board": self._board_ref(card["idBoard"]),
                "list": self._list_ref(card["idList"]),
            }
            self._record(me, "deleteAttachmentFromCard", "action_delete_attachment_from_card", data)
        return {"limits": {}}

    # ----------------------------------------------------------------- webhooks (API side)
    @_token_route
    def _post_webhook(self, p: dict, me: dict, *, token: str) -> dict:
        return self._create_webhook(p, token)

    @_token_route
    def _post_token_webhook(self, p: dict, me: dict, path_token: str, *, token: str) -> dict:
        with self._lock:
            self._own_token(path_token, token)
        return self._create_webhook(p, token)

    @_token_route
    def _get_token_webhooks(self, p: dict, me: dict, path_token: str, *, token: str) -> list:
        with self._lock:
            self._own_token(path_token, token)
            return self.webhooks(token)

    @_token_route
    def _delete_token(self, p: dict, me: dict, path_token: str, *, token: str) -> dict:
        with self._lock:
            self._own_token(path_token, token)
            self._revoke(token)
            return {"limits": {}}

    @_token_route
    def _get_webhook(self, p: dict, me: dict, webhook_id: str, *, token: str) -> dict:
        with self._lock:
            return dict(self._owned_webhook(webhook_id, token))

    @_token_route
    def _delete_webhook(self, p: dict, me: dict, webhook_id: str, *, token: str) -> dict:
        with self._lock:
            self._remove_webhook(self._owned_webhook(webhook_id, token)["id"])
            return {"limits": {}}

    @_token_route
    def _put_webhook(self, p: dict, me: dict, webhook_id: str, *, token: str) -> dict:
        """Change description, callbackURL, idModel or active; a new callbackURL is checked
        with a HEAD first, as on creation."""
        with self._lock:
            hook = self._owned_webhook(webhook_id, token)
            changes: dict[str, Any] = {}
            if "description" in p:
                changes["description"] = _text(p["description"], "description")
            if "callbackURL" in p:
                changes["callbackURL"] = _callback_url(p["callbackURL"])
            if "idModel" in p:
                changes["idModel"] = self._model_id(p["idModel"])
            if "active" in p:
                changes["active"] = _bool(p["active"], "active")
            url = changes.get("callbackURL", hook["callbackURL"])
            model = changes.get("idModel", hook["idModel"])
            self._check_duplicate(token, model, url, hook["id"])
            check, timeout = url != hook["callbackURL"], self.webhook_timeout
        if check:
            self._check_callback(url, timeout)
        with self._lock:
            hook = self._owned_webhook(webhook_id, token)
            self._check_duplicate(token, model, url, hook["id"])
            hook.update(changes)
            if not hook["active"]:
                self._queues.pop(hook["id"], None)
                self._cond.notify_all()
            return dict(hook)

    def _create_webhook(self, p: dict[str, Any], token: str) -> dict:
        with self._lock:
            url = _callback_url(p.get("callbackURL"))
            model = self._model_id(p.get("idModel"))
            description = _text(p.get("description"), "description")
            active = _bool(p["active"], "active") if "active" in p else True
            self._check_duplicate(token, model, url, None)
            timeout = self.webhook_timeout
        self._check_callback(url, timeout)
        with self._lock:
            if token not in self._tokens:
                raise ApiError(401, "invalid token")
            self._check_duplicate(token, model, url, None)
            hook = {
                "id": _new_id(), "description": description, "idModel": model,
                "callbackURL": url, "active": active, "consecutiveFailures": 0,
                "firstConsecutiveFailDate": None,
            }  # fmt: skip
            self._webhooks[hook["id"]] = hook
            self._webhook_tokens[hook["id"]] = token
            return dict(hook)

    @staticmethod
    def _check_callback(url: str, timeout: float) -> None:
        """Trello's check before it saves a callback: ``HEAD`` must answer 200."""
        status, why = call_out("HEAD", url, b"", {}, timeout)
        if status != 200:
            raise ApiError(400, f"URL ({url}) did not return 200 status code, got {status or why}")

    def _check_duplicate(self, token: str, model: str, url: str, exclude: str | None) -> None:
        for webhook_id, hook in self._webhooks.items():
            if (
                webhook_id != exclude
                and self._webhook_tokens[webhook_id] == token
                and (hook["idModel"], hook["callbackURL"]) == (model, url)
            ):
                raise ApiError(400, DUPLICATE_WEBHOOK)

    def _model_id(self, value: Any) -> str:
        model = value if isinstance(value, str) else ""
        tables = (self._boards, self._cards, self._lists, self._members)
        if not _ID_RE.fullmatch(model) or not any(model in table for table in tables):
            raise ApiError(400, "invalid value for idModel")
        return model

    def _model_view(self, model: str) -> dict[str, Any]:
        """The ``model`` of a delivery: the board (or card, list, member) the webhook watches."""
        if model in self._boards:
            board = self._boards[model]
            return {
                "id": board["id"], "name": board["name"], "desc": "", "closed": board["closed"],
                "idOrganization": None, "shortLink": board["shortLink"], "url": board["url"],
            }  # fmt: skip
        if model in self._cards:
            return self._card_view(self._cards[model])
        for table in (self._lists, self._members):
            if model in table:
                return dict(table[model])
        return {"id": model}

    def _own_token(self, path_token: str, token: str) -> None:
        if path_token != token:
            raise ApiError(401, "invalid token")

    def _owned_webhook(self, webhook_id: str, token: str) -> dict[str, Any]:
        hook = self._resolve(self._webhooks, webhook_id, short_links=False)
        if self._webhook_tokens[hook["id"]] != token:
            raise ApiError(404, NOT_FOUND)
        return hook

    def _remove_webhook(self, webhook_id: str) -> None:
        self._webhooks.pop(webhook_id, None)
        self._webhook_tokens.pop(webhook_id, None)
        self._queues.pop(webhook_id, None)
        self._cond.notify_all()

    def _revoke(self, token: str) -> None:
        if token not in self._tokens:
            raise ApiError(404, NOT_FOUND)
        del self._tokens[token]
        for webhook_id, owner in list(self._webhook_tokens.items()):
            if owner == token:
                self._remove_webhook(webhook_id)

    # ----------------------------------------------------------------- webhook deliveries
    def _enqueue(self, action: dict[str, Any]) -> int:
        """Queue ``action`` for every active webhook whose model it concerns."""
        data = action["data"]
        concerned = {action["idMemberCreator"], data.get("idMember")}
        for name in ("board", "card", "list", "listBefore", "listAfter"):
            concerned.add((data.get(name) or {}).get("id"))
        queued = 0
        for hook in self._webhooks.values():
            if not hook["active"] or hook["idModel"] not in concerned:
                continue
            payload = {
                "action": action,
                "model": self._model_view(hook["idModel"]),
                "webhook": hook,
            }
            body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
            url = hook["callbackURL"]
            signature = sign_webhook(self.secret, body, url, self.webhook_signing)
            job = _Job(
                next(self._job_seq), hook["id"], action["id"], action["type"], url, body, signature
            )
            self._queues.setdefault(hook["id"], deque()).append(job)
            queued += 1
        if queued:
            self._cond.notify_all()
        return queued

    def _next_job(self, now: float) -> tuple[_Job | None, float | None]:
        """The oldest due head of a webhook's queue, else how long until one is due."""
        heads = [queue[0] for queue in self._queues.values() if queue]
        due = [job for job in heads if job.due <= now]
        if due:
            return min(due, key=lambda job: job.seq), None
        wait = min((job.due for job in heads), default=None)
        return None, None if wait is None else max(0.001, wait - now)

    def _dispatch_loop(self) -> None:
        """One delivery at a time, each webhook's in the order its actions happened."""
        while True:
            with self._cond:
                while True:
                    if self._dispatch_stop:
                        return
                    job, wait = self._next_job(time.monotonic())
                    if job is not None:
                        break
                    self._cond.wait(wait)
                self._sending, timeout = job, self.webhook_timeout
            headers = {"Content-Type": "application/json", "X-Trello-Webhook": job.signature}
            status, _why = call_out("POST", job.url, job.body, headers, timeout)
            with self._cond:
                self._sending = None
                self._after_attempt(job, status)
                self._cond.notify_all()

    def _after_attempt(self, job: _Job, status: int) -> None:
        self._deliveries.append(Delivery(job.action_id, job.type, status, job.attempt))
        queue = self._queues.get(job.webhook_id)
        hook = self._webhooks.get(job.webhook_id)
        if hook is None or not queue or queue[0] is not job:
            return  # the webhook was deleted or deactivated meanwhile
        if status == 410:
            self._remove_webhook(job.webhook_id)
            return
        if 200 <= status < 300:
            queue.popleft()
            hook.update(consecutiveFailures=0, firstConsecutiveFailDate=None)
        elif job.attempt <= len(self.webhook_retry_delays):
            job.due = time.monotonic() + self.webhook_retry_delays[job.attempt - 1]
            job.attempt += 1
        else:  # dropped: a bridge that was down catches up from the board's actions
            queue.popleft()
            hook["consecutiveFailures"] += 1
            hook["firstConsecutiveFailDate"] = hook["firstConsecutiveFailDate"] or _iso()
            if hook["consecutiveFailures"] >= WEBHOOK_DISABLE_AFTER:
                hook["active"] = False
                queue.clear()
        if not queue:
            del self._queues[job.webhook_id]

    # ----------------------------------------------------------------- people (internals)
    def _require_board_member(self, me: dict[str, Any], board_id: str) -> None:
        if me["id"] not in self._board_members[board_id]:
            why = f"{me['username']} is not a member of the board"
            raise ApiError(401, f"unauthorized card permission requested: {why}")

    def _person_create_card(
        self, member_id: str, list_id: str, name: str, desc: str, fields: dict[str, Any]
    ) -> dict:
        with self._python_api():
            me = self._members[member_id]
            lst = self._resolve(self._lists, list_id, short_links=False)
            self._require_board_member(me, lst["idBoard"])
            return self._post_card({**fields, "idList": lst["id"], "name": name, "desc": desc}, me)

    def _person_call(self, member_id: str, card_id: str, handler: str, params: dict) -> Any:
        with self._python_api():
            me = self._members[member_id]
            card = self._card(card_id)
            self._require_board_member(me, card["idBoard"])
            target = self._lists.get(str(params.get("idList")))
            if target is not None:
                self._require_board_member(me, target["idBoard"])
            return getattr(self, handler)(params, me, card["id"])

    def _person_card_op(self, member_id: str, card_id: str, handler: str, what: dict) -> dict:
        with self._python_api():
            me = self._members[member_id]
            card = self._card(card_id)
            self._require_board_member(me, card["idBoard"])
            value = (
                self._member_by_username(what["member"])["id"]
                if "member" in what
                else what["value"]
            )
            if handler.startswith("_delete"):
                getattr(self, handler)({}, me, card["id"], value)
            else:
                getattr(self, handler)({"value": value}, me, card["id"])
            return self._card_view(card)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve an emulated Trello API on loopback.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--rate-limit", type=int, default=100)
    parser.add_argument("--secret", help="the API key's secret that signs webhook deliveries")
    args = parser.parse_args(argv)
    emulator = TrelloEmulator(
        host=args.host,
        port=args.port,
        latency=args.latency,
        rate_limit=args.rate_limit,
        secret=args.secret,
    ).start()
    board = emulator.add_board("Board")
    todo = emulator.add_list(board["id"], "To Do")
    done = emulator.add_list(board["id"], "Done")
    info = {
        "url": emulator.url,
        "key": emulator.key,
        "token": emulator.token,
        "board_id": board["id"],
        "list_id": todo["id"],
        "done_list_id": done["id"],
        "secret": emulator.secret,
    }
    return emulator_http.serve_until_signalled(emulator, info)


if __name__ == "__main__":
    sys.exit(main())
