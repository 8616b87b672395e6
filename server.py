"""The HTTP edge: routes, status codes and the WSGI ``application``.

``POST /issue`` checks the delivery, parses it, stores it durably and answers; talking to Trello
is the worker's job (``worker.py``), never the request's. GitLab waits 10 s and never retries, so
the answer only depends on the local disk.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import orjson
from bottle import Bottle, HTTPResponse, request, response

import config as config_module
import gitlab_hook
import memory
import observe
import trello_hook
from events import CardAction, IssueEvent, MergeRequestEvent
from store import Store, StoreError, open_store

log = logging.getLogger("gitlab2trello.server")


class Headers(Mapping[str, str]):
    """Request headers from the WSGI environ, case-insensitive, never failing to decode.

    Bottle's own header dict raises on bytes that are not UTF-8; a hostile header must give a
    clear 4xx, not a 500. A header is looked up (and decoded) only when a route asks for it:
    nothing is copied per request.
    """

    __slots__ = ("_environ",)

    def __init__(self, environ: Mapping[str, Any]) -> None:
        self._environ = environ

    @staticmethod
    def _key(name: str) -> str:
        key = name.upper().replace("-", "_")
        return key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key

    def __getitem__(self, name: str) -> str:
        value = self._environ[self._key(name)]
        return value.encode("latin-1", "replace").decode("utf-8", "replace")

    def get(self, name: str, default: Any = None) -> Any:  # Mapping's, without the exception
        value = self._environ.get(self._key(name))
        if value is None:
            return default
        return value.encode("latin-1", "replace").decode("utf-8", "replace")

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._key(name) in self._environ

    def __iter__(self) -> Iterator[str]:
        for key in self._environ:
            if key.startswith("HTTP_"):
                yield key[5:].replace("_", "-").lower()
            elif key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                yield key.replace("_", "-").lower()

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _text(status: int, message: str, **headers: str) -> HTTPResponse:
    return HTTPResponse(
        message.rstrip("\n") + "\n",
        status=status,
        headers={"Content-Type": "text/plain; charset=utf-8", **headers},
    )


# status of an answer to POST /issue -> outcome label of gitlab2trello_deliveries_received
# (answers 200 say themselves whether they are a duplicate or ignored)
OUTCOMES = {
    202: "queued",
    400: "bad_request",
    401: "unauthorized",
    413: "too_large",
    503: "unavailable",
}


class _Answer(HTTPResponse):
    """A JSON answer that remembers its ``status`` field (the metrics' outcome of a 200)."""

    outcome = "other"

    @staticmethod
    def outcome_of(answer: HTTPResponse) -> str:
        return answer.outcome if isinstance(answer, _Answer) else _Answer.outcome


def _json(status: int, payload: dict[str, Any]) -> HTTPResponse:
    answer = _Answer(orjson.dumps(payload), status=status, headers=_JSON_HEADERS)
    answer.outcome = str(payload.get("status", "other"))
    return answer


_JSON_HEADERS = {"Content-Type": "application/json"}


def make_app(
    cfg: config_module.Config,
    store: Store | None = None,
    *,
    clock: Callable[[], float] = time.time,
) -> Bottle:
    """Build the WSGI application for one configuration."""
    store = store or open_store(cfg)
    try:
        store.setup()
    except StoreError as exc:  # keep serving: /healthz and /issue answer 503 until it works
        log.error("%s", exc)
    max_body = int(cfg.server["max_body_bytes"])
    secret_token = cfg.gitlab["secret_token"]
    signing_token = cfg.gitlab["signing_token"]
    tolerance = cfg.gitlab["signature_tolerance"]
    types = tuple(cfg.gitlab["types"])
    confidential = cfg.gitlab["confidential"]
    instance = cfg.instance
    # what keys an issue whose payload names no instance (GitLab before 7.4)
    instance_url = cfg.gitlab["url"] or None
    merge_requests = cfg.gitlab["merge_requests"]
    known = _Learned(store)
    app = Bottle(catchall=True)
    # every route builds its own answer: no JSON or template plugin wraps the callbacks
    app.uninstall(True)

    @app.hook("before_request")
    def tag_request() -> None:
        headers = request.environ["gitlab2trello.headers"] = Headers(request.environ)
        response.set_header("X-Request-Id", observe.new_request_id(headers.get("X-Request-Id")))

    @app.post("/issue")
    def issue() -> HTTPResponse:
        answer = receive()
        observe.count_delivery(OUTCOMES.get(answer.status_code) or _Answer.outcome_of(answer))
        answer.set_header("X-Request-Id", observe.request_id.get())
        return answer

    def read_body() -> bytes | HTTPResponse:
        environ = request.environ
        length = request.content_length  # -1 when not given
        if length > max_body:
            return _text(413, f"body larger than {max_body} bytes")
        if length >= 0 and "HTTP_TRANSFER_ENCODING" not in environ:
            # the length is known: read it straight from the server (uWSGI has it in memory)
            # rather than through Bottle's copy into a buffer of its own
            return environ["wsgi.input"].read(length)
        body = request.body.read(max_body + 1)
        if len(body) > max_body:
            return _text(413, f"body larger than {max_body} bytes")
        return body

    def receive() -> HTTPResponse:
        body = read_body()
        if isinstance(body, HTTPResponse):
            return body
        headers = request.environ["gitlab2trello.headers"]
        try:
            gitlab_hook.authenticate(
                headers,
                body,
                secret_token=secret_token,
                signing_token=signing_token,
                now=clock(),
                tolerance=tolerance,
            )
        except gitlab_hook.Unauthorized as exc:
            log.warning("delivery refused: %s (from %s)", exc, request.remote_addr)
            return _text(401, str(exc))
        try:
            parsed = gitlab_hook.parse_delivery(
                headers, body, types=types, instance=instance_url, merge_requests=merge_requests
            )
        except gitlab_hook.BadDelivery as exc:
            log.warning("delivery rejected: %s", exc)
            return _text(400, str(exc))
        if isinstance(parsed, gitlab_hook.Ignored):
            log.info("delivery ignored: %s", parsed.reason)
            return _json(200, {"status": "ignored", "reason": parsed.reason})
        event = parsed.event
        if isinstance(event, MergeRequestEvent):
            key, kind, reason = event.key, "mr", None
        else:
            key, kind = event.issue_key, "note" if event.note else "issue"
            reason = _confidential_reason(event, confidential, store)
        if reason is None and kind == "note" and cfg.twoway["enabled"]:
            known.refresh()
            if known.gitlab_username and event.author == known.gitlab_username:
                reason = "a comment the bridge wrote (copied from Trello) is not copied back"
        if reason:
            log.info("%s -> ignored: %s", event.describe, reason)
            return _json(200, {"status": "ignored", "reason": reason})
        return accept(
            parsed.dedupe_key, key, event.to_json(), kind, event.updated_at, event.describe
        )

    def accept(
        dedupe_key: str,
        key: str,
        text: str,
        kind: str,
        updated_at: float | None,
        describe: str,
        what: str = "delivery",
    ) -> HTTPResponse:
        """Store one delivery durably and say so: 202 queued, 200 duplicate, 503."""
        try:
            delivery_id, created = store.add_delivery(
                dedupe_key, key, text, kind=kind, updated_at=updated_at, now=clock()
            )
        except StoreError as exc:
            log.error("%s not stored: %s", what, exc)
            return _text(503, f"cannot store the {what} right now; nothing was accepted")
        if not created:
            log.info("%s -> duplicate of delivery %d", describe, delivery_id)
            return _json(200, {"status": "duplicate", "delivery": delivery_id})
        log.info("%s -> queued (delivery %d)", describe, delivery_id)
        return _json(202, {"status": "queued", "delivery": delivery_id})

    twoway = cfg.twoway
    trello_secret = cfg.trello["secret"]
    callback_url = twoway["callback_url"]
    new_card_lists = frozenset(cfg.new_card_lists()) if twoway["create_issues"] else frozenset()

    @app.route("/trello", method=["GET", "HEAD"])
    def trello_check() -> HTTPResponse:
        # Trello sends HEAD to the callback URL when a webhook is created and needs a 200
        return _text(200, "gitlab2trello: Trello webhook endpoint")

    @app.post("/trello")
    def trello_action() -> HTTPResponse:
        answer = receive_action()
        answer.set_header("X-Request-Id", observe.request_id.get())
        return answer

    def receive_action() -> HTTPResponse:
        if not twoway["enabled"]:
            return _text(404, "two-way sync is off ([twoway] enabled = false)")
        body = read_body()
        if isinstance(body, HTTPResponse):
            return body
        headers = request.environ["gitlab2trello.headers"]
        try:
            trello_hook.verify(headers, body, secret=trello_secret, callback_url=callback_url)
        except trello_hook.Unauthorized as exc:
            log.warning("Trello action refused: %s (from %s)", exc, request.remote_addr)
            return _text(401, str(exc))
        try:
            parsed = trello_hook.parse(body)
        except trello_hook.BadDelivery as exc:
            log.warning("Trello action rejected: %s", exc)
            return _text(400, str(exc))
        reason = parsed.reason if isinstance(parsed, trello_hook.Ignored) else None
        if reason is None:
            assert isinstance(parsed, CardAction)
            known.refresh()
            reason = trello_hook.ignored_reason(
                parsed,
                twoway["sync"],
                own_member=known.member_id,
                boards=known.boards,
                new_card_lists=new_card_lists,
            )
        if reason is not None:
            log.info("Trello action ignored: %s", reason)
            return _json(200, {"status": "ignored", "reason": reason})
        assert isinstance(parsed, CardAction)
        try:
            issue_key = store.issue_for_card(parsed.card_id) or f"trello-card:{parsed.card_id}"
        except StoreError as exc:
            log.error("Trello action not stored: %s", exc)
            return _text(503, "cannot store the action right now; nothing was accepted")
        return accept(
            f"trello:{parsed.id}",
            issue_key,
            parsed.to_json(),
            "card",
            parsed.date,
            parsed.describe,
            what="action",
        )

    @app.get("/hello/<name>")
    def hello(name: str) -> str:
        response.content_type = "text/plain; charset=utf-8"
        return f"Hello {name}!\n"

    @app.get("/metrics")
    def metrics() -> HTTPResponse:
        try:
            counts = store.health()
        except StoreError:
            counts = {}
        body, content_type = observe.render(counts)
        return HTTPResponse(body, status=200, headers={"Content-Type": content_type})

    @app.get("/healthz")
    def healthz() -> HTTPResponse:
        try:
            counts = store.health()
        except StoreError as exc:
            return _json(
                503,
                {
                    "status": "error",
                    "instance": instance,
                    "store": f"unavailable: {exc}",
                    "backend": store.backend,
                    "trello_configured": False,
                },
            )
        payload = {
            "status": "ok",
            "instance": instance,
            "store": "ok",
            "backend": store.backend,
            **counts,
            "trello_configured": cfg.trello_configured,
        }
        if not cfg.trello_configured:
            payload["warning"] = "Trello is not configured: deliveries wait in the store"
        return _json(200, payload)

    def plain_error(error: Any) -> str:
        response.content_type = "text/plain; charset=utf-8"
        if error.status_code == 404:
            return f"not found: {request.path}\n"
        if error.status_code == 405:
            return f"method {request.method} not allowed on {request.path}\n"
        return f"{error.status_line}\n"

    for status in (400, 404, 405, 413, 500):
        app.error(status)(plain_error)
    return app


def _confidential_reason(event: IssueEvent, policy: str, store: Store) -> str | None:
    """Why a confidential delivery is not stored, or None when it must be.

    Comments on confidential issues are copied only with ``mirror``. With ``skip`` a confidential
    issue gets no card; it is still stored when its issue already has one, so that the worker
    archives that card.
    """
    if not event.confidential or policy == "mirror":
        return None
    if event.note is not None:
        return "comments on confidential issues are not copied"
    if policy == "skip" and not store.has_card(event.issue_key):
        return "confidential issues are not synced ([gitlab] confidential = skip)"
    return None


class _Learned:
    """What the worker learned and wrote down for the edge: the bridge's own Trello member, the
    boards it manages and its own GitLab user (re-read every few seconds; None until known)."""

    def __init__(self, store: Store, ttl: float = 5.0) -> None:
        self.store = store
        self.ttl = ttl
        self._read_at = -ttl
        self.member_id: str | None = None
        self.boards: frozenset[str] | None = None
        self.gitlab_username: str | None = None

    def refresh(self) -> None:
        now = time.monotonic()
        if now - self._read_at < self.ttl:
            return
        try:
            self.member_id = self.store.meta("trello_member_id")
            self.gitlab_username = self.store.meta("gitlab_username")
            boards = self.store.meta("trello_boards")
            self.boards = frozenset(json.loads(boards)) if boards else None
        except (StoreError, ValueError):
            return
        self._read_at = now


def _startup_warnings(cfg: config_module.Config) -> None:
    if not cfg.gitlab["secret_token"] and not cfg.gitlab["signing_token"]:
        log.warning(
            "neither [gitlab] secret_token nor signing_token is set: every delivery is accepted"
        )
    if not cfg.trello_configured:
        log.warning("Trello is not configured: deliveries are stored and wait until it is")


def _first_process() -> bool:
    try:
        import uwsgi  # type: ignore[import-not-found]
    except ImportError:
        return True
    return uwsgi.worker_id() <= 1


def create_application() -> Bottle:
    """The service's application, from ``config.ini`` and the environment."""
    memory.limit_malloc_arenas()  # before the request threads allocate
    cfg = config_module.load()
    observe.setup_logging(cfg.server["log_level"], observe.secrets_of(cfg))
    observe.setup_metrics(cfg.metrics_dir, cfg.server["instance"])
    if _first_process():
        _startup_warnings(cfg)
    return make_app(cfg)


application = create_application()

if __name__ == "__main__":
    application.run(host="127.0.0.1", port=8080)
