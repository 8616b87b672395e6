"""The HTTP side of the test emulators, over real HTTP on loopback. Standard library only.

An emulator subclasses ``LoopbackEmulator`` and implements ``_handle(method, target, headers,
body)``, which turns one request into a ``Reply``; this module serves it on a daemon thread:
a threaded HTTP/1.1 server (keep-alive, TCP_NODELAY, a production-sized backlog, no request
log) that writes the reply, or drops the connection with a TCP RST when the reply says
``reset``. ``stop()`` also cuts the keep-alive connections still open.

Also shared: ``ApiError`` and ``error_reply`` for error answers, ``compile_routes`` for the
dispatch tables, and ``serve_until_signalled`` for the ``python -m`` entry points.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import socketserver
import struct
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Self, TypeVar

TEXT = "text/plain; charset=utf-8"


class ApiError(Exception):
    """An error answer: a JSON body when ``body`` is a dict, text/plain otherwise."""

    def __init__(self, status: int, body: str | dict[str, Any]) -> None:
        super().__init__(status, body)
        self.status = status
        self.body = body


@dataclass
class Reply:
    """One answer: status, body, content type and extra headers; or, with ``reset``, no answer
    and a reset connection."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    reset: bool = False


R = TypeVar("R", bound=Reply)
# (method, request target as sent, headers, body) -> the reply.
Respond = Callable[[str, str, Any, bytes], Reply]


def error_reply(exc: ApiError, reply_type: type[R]) -> R:
    """The one place error answers are built: JSON for a dict body, text/plain otherwise."""
    if isinstance(exc.body, dict):
        return reply_type(exc.status, json.dumps(exc.body).encode())
    return reply_type(exc.status, exc.body.encode(), TEXT)


def compile_routes(routes: list[tuple[str, str, str]]) -> list[tuple[str, re.Pattern[str], str]]:
    """``(method, path with {} for one path segment, handler name)`` rows, as regexes."""
    return [
        (method, re.compile("^" + pattern.replace("{}", "([^/]+)") + "$"), name)
        for method, pattern, name in routes
    ]


class EmulatorServer(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog of 5 drops connections under a burst of new ones.
    request_queue_size = 128
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        respond: Respond,
        handler_class: type[EmulatorHandler],
    ) -> None:
        self.respond = respond
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, handler_class)

    def server_bind(self) -> None:
        # Skip HTTPServer's reverse DNS lookup of the bound host.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # clients hanging up are normal here
            super().handle_error(request, client_address)

    def close_connections(self) -> None:
        with self.connections_lock:
            for conn in list(self.connections):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)


class EmulatorHandler(BaseHTTPRequestHandler):
    """Answers GET, POST, PUT, DELETE and PATCH (a subclass may add ``do_HEAD = dispatch``)."""

    protocol_version = "HTTP/1.1"
    server_version = "Emulator"
    sys_version = ""
    server: EmulatorServer

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def extra_headers(self) -> dict[str, str]:
        """Headers sent after Content-Length on every answer."""
        return {}

    def dispatch(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        body = self.rfile.read(length) if length > 0 else b""
        reply = self.server.respond(self.command, self.path, self.headers, body)
        if reply.reset:
            self._reset()
            return
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in self.extra_headers().items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)

    def _reset(self) -> None:
        """Drop the connection with a TCP RST and no response."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()
            self.connection.close()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = dispatch


class LoopbackEmulator:
    """Serves ``_handle`` on ``_host``:``_port`` (0 picks a free port) from ``start()`` to
    ``stop()``, or as a context manager. Subclasses set ``_host``, ``_port`` and the state
    ``_lock`` in ``__init__``, and may set ``_handler_class`` and ``_thread_name``."""

    _handler_class: ClassVar[type[EmulatorHandler]] = EmulatorHandler
    _thread_name: ClassVar[str] = "emulator"
    _host: str
    _port: int
    _lock: threading.RLock
    _server: EmulatorServer | None = None
    _thread: threading.Thread | None = None

    def _handle(self, method: str, target: str, headers: Any, body: bytes) -> Reply:
        raise NotImplementedError

    def start(self) -> Self:
        if self._server is None:
            address = (self._host, self._port)
            self._server = EmulatorServer(address, self._handle, self._handler_class)
            self._port = self._server.server_address[1]
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"{self._thread_name}-{self._port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    def _not_found(self, exc: ApiError) -> bool:
        """Whether ``exc`` means the thing asked for does not exist."""
        return exc.status == 404

    @contextlib.contextmanager
    def _python_api(self) -> Iterator[None]:
        """Hold the state lock; turn API errors into KeyError (not found) or ValueError."""
        with self._lock:
            try:
                yield
            except ApiError as exc:
                if self._not_found(exc):
                    raise KeyError(exc.body) from exc
                raise ValueError(exc.body) from exc


def serve_until_signalled(emulator: LoopbackEmulator, info: dict[str, Any]) -> int:
    """Print ``info`` as one JSON line, serve until SIGTERM or SIGINT, then stop; returns 0."""
    print(json.dumps(info), flush=True)
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    while not stopping.wait(0.2):
        pass
    emulator.stop()
    return 0
