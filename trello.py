"""Every Trello detail: base URL, auth header, JSON fields, timeouts, pacing, error translation.

One ``requests.Session`` per client; every call goes through ``Client._request``, which paces it
under the rate limit, always passes a (connect, read) timeout, retries what is safe to retry and
maps every failure to the small ``TrelloError`` family in one place. Credentials travel only in
the ``Authorization`` header; messages name the method and path, never a URL with a secret.
"""

from __future__ import annotations

import collections
import logging
import math
import random
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import requests
import stamina

log = logging.getLogger("gitlab2trello.trello")

MAX_TEXT = 16384  # card name, desc and comment text


class TrelloError(Exception):
    """A Trello call failed; ``status`` is the HTTP status or None when none came back."""

    transient = False

    def __init__(self, method: str, path: str, status: int | None, detail: str) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.detail = detail
        where = f"{method} {path}"
        super().__init__(f"{where}: {status} {detail}" if status else f"{where}: {detail}")


class TrelloAuthError(TrelloError):
    """401/403: the key or token is wrong or lacks permission."""


class TrelloNotFound(TrelloError):
    """404: the card, list or board does not exist (or the token cannot see it)."""


class TrelloBadRequest(TrelloError):
    """400: Trello rejected a value."""


class TrelloRateLimited(TrelloError):
    """429: over the rate limit."""

    transient = True


class TrelloUnavailable(TrelloError):
    """5xx, timeout, broken connection or an unreadable answer: try again later."""

    transient = True


class LocalWindow:
    """A sliding window of send times, in this process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._sent: collections.deque[float] = collections.deque()
        self._keep = 0.0  # the longest interval asked for: older send times are dropped
        self._lock = threading.Lock()

    def take(self, limit: int, interval: float) -> float:
        """0 when a call may go now (and it is counted), else the seconds to wait first."""
        with self._lock:
            now = self._clock()
            self._keep = max(self._keep, interval)
            while self._sent and self._sent[0] <= now - self._keep:
                self._sent.popleft()
            recent = [t for t in self._sent if t > now - interval]
            if len(recent) < limit:
                self._sent.append(now)
                return 0.0
            # until enough of them have left the window for one more (never 0: that grants)
            return max(recent[len(recent) - max(limit, 1)] + interval - now, 1e-6)

    def count(self, older: float, newer: float = 0.0) -> int:
        """The calls counted from ``older`` seconds ago up to ``newer`` seconds ago."""
        with self._lock:
            now = self._clock()
            return sum(1 for t in self._sent if now - older < t <= now - newer)


class Window(Protocol):
    """Where the pacer counts its calls: its own ``LocalWindow`` or the store's shared one."""

    def take(self, limit: int, interval: float) -> float: ...

    def count(self, older: float, newer: float = 0.0) -> int: ...


SCOPES = ("token", "key")  # Trello's two budgets: the token's (100 / 10 s), the key's (300 / 10 s)


class Pacer:
    """Keeps calls inside Trello's budget: ``limit`` per ``interval`` seconds, or less when
    Trello's answers say less is left.

    The calls are counted in a sliding window of send times, this process's own or one shared by
    every instance (``window``: the store's ``rate_window``), so that the budget holds for all of
    them together. Every answer carries, for the token and for the API key,
    ``x-rate-limit-api-*-max`` (the budget), ``-interval-ms`` (its window) and ``-remaining``
    (what is left of it after this call). From them the pacer learns:

    - the budget, when it is below ``limit``: then the calls are paced to it, over its window
      lengthened by ``guard`` seconds (the calls reach Trello a little after they are counted
      here, and not always equally late);
    - what others spend of it: ``max - remaining - the calls of the window`` is what other
      integrations (or other tokens, for the key) have spent; the most seen in the last window
      is taken off the budget, and while others spend, the calls left are spread evenly over the
      window instead of going out in a burst.

    Until an answer has told the budget (at start, or after a window without answers) one call
    goes at a time. A 429 pauses every caller (``Retry-After`` when Trello sends it, else a
    back-off); answers without a ``max`` fall back to pausing half a window when ``remaining``
    is nearly exhausted.
    """

    probe_timeout = 2.0  # the answer that tells the budget is waited for this long at most

    def __init__(
        self,
        limit: int = 90,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        window: Window | None = None,
        guard: float = 0.2,
    ) -> None:
        self.limit = limit
        self.interval = interval
        self.guard = guard
        self._clock = clock
        self._sleep = sleep
        self.window: Window = window if window is not None else LocalWindow(clock)
        self._paused_until = 0.0
        self._limited = 0  # consecutive 429 answers
        self._budgets: dict[str, tuple[int, float]] = {}  # scope -> announced (max, interval s)
        self._others: dict[str, collections.deque[tuple[float, int]]] = {}  # (when, calls)
        self._answered_at: float | None = None
        self._probe_at = -math.inf
        self._next_at = 0.0  # no call before, while spreading
        self._lock = threading.Lock()
        self._take_lock = threading.Lock()

    def pace(self) -> tuple[int, float, float]:
        """``(limit, interval, gap)`` the next call is paced to: at most ``limit`` calls in
        ``interval`` seconds, and ``gap`` seconds at least since the one before (0: no gap)."""
        with self._lock:
            return self._pace(self._clock())

    def _pace(self, now: float) -> tuple[int, float, float]:
        if not self._budgets:
            return self.limit, self.interval, 0.0
        interval = max(seconds for _most, seconds in self._budgets.values())
        own = self.limit
        if interval != self.interval:  # the configured pace, over Trello's window
            own = max(1, int(self.limit * interval / self.interval))
        left, spent = own, 0
        for scope, (most, _seconds) in self._budgets.items():
            others = self._others_spent(scope, now, interval)
            if most - others < left:
                left, spent = most - others, others
        if left >= own:
            return own, interval, 0.0
        limit = max(1, left)
        interval += self.guard
        return limit, interval, interval / limit if spent else 0.0

    def _others_spent(self, scope: str, now: float, interval: float) -> int:
        seen = self._others.get(scope)
        while seen and seen[0][0] <= now - interval:
            seen.popleft()
        return max((calls for _when, calls in seen), default=0) if seen else 0

    def acquire(self) -> None:
        """Block until one more call may be sent."""
        while True:
            with self._take_lock:
                with self._lock:
                    now = self._clock()
                    wait = self._paused_until - now
                    window = max([self.interval, *(s for _m, s in self._budgets.values())])
                    fresh = self._answered_at is not None and now - self._answered_at < window
                    if wait <= 0 and not fresh:
                        wait = self._probe_at + self.probe_timeout - now
                    limit, interval, gap = self._pace(now)
                    if wait <= 0 and gap:
                        wait = self._next_at - now
                if wait <= 0:
                    wait = self.window.take(limit, interval)
                    if wait <= 0:
                        with self._lock:
                            self._next_at = now + gap
                            if not fresh:
                                self._probe_at = now
                        return
            self._sleep(max(wait, 0.005))

    def unanswered(self) -> None:
        """A call ended without an answer (timeout, broken connection): the next may go."""
        with self._lock:
            self._probe_at = -math.inf

    def observe(self, headers: Mapping[str, str], status: int, elapsed: float = 0.0) -> None:
        """Learn from a response's rate-limit headers and status; ``elapsed``: the seconds since
        the call was sent.

        A 429 pauses every caller: for ``Retry-After`` when Trello sends it, else for a wait
        that doubles with each consecutive 429 (from half a second up to the whole window),
        with jitter.
        """
        announced: dict[str, tuple[int, int, float]] = {}
        for scope in SCOPES:
            most = _int_header(headers, f"x-rate-limit-api-{scope}-max")
            remaining = _int_header(headers, f"x-rate-limit-api-{scope}-remaining")
            interval_ms = _int_header(headers, f"x-rate-limit-api-{scope}-interval-ms")
            if most and most > 0 and remaining is not None:
                announced[scope] = (most, remaining, (interval_ms or 10000) / 1000)
        ours = None
        if announced:
            # the calls of the window as Trello counted them for this answer: those sent in the
            # window that ends with this call (a 429 was not counted); the ones sent since are
            # still on their way, most of them (a millisecond less: this call is one of them)
            sent = max(elapsed - 0.001, 0.0)
            span = max(seconds for _m, _r, seconds in announced.values())
            try:
                ours = self.window.count(span + sent, sent) - (1 if status == 429 else 0)
            except Exception as exc:  # a shared window out of reach: learn the budget only
                log.debug("cannot count the calls of the window: %s", exc)
        interval = (_int_header(headers, "x-rate-limit-api-token-interval-ms") or 10000) / 1000
        remaining = _int_header(headers, "x-rate-limit-api-token-remaining")
        retry_after = _float_header(headers, "retry-after")
        pause = None
        with self._lock:
            now = self._clock()
            self._answered_at = now
            for scope, (most, left, seconds) in announced.items():
                if self._budgets.get(scope, (None,))[0] != most and most < self.limit:
                    log.info("Trello allows the %s %d calls per %g s", scope, most, seconds)
                self._budgets[scope] = (most, seconds)
                if ours is not None:
                    seen = self._others.setdefault(scope, collections.deque())
                    seen.append((now, max(0, most - left - ours)))
            if status == 429:
                self._limited += 1
                pause = retry_after or min(interval, 0.5 * 2 ** (self._limited - 1))
                pause *= 1 + random.random() * 0.2
            else:
                self._limited = 0
                if "token" not in announced and remaining is not None and remaining <= 1:
                    pause = interval / 2
            if pause is not None:
                self._paused_until = max(self._paused_until, now + pause)


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    try:
        return int(headers[name])
    except (KeyError, ValueError):
        return None


def _float_header(headers: Mapping[str, str], name: str) -> float | None:
    try:
        return float(headers[name])
    except (KeyError, ValueError):
        return None


class Client:
    """A thin Trello REST client for the calls the bridge makes."""

    def __init__(
        self,
        api_url: str,
        key: str,
        token: str,
        *,
        connect_timeout: float = 3.05,
        read_timeout: float = 10.0,
        pacer: Pacer | None = None,
        retry_attempts: int = 4,
        retry_timeout: float = 30.0,
        on_call: Callable[[str, str, int | None, float], None] | None = None,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.timeout = (connect_timeout, read_timeout)
        self.pacer = pacer or Pacer()
        self.retry_attempts = retry_attempts
        self.retry_timeout = retry_timeout
        self.on_call = on_call
        self._token = token
        self.session = requests.Session()
        self.session.headers["Authorization"] = (
            f'OAuth oauth_consumer_key="{key}", oauth_token="{token}"'
        )
        self.session.headers["Accept"] = "application/json"
        # the pool must hold a connection for each worker thread
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=32)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def close(self) -> None:
        self.session.close()

    # ---------------------------------------------------------------- the one place

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Mapping[str, Any] | None = None,
    ) -> Any:
        idempotent = method in ("GET", "PUT", "DELETE")

        def retry_safe(exc: Exception) -> bool:
            # a 429 was not applied, so any call may repeat it; a timeout or a 5xx may have
            # been applied, so only calls that can be repeated without harm repeat it here
            return isinstance(exc, TrelloRateLimited) or (
                idempotent and isinstance(exc, TrelloUnavailable)
            )

        for attempt in stamina.retry_context(
            on=retry_safe,
            attempts=self.retry_attempts,
            timeout=self.retry_timeout,
            wait_initial=0.5,
            wait_max=8.0,
        ):
            with attempt:
                return self._send(method, path, params, json)
        raise AssertionError("unreachable")  # pragma: no cover

    def _send(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None,
        body: Mapping[str, Any] | None,
    ) -> Any:
        url = self.api_url + path
        path = path.replace(self._token, "<token>") if self._token else path  # for messages
        self.pacer.acquire()
        started = time.monotonic()
        status: int | None = None
        try:
            response = self.session.request(
                method,
                url,
                params=params,
                json=body,
                timeout=self.timeout,
            )
        except requests.Timeout:
            self.pacer.unanswered()
            raise TrelloUnavailable(method, path, None, "timed out") from None
        except requests.RequestException as exc:
            self.pacer.unanswered()
            raise TrelloUnavailable(
                method, path, None, f"connection failed ({type(exc).__name__})"
            ) from None
        else:
            status = response.status_code
            self.pacer.observe(response.headers, status, time.monotonic() - started)
            if status >= 400:
                raise _error(method, path, status, response)
            try:
                return response.json()
            except ValueError:
                raise TrelloUnavailable(method, path, status, "answer is not JSON") from None
        finally:
            elapsed = (time.monotonic() - started) * 1000
            log.info("trello %s %s -> %s in %.0f ms", method, path, status or "error", elapsed)
            if self.on_call is not None:
                self.on_call(method, path, status, elapsed)

    # ---------------------------------------------------------------- calls

    def get_list(self, list_id: str) -> dict[str, Any]:
        return self._request("GET", f"/lists/{list_id}", params={"fields": "id,name,idBoard"})

    def get_board(self, board: str) -> dict[str, Any]:
        return self._request("GET", f"/boards/{board}", params={"fields": "id,name,url,closed"})

    def board_lists(self, board_id: str) -> list[dict[str, Any]]:
        return self._request(
            "GET", f"/boards/{board_id}/lists", params={"fields": "id,name,closed,pos"}
        )

    def board_cards(self, board_id: str) -> list[dict[str, Any]]:
        """The board's open cards with the fields the bridge reads."""
        return self._request(
            "GET",
            f"/boards/{board_id}/cards",
            params={"fields": "id,name,desc,idList,idBoard,closed,idLabels,idMembers,due"},
        )

    def board_actions(
        self, board_id: str, types: Sequence[str], *, since: str | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """The board's actions of these types after ``since`` (an ISO time), oldest first, every
        page (Trello answers newest first, at most 1000 a page)."""
        found: list[dict[str, Any]] = []
        before: str | None = None
        while True:
            params: dict[str, Any] = {"filter": ",".join(types), "limit": limit}
            if since:
                params["since"] = since
            if before:
                params["before"] = before
            page = self._request("GET", f"/boards/{board_id}/actions", params=params)
            found += page
            if len(page) < limit:
                return found[::-1]
            before = page[-1]["id"]

    def create_webhook(self, callback_url: str, model_id: str, description: str) -> dict[str, Any]:
        """A webhook on a board (Trello first checks the URL with HEAD)."""
        return self._request(
            "POST",
            "/webhooks",
            json={"callbackURL": callback_url, "idModel": model_id, "description": description},
        )

    def webhooks(self) -> list[dict[str, Any]]:
        """The token's webhooks (the token is in the path: the log filter blanks it)."""
        return self._request("GET", f"/tokens/{self._token}/webhooks")

    def delete_webhook(self, webhook_id: str) -> None:
        self._request("DELETE", f"/webhooks/{webhook_id}")

    def board_labels(self, board_id: str) -> list[dict[str, Any]]:
        return self._request(
            "GET", f"/boards/{board_id}/labels", params={"fields": "id,name,color", "limit": 1000}
        )

    def create_label(self, board_id: str, name: str, color: str | None) -> dict[str, Any]:
        return self._request(
            "POST", f"/boards/{board_id}/labels", json={"name": name, "color": color}
        )

    def board_members(self, board_id: str) -> list[dict[str, Any]]:
        return self._request("GET", f"/boards/{board_id}/members")

    def token_permissions(self) -> dict[str, bool]:
        """Whether the token may read and write boards."""
        info = self._request("GET", f"/tokens/{self._token}", params={"fields": "permissions"})
        boards = [p for p in info.get("permissions", ()) if p.get("modelType") == "Board"]
        return {
            "read": any(p.get("read") for p in boards),
            "write": any(p.get("write") for p in boards),
        }

    def me(self) -> dict[str, Any]:
        return self._request("GET", "/members/me", params={"fields": "id,username,fullName"})

    def my_boards(self) -> list[dict[str, Any]]:
        return self._request(
            "GET", "/members/me/boards", params={"fields": "id,name,url,closed,shortLink"}
        )

    def create_card(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        return self._request("POST", "/cards", json=dict(fields))

    def update_card(self, card_id: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        return self._request("PUT", f"/cards/{card_id}", json=dict(fields))

    def get_card(self, card_id: str) -> dict[str, Any]:
        return self._request("GET", f"/cards/{card_id}")

    def add_card_label(self, card_id: str, label_id: str) -> bool:
        """Put a label on a card; False when it was already there."""
        return self._add_to_set(f"/cards/{card_id}/idLabels", label_id)

    def remove_card_label(self, card_id: str, label_id: str) -> bool:
        """Take a label off a card; False when it was not there."""
        return self._remove_from_set(f"/cards/{card_id}/idLabels/{label_id}")

    def add_card_member(self, card_id: str, member_id: str) -> bool:
        return self._add_to_set(f"/cards/{card_id}/idMembers", member_id)

    def remove_card_member(self, card_id: str, member_id: str) -> bool:
        return self._remove_from_set(f"/cards/{card_id}/idMembers/{member_id}")

    def _add_to_set(self, path: str, value: str) -> bool:
        try:
            self._request("POST", path, json={"value": value})
        except TrelloBadRequest as exc:
            if "already" not in exc.detail:
                raise
            return False
        return True

    def _remove_from_set(self, path: str) -> bool:
        try:
            self._request("DELETE", path)
        except TrelloBadRequest:
            return False
        return True

    def add_attachment(self, card_id: str, url: str, name: str) -> dict[str, Any]:
        """A link attached to the card (not repeated blindly: ``attachment_urls`` tells)."""
        return self._request(
            "POST", f"/cards/{card_id}/attachments", json={"url": url, "name": name[:256]}
        )

    def attachment_urls(self, card_id: str) -> set[str]:
        return {a.get("url", "") for a in self._request("GET", f"/cards/{card_id}/attachments")}

    def has_comment(self, card_id: str, needle: str) -> bool:
        """True when a comment on the card contains ``needle`` (a GitLab note URL)."""
        actions = self._request(
            "GET", f"/cards/{card_id}/actions", params={"filter": "commentCard", "limit": 1000}
        )
        return any(needle in (a.get("data") or {}).get("text", "") for a in actions)

    def add_comment(self, card_id: str, text: str) -> dict[str, Any]:
        return self._request("POST", f"/cards/{card_id}/actions/comments", json={"text": text})


def _error(method: str, path: str, status: int, response: requests.Response) -> TrelloError:
    detail = response.text.strip()[:200] or response.reason or ""
    if status == 429:
        return TrelloRateLimited(method, path, status, detail)
    if status in (401, 403):
        return TrelloAuthError(method, path, status, detail)
    if status == 404:
        return TrelloNotFound(method, path, status, detail)
    if status >= 500:
        return TrelloUnavailable(method, path, status, detail)
    return TrelloBadRequest(method, path, status, detail)


def board_ref(text: str) -> str:
    """A board id, shortLink, or board URL (https://trello.com/b/<shortLink>/<slug>)."""
    match = re.search(r"trello\.com/b/([A-Za-z0-9]+)", text)
    return match.group(1) if match else text.strip()


def authorize_url(key: str, app_name: str = "gitlab2trello") -> str:
    """The page where a person grants the bridge a never-expiring read/write token."""
    from urllib.parse import urlencode

    query = urlencode(
        {
            "expiration": "never",
            "scope": "read,write",
            "response_type": "token",
            "key": key,
            "name": app_name,
        }
    )
    return f"https://trello.com/1/authorize?{query}"


class BoardCache:
    """What is worth remembering about boards: the board of a list, its labels, its members,
    and its open cards indexed by a key (the issue URL in their description).

    Read from Trello once and then kept; ``forget`` drops a board's cache when an answer may have
    been lost (a card or label created without our knowing) or a 4xx hints that it changed.
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        self._board_of: dict[str, str] = {}  # list id -> board id
        self._boards: dict[str, _Board] = {}
        self._lock = threading.Lock()

    def board_of(self, list_id: str) -> str:
        """The id of the board a list is on."""
        with self._lock:  # held while asking Trello, so a cold start asks once, not per thread
            board_id = self._board_of.get(list_id)
            if board_id is None:
                board_id = self.client.get_list(list_id)["idBoard"]
                self._board_of[list_id] = board_id
            self._boards.setdefault(board_id, _Board())
            return board_id

    def _board(self, board_id: str) -> _Board:
        with self._lock:
            return self._boards.setdefault(board_id, _Board())

    def find_card(
        self, board_id: str, key: str, keys_of: Callable[[str], list[str]], *, fresh: bool = False
    ) -> dict[str, Any] | None:
        """The open card whose description carries ``key`` (``keys_of(desc)`` lists them).

        The board is read once and indexed; ``fresh`` reads it again first (a create may have
        happened elsewhere since it was read).
        """
        board = self._board(board_id)
        with board.lock:
            if board.cards is None or fresh:
                index: dict[str, dict[str, Any]] = {}
                for card in self.client.board_cards(board_id):
                    for found in keys_of(card.get("desc") or ""):
                        index.setdefault(found, card)
                board.cards = index
            return board.cards.get(key)

    def remember_card(self, board_id: str, key: str, card: dict[str, Any]) -> None:
        board = self._board(board_id)
        with board.lock:
            if board.cards is not None:
                board.cards[key] = card

    def labels(self, board_id: str) -> dict[str, str]:
        """Lower-cased label name -> label id."""
        board = self._board(board_id)
        with board.lock:
            if board.labels is None:
                labels: dict[str, str] = {}
                for label in self.client.board_labels(board_id):
                    if label.get("name"):
                        labels.setdefault(label["name"].lower(), label["id"])
                board.labels = labels
            return dict(board.labels)

    def ensure_labels(
        self, board_id: str, wanted: Sequence[tuple[str, str | None]]
    ) -> dict[str, str]:
        """Every label of the board, after creating the (name, colour) ones it lacks."""
        if not wanted:
            return {}
        board = self._board(board_id)
        with board.lock:
            self.labels(board_id)
            assert board.labels is not None
            for name, color in wanted:
                if name.lower() not in board.labels:
                    board.labels[name.lower()] = self.client.create_label(board_id, name, color)[
                        "id"
                    ]
            return dict(board.labels)

    def members(self, board_id: str) -> dict[str, str]:
        """Lower-cased username -> member id."""
        board = self._board(board_id)
        with board.lock:
            if board.members is None:
                board.members = {
                    m["username"].lower(): m["id"]
                    for m in self.client.board_members(board_id)
                    if m.get("username")
                }
            return dict(board.members)

    def forget(self, board_id: str) -> None:
        board = self._board(board_id)
        with board.lock:
            board.cards = board.labels = board.members = None


class _Board:
    def __init__(self) -> None:
        self.labels: dict[str, str] | None = None
        self.members: dict[str, str] | None = None
        self.cards: dict[str, dict[str, Any]] | None = None
        self.lock = threading.RLock()
