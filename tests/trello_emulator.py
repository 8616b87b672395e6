"""An emulator of the Trello REST API, served over real HTTP on loopback.

Integration tests and benchmarks give the bridge ``TrelloEmulator().url`` instead of
``https://api.trello.com/1``. It follows the project's Trello contract: key/token auth (query,
body or OAuth header), 24-hex ids and 8-char shortLinks, the board/list/card/label/member/comment
endpoints, 16384-character limits, plain-text errors, sliding-window rate limits with their
``x-rate-limit-*`` headers, plus injectable latency and faults (error statuses, slow answers,
connection resets, malformed bodies). Standard library only.

``python -m tests.trello_emulator --port N`` runs one with a seeded board and prints a JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import secrets
import string
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any
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


def _new_id() -> str:
    return f"{int(time.time()):08x}{secrets.token_hex(8)}"


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
    ) -> None:
        self.key = key
        self.token = token
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
        self.add_token(token)

    # ----------------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._port}/1"

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
        """A person dragging a card to another list: not recorded as an API call."""
        with self._python_api():
            self._put_card({"idList": list_id}, {}, card_id)

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
        except (TypeError, ValueError) as exc:
            return _error_reply(ApiError(400, str(exc)))
        return _json_reply(200, {"ok": True})

    def _configure(self, **settings: Any) -> None:
        """Apply ``{latency, rate_limit, rate_interval, key_rate_limit}`` (any subset)."""
        casts = {"latency": float, "rate_limit": int, "rate_interval": float, "key_rate_limit": int}
        unknown = set(settings) - set(casts)
        if unknown:
            raise TypeError(f"unknown settings: {sorted(unknown)}")
        with self._lock:
            for name, value in settings.items():
                setattr(self, f"_{name}", casts[name](value))

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

    def _apply_card_fields(self, card: dict[str, Any], p: dict[str, Any]) -> None:
        """Validate every given field first, then write them all: a refused request changes
        nothing. Fields not given stay as they are."""
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
        card.update(changes)
        card["dateLastActivity"] = _iso()

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
        return self._card_view(card)

    def _card(self, card_ref: str) -> dict[str, Any]:
        return self._resolve(self._cards, card_ref, short_links=True)

    def _get_card(self, p: dict, me: dict, card_ref: str) -> dict:
        return self._card_view(self._card(card_ref), self._fields(p, DEFAULT_CARD_FIELDS))

    def _put_card(self, p: dict, me: dict, card_ref: str) -> dict:
        card = self._card(card_ref)
        self._apply_card_fields(card, p)
        return self._card_view(card)

    def _delete_card(self, p: dict, me: dict, card_ref: str) -> dict:
        card = self._card(card_ref)
        del self._cards[card["id"]], self._comments[card["id"]]
        del self._short_links[card["shortLink"]]
        return {"limits": {}}

    def _post_comment(self, p: dict, me: dict, card_ref: str) -> dict:
        card = self._card(card_ref)
        text = p.get("text")
        if not isinstance(text, str) or not 1 <= len(text) <= MAX_TEXT:
            raise ApiError(400, "invalid value for text")
        card_ref_data = {k: card[k] for k in ("id", "name", "idShort", "shortLink")}
        action = {
            "id": _new_id(),
            "idMemberCreator": me["id"],
            "type": "commentCard",
            "date": _iso(),
            "data": {
                "text": text,
                "card": card_ref_data,
                "board": {"id": card["idBoard"], "name": self._boards[card["idBoard"]]["name"]},
                "list": {"id": card["idList"], "name": self._lists[card["idList"]]["name"]},
            },
            "memberCreator": dict(me),
        }
        self._comments[card["id"]].append(action)
        card["dateLastActivity"] = action["date"]
        return json.loads(json.dumps(action))

    def _get_card_actions(self, p: dict, me: dict, card_ref: str) -> list[dict]:
        card = self._card(card_ref)
        kinds = _id_list(p.get("filter", "commentCard"))
        if "all" not in kinds and "commentCard" not in kinds:
            return []
        newest_first = list(reversed(self._comments[card["id"]]))
        return json.loads(json.dumps(newest_first[: _limit(p)]))

    def _post_card_label(self, p: dict, me: dict, card_ref: str) -> list[str]:
        card = self._card(card_ref)
        label = self._labels.get(str(p.get("value")))
        if label is None or label["idBoard"] != card["idBoard"]:
            raise ApiError(400, "invalid value for value")
        if label["id"] in card["idLabels"]:
            raise ApiError(400, "that label is already on the card")
        self._apply_card_fields(card, {"idLabels": [*card["idLabels"], label["id"]]})
        return list(card["idLabels"])

    def _delete_card_label(self, p: dict, me: dict, card_ref: str, label_id: str) -> list[str]:
        card = self._card(card_ref)
        if not _ID_RE.fullmatch(label_id):
            raise ApiError(400, "invalid value for idLabel")
        if label_id not in card["idLabels"]:
            raise ApiError(400, "that label is not on the card")
        self._apply_card_fields(card, {"idLabels": [i for i in card["idLabels"] if i != label_id]})
        return list(card["idLabels"])

    def _post_card_member(self, p: dict, me: dict, card_ref: str) -> list[dict]:
        card = self._card(card_ref)
        member_id = str(p.get("value"))
        if member_id not in self._board_members[card["idBoard"]]:
            raise ApiError(400, "invalid value for value")
        if member_id in card["idMembers"]:
            raise ApiError(400, "member is already on the card")
        self._apply_card_fields(card, {"idMembers": [*card["idMembers"], member_id]})
        return [dict(self._members[m]) for m in card["idMembers"]]

    def _delete_card_member(self, p: dict, me: dict, card_ref: str, member_id: str) -> list:
        card = self._card(card_ref)
        if not _ID_RE.fullmatch(member_id):
            raise ApiError(400, "invalid value for idMember")
        if member_id not in card["idMembers"]:
            raise ApiError(400, "member is not on the card")
        remaining = [m for m in card["idMembers"] if m != member_id]
        self._apply_card_fields(card, {"idMembers": remaining})
        return [dict(self._members[m]) for m in remaining]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve an emulated Trello API on loopback.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--rate-limit", type=int, default=100)
    args = parser.parse_args(argv)
    emulator = TrelloEmulator(
        host=args.host, port=args.port, latency=args.latency, rate_limit=args.rate_limit
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
    }
    return emulator_http.serve_until_signalled(emulator, info)


if __name__ == "__main__":
    sys.exit(main())
