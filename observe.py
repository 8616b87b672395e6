"""What the bridge tells the people who run it: log lines and Prometheus metrics.

Logs: one format for every process, a request id on every line (``[r-…]`` for a webhook
request, ``[d<id>]`` for the worker delivering that delivery), and a filter that blanks any
configured secret that would reach a log line.

Metrics: counters and histograms live in ``prometheus_client``'s multiprocess files (one per
process of the uWSGI service, in a folder per start of the service), so ``GET /metrics`` sums
every web process and the worker; gauges that describe the queue are read from the store when
scraped.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import os
import re
import shutil
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


# ---------------------------------------------------------------------- logs


class _Context(logging.Filter):
    """Adds the request id and blanks secrets."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s and len(s) >= 4]

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        if self.secrets:
            message = record.getMessage()
            for secret in self.secrets:
                message = message.replace(secret, "***")
            record.msg, record.args = message, None
        return True


class _Formatter(logging.Formatter):
    """``FORMAT``, with the timestamp's text made once a second rather than once a line (a
    webhook request writes one line, and ``Formatter`` cost a sixth of the request)."""

    def __init__(self) -> None:
        super().__init__(FORMAT)
        self._second = -1
        self._stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:
            return super().format(record)
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second))
            self._second = second
        return (
            f"{self._stamp},{int(record.msecs):03d} {record.levelname} {record.name}"
            f" [{record.__dict__.get('request_id', '-')}] {record.getMessage()}"
        )


def setup_logging(level: str = "info", secrets: Iterable[str] = ()) -> None:
    """Configure the root logger once per process.

    ``FORMAT`` names no thread, process or source line, so a record is made without looking
    them up (the knobs of the logging HOWTO's "Optimization"): a third of a line's cost.
    """
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # no walk up the stack for the caller's file and line
    handler = logging.StreamHandler()
    handler.setFormatter(_Formatter())
    handler.addFilter(_Context(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("urllib3").setLevel(logging.WARNING)


class _Ids:
    """Request ids of one process: a random prefix drawn once per process, then a counter.

    Unique across processes and restarts without a system call per request (``os.urandom``
    releases the GIL, and the request threads of a busy process then queue for it again).
    """

    def __init__(self) -> None:
        self._pid = -1
        self._prefix = ""
        self._next = itertools.count().__next__

    def new(self) -> str:
        pid = os.getpid()
        if pid != self._pid:  # first use in this process (uWSGI forks without at-fork hooks)
            self._prefix = "r-" + os.urandom(4).hex()
            self._next = itertools.count().__next__
            self._pid = pid
        return f"{self._prefix}{self._next() & 0xFFFFFF:06x}"


_ids = _Ids()


def new_request_id(given: str | None = None) -> str:
    """Use a sane ``X-Request-Id`` from nginx or the client, else make one; set it for logs."""
    rid = given if given and _SAFE_ID.match(given) else _ids.new()
    request_id.set(rid)
    return rid


def secrets_of(cfg: Any) -> list[str]:
    """Every configured value that must never reach a log line."""
    secrets = [
        cfg.trello["token"],
        cfg.gitlab["secret_token"],
        cfg.gitlab["signing_token"],
        cfg.gitlab["private_token"],
        cfg.trello["secret"],
    ]
    if cfg.postgresql:
        password = urllib.parse.urlsplit(cfg.database_url).password
        if password:  # as written in the URL, and as a driver's message may quote it decoded
            secrets += [password, urllib.parse.unquote(password)]
    return secrets


# ---------------------------------------------------------------------- metrics


class _Metrics:
    """The metric objects, created by ``setup_metrics`` (no-ops until then)."""

    def __init__(self) -> None:
        self.ready = False
        self.multiprocess_dir: str | None = None

    def setup(self, folder: Path | None) -> None:
        if self.ready:
            return
        if folder is not None:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                logging.getLogger("gitlab2trello.metrics").warning(
                    "metrics of this process only: cannot create %s: %s", folder, exc
                )
            else:
                os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
                self.multiprocess_dir = str(folder)
        from prometheus_client import Counter, Histogram

        self.received = Counter(
            "gitlab2trello_deliveries_received",
            "Webhook deliveries received, by outcome",
            ["outcome"],
        )
        self.trello_calls = Counter(
            "gitlab2trello_trello_calls",
            "Trello API calls, by method and HTTP status (0: no answer)",
            ["method", "status"],
        )
        self.latency = Histogram(
            "gitlab2trello_delivery_latency_seconds",
            "Time from receiving a delivery to its change being on the card",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 21600, 86400),
        )
        self.reconcile_runs = Counter(
            "gitlab2trello_reconcile_runs", "Reconciliation passes, by result", ["result"]
        )
        self.reconcile_fixes = Counter(
            "gitlab2trello_reconcile_fixes",
            "Issues a reconciliation pass found out of date and queued",
        )
        self.ready = True


METRICS = _Metrics()


def setup_metrics(metrics_dir: Path, instance: str = "") -> None:
    """Turn metrics on for this process; under uWSGI, in the folder of this service start.

    Several instances on one host keep apart: each has its own folder under ``metrics/``.
    """
    try:
        import uwsgi  # type: ignore[import-not-found]
    except ImportError:
        METRICS.setup(None)
        return
    base = metrics_dir
    if instance:
        base = base / re.sub(r"[^A-Za-z0-9._-]", "_", instance)
    folder = base / str(uwsgi.masterpid())
    if base.exists():  # files of earlier starts of the service
        for old in base.iterdir():
            if old.name != folder.name:
                shutil.rmtree(old, ignore_errors=True)
    METRICS.setup(folder)


def count_delivery(outcome: str) -> None:
    if METRICS.ready:
        child = _received.get(outcome)
        if child is None:  # labels() takes a lock and builds a key: once per outcome
            child = _received[outcome] = METRICS.received.labels(outcome)
        child.inc()


_received: dict[str, Any] = {}


def count_trello_call(method: str, path: str, status: int | None, elapsed_ms: float) -> None:
    if METRICS.ready:
        METRICS.trello_calls.labels(method, str(status or 0)).inc()


def observe_latency(seconds: Iterable[float]) -> None:
    if METRICS.ready:
        for value in seconds:
            METRICS.latency.observe(max(value, 0.0))


def count_reconcile(ok: bool, fixes: int = 0) -> None:
    if METRICS.ready:
        METRICS.reconcile_runs.labels("ok" if ok else "error").inc()
        if fixes:
            METRICS.reconcile_fixes.inc(fixes)


def render(store_counts: dict[str, int]) -> tuple[bytes, str]:
    """The text exposition: every process's counters plus the store's gauges."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.core import GaugeMetricFamily

    registry = CollectorRegistry()
    if METRICS.multiprocess_dir:
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry, path=METRICS.multiprocess_dir)
    else:
        from prometheus_client import REGISTRY

        registry = REGISTRY

    class StoreGauges:
        def collect(self) -> Iterator[GaugeMetricFamily]:
            for name, key, text in (
                ("gitlab2trello_queue_depth", "pending", "Deliveries waiting to be delivered"),
                ("gitlab2trello_waiting_for_card", "waiting_for_card", "Comments waiting"),
                ("gitlab2trello_dead_letters", "dead_letters", "Deliveries given up on"),
                ("gitlab2trello_cards", "cards", "Issues that have a card"),
            ):
                yield GaugeMetricFamily(name, text, value=store_counts.get(key, 0))

    body = generate_latest(registry) + generate_latest(_single(StoreGauges()))
    return body, CONTENT_TYPE_LATEST


def _single(collector: Any) -> Any:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    registry.register(collector)
    return registry
