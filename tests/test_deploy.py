"""The deployment files at work: deploy/nginx-gitlab2trello.conf in a real nginx in front of the
service, deploy/uwsgi.ini as uWSGI reads and runs it, and, for several instances,
deploy/nginx-gitlab2trello-upstream.conf in front of two real instances and the systemd units.

The nginx server block is the file itself, with only its addresses changed: ``listen 80`` becomes
a free loopback port and ``127.0.0.1:8080`` (or the upstream's ``127.0.0.1:8081`` and
``127.0.0.1:8082``) the ports of the service's uwsgi sockets.
"""

from __future__ import annotations

import configparser
import contextlib
import grp
import http.client
import itertools
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import (
    ROOT,
    UWSGI,
    Service,
    fixture_bytes,
    free_port,
    issue_payload,
    load_fixture,
    wait_for,
)
from tests.nginx import (
    NGINX_CONF,
    PRODUCTION_SOCKET,
    UPSTREAM_CONF,
    UPSTREAM_SERVERS,
    UWSGI_PARAMS,
    Access,
    Nginx,
    find_nginx,
)

pytestmark = [pytest.mark.integration, pytest.mark.nginx]

DEPLOY = ROOT / "deploy"
UWSGI_INI = DEPLOY / "uwsgi.ini"
APP_READY = "WSGI app 0 (mountpoint='') ready"


def _max_body_bytes() -> int:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ROOT / "config.ini", encoding="utf-8")
    return parser.getint("server", "max_body_bytes")


MAX_BODY = _max_body_bytes()


def wait_healthy(url: str, proc: subprocess.Popen[bytes] | None, log: Callable[[], str]) -> None:
    """Wait until /healthz answers 200 through nginx (502 while uWSGI is still starting)."""
    deadline = time.monotonic() + 30
    status: int | str | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"service exited {proc.returncode}:\n{log()}")
        try:  # a slow first answer (the app still loading) is not an error yet
            status = requests.get(url + "/healthz", timeout=10).status_code
        except requests.RequestException as exc:
            status = repr(exc)
        if status == 200:
            return
        time.sleep(0.05)
    raise RuntimeError(f"/healthz through nginx still {status} after 30 s:\n{log()}")


@dataclass
class Stack:
    """The service (uwsgi socket only) and nginx in front of it; ``service.url`` is nginx's."""

    service: Service
    nginx: Nginx

    @property
    def url(self) -> str:
        return self.nginx.url


@pytest.fixture
def nginx_binary() -> str:
    binary = find_nginx()
    if binary is None:
        pytest.skip("no nginx binary (make test installs Debian's nginx-light)")
    if not UWSGI_PARAMS.exists():
        pytest.fail(f"nginx is installed but {UWSGI_PARAMS} is missing")
    return binary


@pytest.fixture
def make_nginx(
    nginx_binary: str, tmp_path: Path
) -> Iterator[Callable[[int | Sequence[int]], Nginx]]:
    """Start nginx with the deployment's server block in front of a uwsgi socket; stop it after.

    Given several ports, the site for several instances, in front of those.
    """
    started: list[Nginx] = []

    def make(upstream_port: int | Sequence[int]) -> Nginx:
        nginx = Nginx(nginx_binary, tmp_path / f"nginx{len(started)}", upstream_port)
        started.append(nginx)
        return nginx.start()

    yield make
    for nginx in started:
        nginx.stop()


@pytest.fixture
def make_stack(
    make_service: Callable[..., Service], make_nginx: Callable[[int], Nginx]
) -> Callable[..., Stack]:
    """The service on a uwsgi socket behind nginx; both are stopped at the end of the test."""

    def make(settings: dict[str, dict[str, Any]] | None = None) -> Stack:
        service = make_service(settings, start=False)
        socket_port = free_port()
        service.socket_args = ["--socket", f"127.0.0.1:{socket_port}"]
        service.start(wait=False)
        nginx = make_nginx(socket_port)
        service.url = nginx.url  # post(), health() and wait_idle() go through nginx
        wait_healthy(nginx.url, service.proc, lambda: service.log() + nginx.log())
        return Stack(service, nginx)

    return make


@pytest.fixture
def stack(make_stack: Callable[..., Stack]) -> Stack:
    """The service behind nginx, wired to the emulator, with no webhook secret."""
    return make_stack()


def reached_the_service(response: requests.Response) -> bool:
    """The service tags every answer with X-Request-Id; nginx's own answers have none."""
    return "X-Request-Id" in response.headers


def get_from(source: str, port: int, path: str) -> tuple[int, str, bytes]:
    """GET through nginx from another loopback address: (status, Server header, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        return answer.status, answer.getheader("Server", ""), answer.read()
    finally:
        conn.close()


# ------------------------------------------------------------------ nginx in front of the service


def test_seed_payload_through_nginx_becomes_one_card(stack, trello):
    """The 2013 payload, posted through nginx as in the original setup, becomes exactly one card."""
    response = stack.service.post(fixture_bytes("00-seed-2013.json"), key=None, event=None)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "queued"
    assert response.headers["Server"] == "nginx"
    health = stack.service.wait_idle()
    assert health["delivered"] == 1
    cards = trello.cards(list_id=trello.list_id)
    assert [c["name"] for c in cards] == ["[ ISSUE 23 ] New API: create/update/delete file"]
    assert cards[0]["desc"].startswith("http://example.com/diaspora/issues/23\n")


def test_todays_payload_and_headers_pass_through_nginx(make_stack, trello):
    """Fixture 01 with GitLab's headers: token, event and Idempotency-Key all reach the service."""
    headers = load_fixture("headers.json")["01-issue-open.json"]
    stack = make_stack({"gitlab": {"secret_token": headers["X-Gitlab-Token"]}})
    body = fixture_bytes("01-issue-open.json")
    first = stack.service.post(body, key=None, headers=headers)
    assert first.status_code == 202, first.text
    again = stack.service.post(body, key=None, headers=headers)  # GitLab's "Resend request"
    assert again.status_code == 200
    assert again.json() == {"status": "duplicate", "delivery": first.json()["delivery"]}
    wrong = stack.service.post(body, key=None, headers={**headers, "X-Gitlab-Token": "wrong"})
    assert wrong.status_code == 401
    stack.service.wait_idle()
    (card,) = trello.cards(list_id=trello.list_id)
    assert card["name"] == "[ ISSUE 118 ] Export to CSV drops rows with unicode names"
    assert "Ünïcødé" in card["desc"]


def test_hello_through_nginx(stack):
    """GET /hello/<name> is passed on, including a name that is not ASCII."""
    response = requests.get(stack.url + "/hello/x", timeout=10)
    assert response.status_code == 200
    assert response.text == "Hello x!\n"
    assert response.headers["Server"] == "nginx"
    assert reached_the_service(response)
    response = requests.get(stack.url + "/hello/w%C3%B6rld", timeout=10)
    assert response.text == "Hello wörld!\n"


def test_body_over_the_limit_gets_413_from_nginx(stack, trello):
    """One byte over [server] max_body_bytes: 413 from nginx; exactly the limit is stored."""
    payload = json.dumps(issue_payload(3)).encode()
    headers = {"Content-Type": "application/json", "X-Gitlab-Event": "Issue Hook"}
    too_big = payload + b" " * (MAX_BODY + 1 - len(payload))
    response = requests.post(stack.url + "/issue", data=too_big, headers=headers, timeout=30)
    assert response.status_code == 413
    assert "413 Request Entity Too Large" in response.text  # nginx's page, not the service's
    assert not reached_the_service(response)
    health = stack.service.health()
    assert (health["pending"], health["delivered"], health["dead_letters"]) == (0, 0, 0)
    # nginx, uWSGI's limit-post and the service agree: the largest allowed body gets through
    exact = payload + b" " * (MAX_BODY - len(payload))
    response = requests.post(stack.url + "/issue", data=exact, headers=headers, timeout=30)
    assert response.status_code == 202, response.text
    stack.service.wait_idle()
    assert [c["name"] for c in trello.cards()] == ["[ ISSUE 3 ] Issue number 3"]


def test_header_larger_than_the_buffers_gets_400_from_nginx(stack):
    """Headers nginx accepts fit uWSGI's buffer; larger ones are refused by nginx itself."""
    fits = {"X-Padding-1": "a" * 6000, "X-Padding-2": "b" * 6000}
    response = requests.get(stack.url + "/hello/fits", headers=fits, timeout=10)
    assert response.status_code == 200, response.text
    assert reached_the_service(response)
    one_too_long = {"X-Padding": "c" * 9000}
    too_many = {f"X-Padding-{n}": "d" * 6000 for n in range(3)}
    for headers in (one_too_long, too_many):
        response = requests.get(stack.url + "/hello/refused", headers=headers, timeout=10)
        assert response.status_code in (400, 431, 494)
        assert "Request Header Or Cookie Too Large" in response.text
        assert not reached_the_service(response)


def test_no_nginx_version_in_answers(stack):
    """server_tokens off: "Server: nginx" exactly, on the service's answers and on nginx's own."""
    answers = [
        requests.get(stack.url + "/hello/x", timeout=10),
        requests.get(stack.url + "/healthz", timeout=10),
        requests.get(stack.url + "/no-such-page", timeout=10),
        requests.post(stack.url + "/issue", data=b"x" * (MAX_BODY + 1), timeout=30),
    ]
    assert [a.status_code for a in answers] == [200, 200, 404, 413]
    for answer in answers:
        assert answer.headers["Server"] == "nginx"
        assert "nginx/" not in answer.text


def test_unknown_path_is_404_from_nginx(stack):
    """Other paths get nginx's 404: nothing from the document root, nothing from the service."""
    for path in ("/", "/index.html", "/admin", "/issues", "/issue/1", "/static/x.js"):
        response = requests.get(stack.url + path, timeout=10)
        assert response.status_code == 404, path
        assert "document root" not in response.text, path
        assert "<center>nginx</center>" in response.text, path
        assert not reached_the_service(response), path


def test_healthz_and_metrics_only_from_this_machine(stack):
    """/healthz and /metrics answer 127.0.0.1 but not another address; /hello answers both."""
    response = requests.get(stack.url + "/healthz", timeout=10)
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    metrics = requests.get(stack.url + "/metrics", timeout=10)
    assert metrics.status_code == 200
    assert "gitlab2trello_queue_depth" in metrics.text
    port = stack.nginx.port
    assert get_from("127.0.0.2", port, "/healthz")[:2] == (403, "nginx")
    assert get_from("127.0.0.2", port, "/metrics")[:2] == (403, "nginx")
    assert get_from("127.0.0.2", port, "/hello/there") == (200, "nginx", b"Hello there!\n")


# ------------------------------------------------------------------ deploy/uwsgi.ini


def uwsgi_get(ini: Path, key: str) -> subprocess.CompletedProcess[str]:
    """uWSGI's own reading of an ini (include, %d, strict mode): the value of one option."""
    return subprocess.run(
        [str(UWSGI), "--ini", str(ini), "--get", key],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )


def test_production_ini_declares_the_production_settings():
    """uWSGI reads deploy/uwsgi.ini, through its include, in strict mode, with these values."""
    expected = {
        "strict": "true",
        "master": "true",
        "need-app": "true",
        "lazy-apps": "true",
        "die-on-term": "true",
        "harakiri": "20",
        "limit-post": str(MAX_BODY),
        "uid": "gitlab2trello",
        "gid": "gitlab2trello",
        "socket": PRODUCTION_SOCKET,
        "virtualenv": f"{DEPLOY}/../.venv",
        "env": "GITLAB2TRELLO_CONFIG=/etc/gitlab2trello/config.ini",
        "logto2": "/var/log/gitlab2trello/uwsgi.log",
        "log-reopen": "true",
        "module": "server:application",
        "mule": f"{DEPLOY}/../worker.py",
    }
    for key, value in expected.items():
        read = uwsgi_get(UWSGI_INI, key)
        assert read.returncode == 0, f"{key}: {read.stderr}"
        assert read.stdout.strip() == value, key


def test_strict_mode_refuses_an_unknown_key(tmp_path):
    """The check above means something: a misspelt key next to the production ini stops uWSGI."""
    ini = tmp_path / "typo.ini"
    ini.write_text(f"[uwsgi]\nini = {UWSGI_INI}\nsoket = 127.0.0.1:1\n", encoding="utf-8")
    read = uwsgi_get(ini, "socket")
    assert read.returncode == 1
    assert "[strict-mode] unknown config directive: soket" in read.stdout + read.stderr


def production_ini_copy(folder: Path, socket_port: int) -> Path:
    """deploy/uwsgi.ini with only its socket moved to a free port.

    A socket given on the command line would be added to 127.0.0.1:8080, not replace it; %d is
    spelt out so that the include and the relative paths still point into the checkout.
    """
    text = UWSGI_INI.read_text(encoding="utf-8")
    line = f"\nsocket = {PRODUCTION_SOCKET}\n"
    assert text.count(line) == 1
    text = text.replace(line, f"\nsocket = 127.0.0.1:{socket_port}\n")
    copy = folder / "uwsgi.ini"
    copy.write_text(text.replace("%d", f"{DEPLOY}/"), encoding="utf-8")
    return copy


def test_production_ini_runs_behind_the_nginx_config(tmp_path, make_nginx):
    """deploy/uwsgi.ini starts (paths and user overridden), answers via nginx, stops cleanly."""
    socket_port = free_port()
    ini = production_ini_copy(tmp_path, socket_port)
    database = tmp_path / "var" / "gitlab2trello.sqlite3"
    config = tmp_path / "config.ini"
    config.write_text(f"[store]\ndatabase = {database}\n", encoding="utf-8")
    log = tmp_path / "uwsgi.log"
    output = tmp_path / "uwsgi.out"
    overrides = [
        # later options replace single-valued ones read from the ini
        *("--uid", pwd.getpwuid(os.getuid()).pw_name),
        *("--gid", grp.getgrgid(os.getgid()).gr_name),
        *("--virtualenv", sys.prefix),
        *("--logto2", str(log)),
        *("--env", f"GITLAB2TRELLO_CONFIG={config}"),
    ]
    with output.open("wb") as out:
        proc = subprocess.Popen(
            [str(UWSGI), "--ini", str(ini), *overrides],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def logs() -> str:
        texts = [p.read_text(errors="replace") for p in (output, log) if p.exists()]
        return "\n".join(texts)

    try:
        nginx = make_nginx(socket_port)
        wait_healthy(nginx.url, proc, lambda: logs() + nginx.log())
        health = requests.get(nginx.url + "/healthz", timeout=10).json()
        assert health["status"] == "ok"
        assert health["trello_configured"] is False
        assert requests.get(nginx.url + "/hello/prod", timeout=10).text == "Hello prod!\n"
        assert database.exists()  # the configuration named by --env, not /etc/gitlab2trello
        # a stop while a web process is still importing the app ends with need-app's failure
        wait_for(lambda: logs().count(APP_READY) == 2, message="both web processes ready")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, logs()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    text = logs()
    assert "listen backlog is limited to 1024 connections" in text
    assert "spawned uWSGI mule 1" in text
    assert text.count(APP_READY) == 2
    assert "goodbye to uWSGI" in text


# ------------------------------------------------------------------ several instances behind nginx

SINGLE_UNIT = DEPLOY / "gitlab2trello.service"
TEMPLATE_UNIT = DEPLOY / "gitlab2trello@.service"
CHECKOUT = "/opt/gitlab2trello"


def site_directives(path: Path) -> list[str]:
    """The lines of an nginx site file that say something: no comments, no blank lines."""
    text = path.read_text(encoding="utf-8")
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line]


def site_value(path: Path, name: str) -> str:
    """The value of a directive that the site file gives once."""
    (value,) = [d[len(name) :].strip(" ;") for d in site_directives(path) if d.split()[0] == name]
    return value


def seconds(value: str) -> float:
    assert value.endswith("s") and value[:-1].isdigit(), value
    return float(value[:-1])


@dataclass
class Instance:
    """One instance of the service: its uwsgi socket for nginx, plain HTTP (service.url) beside
    it for looking at that instance alone."""

    service: Service
    socket_port: int
    shared_store: bool  # one database for every instance (else each has its own)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.socket_port}"


@pytest.fixture
def shared_database(pg_url: str) -> str | None:
    """The [store] database of every instance: one PostgreSQL database, as in production
    (None would give each its own SQLite file)."""
    return pg_url


@pytest.fixture
def make_instances(
    make_service: Callable[..., Service], shared_database: str | None
) -> Callable[[int], list[Instance]]:
    """Start whole instances of the service (web processes and worker), each with its name."""

    names = itertools.count(1)

    def make(count: int) -> list[Instance]:
        instances = []
        for _ in range(count):
            settings: dict[str, dict[str, Any]] = {"server": {"instance": f"test-{next(names)}"}}
            if shared_database is not None:
                settings["store"] = {"database": shared_database}
            service = make_service(settings, start=False)
            socket_port = free_port()
            service.socket_args = [
                *("--socket", f"127.0.0.1:{socket_port}"),
                *("--http11-socket", f"127.0.0.1:{service.port}"),
            ]
            started = service.start(wait=False)
            instances.append(Instance(started, socket_port, shared_database is not None))
        for instance in instances:
            instance.service.wait_ready()
        return instances

    return make


def stored(instance: Instance) -> int:
    """Deliveries in the instance's store, in whatever state, from its own /healthz."""
    health = instance.service.health()
    return sum(health[k] for k in ("pending", "waiting_for_card", "dead_letters", "delivered"))


def delivery(iid: int) -> tuple[bytes, dict[str, str]]:
    """A new delivery of GitLab's: its body and headers, with an Idempotency-Key of its own."""
    headers = {
        "Content-Type": "application/json",
        "X-Gitlab-Event": "Issue Hook",
        "Idempotency-Key": str(uuid.uuid4()),
    }
    return json.dumps(issue_payload(iid)).encode(), headers


def post(url: str, body: bytes, headers: dict[str, str]) -> requests.Response:
    return requests.post(url + "/issue", data=body, headers=headers, timeout=20)


def finished(nginx: Nginx, count: int, method: str = "POST") -> list[Access]:
    """The access log's requests of one method to the service (not nginx's own answers, such as
    the 404 of Nginx.start's probe), once nginx has logged ``count`` of them."""

    def done() -> list[Access] | None:
        entries = [e for e in nginx.access() if e.method == method and e.upstreams]
        return entries if len(entries) >= count else None

    return wait_for(done, timeout=10, message=f"{count} {method} requests in {nginx.access_path}")


def logged(nginx: Nginx, key: str) -> Access:
    """The access log's line for the delivery with this Idempotency-Key."""
    return wait_for(
        lambda: next((e for e in nginx.access() if e.idempotency_key == key), None),
        timeout=10,
        message=f"the request of {key} in {nginx.access_path}",
    )


@dataclass
class BadInstance:
    """Stands in for an instance in the upstream, on a loopback port.

    ``hang``: accepts each connection, reads the whole uwsgi request, never answers.
    ``close``: reads the whole request, then closes the connection without an answer.
    ``full``: listens, accepts nothing, and its listen queue is full: a connection cannot be made.
    """

    mode: str
    port: int = 0
    requests: list[dict[str, str]] = field(default_factory=list)
    listener: socket.socket = field(default_factory=socket.socket)
    held: list[socket.socket] = field(default_factory=list)

    def start(self) -> BadInstance:
        self.listener.bind(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        if self.mode == "full":
            self.listener.listen(0)
            for _ in range(2):  # the first fills the queue; the second's handshake is dropped
                client = socket.socket()
                client.setblocking(False)
                client.connect_ex(("127.0.0.1", self.port))
                self.held.append(client)
            return self
        self.listener.listen(16)
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # stop() closed the listener
                return
            self.held.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            header = self._exactly(conn, 4)
            variables = self._exactly(conn, int.from_bytes(header[1:3], "little"))
            request: dict[str, str] = {}
            while variables:
                size = int.from_bytes(variables[:2], "little")
                name, variables = variables[2 : 2 + size].decode(), variables[2 + size :]
                size = int.from_bytes(variables[:2], "little")
                request[name] = variables[2 : 2 + size].decode("latin-1")
                variables = variables[2 + size :]
            self._exactly(conn, int(request.get("CONTENT_LENGTH") or 0))
            self.requests.append(request)
            if self.mode == "close":
                conn.close()

    @staticmethod
    def _exactly(conn: socket.socket, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = conn.recv(size - len(data))
            if not chunk:
                raise OSError("closed")
            data += chunk
        return data

    def stop(self) -> None:
        self.listener.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def make_bad_instance() -> Iterator[Callable[[str], BadInstance]]:
    started: list[BadInstance] = []

    def make(mode: str) -> BadInstance:
        started.append(BadInstance(mode).start())
        return started[-1]

    yield make
    for bad in started:
        bad.stop()


def test_upstream_site_has_the_single_sites_locations_and_hardening():
    """Same locations, limits, access rules and hardening as the single site; own timeouts."""
    retimed = ("uwsgi_connect_timeout", "uwsgi_send_timeout", "uwsgi_read_timeout")
    single = [
        d.replace(f"uwsgi_pass {PRODUCTION_SOCKET};", "uwsgi_pass gitlab2trello;")
        for d in site_directives(NGINX_CONF)
        if not d.startswith(retimed)
    ]
    upstream = site_directives(UPSTREAM_CONF)
    start = upstream.index("upstream gitlab2trello {")
    end = upstream.index("}", start)
    block, rest = upstream[start + 1 : end], upstream[:start] + upstream[end + 1 :]
    assert [d for d in rest if not d.startswith((*retimed, "uwsgi_next_upstream"))] == single
    assert all(d.startswith("server ") for d in block), block
    assert len([d for d in rest if d.startswith(retimed)]) == len(retimed)


def test_upstream_site_never_resends_a_post_and_answers_within_10_s():
    """No non_idempotent, failed instances left out, tries bounded, worst case under 10 s."""
    assert site_value(UPSTREAM_CONF, "uwsgi_next_upstream").split() == ["error", "timeout"]
    assert "non_idempotent" not in " ".join(site_directives(UPSTREAM_CONF))
    servers = [d for d in site_directives(UPSTREAM_CONF) if d.startswith("server 127.")]
    assert [d.split()[1] for d in servers] == list(UPSTREAM_SERVERS)
    for server in servers:
        assert re.search(r" max_fails=[1-9]\d* ", server), server
        assert re.search(r" fail_timeout=\d+s;$", server), server
    tries = int(site_value(UPSTREAM_CONF, "uwsgi_next_upstream_tries"))
    assert 2 <= tries <= 3
    passing_on = seconds(site_value(UPSTREAM_CONF, "uwsgi_next_upstream_timeout"))
    connect = seconds(site_value(UPSTREAM_CONF, "uwsgi_connect_timeout"))
    send = seconds(site_value(UPSTREAM_CONF, "uwsgi_send_timeout"))
    read = seconds(site_value(UPSTREAM_CONF, "uwsgi_read_timeout"))
    assert min(passing_on, connect, send) > 0
    assert send <= read
    # the last attempt starts within passing_on, then connects and is answered (or given up)
    assert passing_on + connect + read <= 8


def test_deliveries_spread_over_the_instances(make_instances, make_nginx, trello):
    """Deliveries alternate between the two instances, each stored once, each made a card."""
    instances = make_instances(2)
    names = [i.service.health()["instance"] for i in instances]
    assert names == [i.service.settings["server"]["instance"] for i in instances]
    nginx = make_nginx([i.socket_port for i in instances])
    for iid in range(1, 13):
        response = post(nginx.url, *delivery(iid))
        assert response.status_code == 202, response.text
    entries = finished(nginx, 12)
    assert all(len(e.upstreams) == 1 and e.status == 202 for e in entries), entries
    answered = Counter(e.upstreams[0] for e in entries)
    assert answered == {i.address: 6 for i in instances}
    for instance in instances:  # a shared store holds them all, else each holds its own
        expected = 12 if instance.shared_store else answered[instance.address]
        assert stored(instance) == expected
    for instance in instances:
        instance.service.wait_idle()
    names = sorted(c["name"] for c in trello.cards(list_id=trello.list_id))
    assert names == sorted(f"[ ISSUE {iid} ] Issue number {iid}" for iid in range(1, 13))


def max_fails() -> int:
    (value,) = {
        int(m) for m in re.findall(r"max_fails=(\d+)", " ".join(site_directives(UPSTREAM_CONF)))
    }
    return value


def test_killed_instance_is_skipped_and_no_post_is_lost(make_instances, make_nginx, trello):
    """With one instance killed (kill -9), every POST through nginx gets 202 from the other."""
    survivor, victim = make_instances(2)
    nginx = make_nginx([survivor.socket_port, victim.socket_port])
    for iid in range(1, 5):
        assert post(nginx.url, *delivery(iid)).status_code == 202
    assert {e.upstreams for e in finished(nginx, 4)} == {(survivor.address,), (victim.address,)}
    for instance in (survivor, victim):
        instance.service.wait_idle()
    before = stored(survivor)
    victim.service.kill()
    answers = [post(nginx.url, *delivery(iid)) for iid in range(5, 25)]
    assert [a.status_code for a in answers] == [202] * 20, [a.text for a in answers]
    after = finished(nginx, 24)[4:]
    assert {e.upstreams[-1] for e in after} == {survivor.address}
    # refused: passed on at once, nothing was sent; then left out (max_fails) and not tried
    tried = [e for e in after if e.upstreams == (victim.address, survivor.address)]
    assert 1 <= len(tried) <= max_fails(), after
    assert {e.upstream_statuses for e in tried} == {("502", "202")}
    assert all(e.upstreams == (survivor.address,) for e in after if e not in tried)
    assert stored(survivor) == (24 if survivor.shared_store else before + 20)
    survivor.service.wait_idle()
    assert len(trello.cards(list_id=trello.list_id)) == 24


def test_post_read_by_a_hung_instance_is_not_resent(make_instances, make_bad_instance, make_nginx):
    """A POST an instance read and never answered: 504 within 10 s, not resent to the other."""
    (good,) = make_instances(1)
    hung = make_bad_instance("hang")
    nginx = make_nginx([good.socket_port, hung.port])
    queued = 0
    while not hung.requests:  # round robin: the first or the second POST
        body, headers = delivery(queued + 1)
        started = time.monotonic()
        response = post(nginx.url, body, headers)
        elapsed = time.monotonic() - started
        if response.status_code == 202:
            queued += 1
            assert queued < 3, "nginx never passed a POST to the hung instance"
    assert response.status_code == 504, response.text
    read_timeout = seconds(site_value(UPSTREAM_CONF, "uwsgi_read_timeout"))
    assert read_timeout - 0.5 < elapsed < 10
    assert [r["HTTP_IDEMPOTENCY_KEY"] for r in hung.requests] == [headers["Idempotency-Key"]]
    # (with the shipped timeouts, uwsgi_next_upstream_timeout is over by then as well; the test
    # with an instance that drops the connection at once is the one that fails on non_idempotent)
    entry = logged(nginx, headers["Idempotency-Key"])
    assert (entry.status, entry.upstreams) == (504, (hung.address,))
    # the good instance never stored it: the very same delivery is new to it
    assert stored(good) == queued
    again = good.service.post(body, key=headers["Idempotency-Key"])
    assert (again.status_code, again.json()["status"]) == (202, "queued")


def test_post_dropped_by_an_instance_is_not_resent_but_a_get_is(
    make_instances, make_bad_instance, make_nginx
):
    """An instance read the request and hung up: the POST gets 502, only a GET is passed on."""
    # the drop comes long before uwsgi_next_upstream_timeout: with `non_idempotent` given,
    # nginx would resend this POST to the good instance
    (good,) = make_instances(1)
    dropping = make_bad_instance("close")
    nginx = make_nginx([good.socket_port, dropping.port])
    answers = [post(nginx.url, *delivery(iid)) for iid in (1, 2)]  # one to each
    assert sorted(a.status_code for a in answers) == [202, 502], [a.text for a in answers]
    (dropped,) = dropping.requests
    entry = logged(nginx, dropped["HTTP_IDEMPOTENCY_KEY"])
    assert (entry.status, entry.upstreams) == (502, (dropping.address,))
    assert stored(good) == 1
    for _ in (1, 2):  # one of them is tried on the dropping instance first
        response = requests.get(nginx.url + "/hello/again", timeout=10)
        assert (response.status_code, response.text) == (200, "Hello again!\n")
    gets = finished(nginx, 2, "GET")
    assert {e.upstreams for e in gets} == {(good.address,), (dropping.address, good.address)}
    assert len(dropping.requests) == 2


def test_instance_that_takes_no_connection_is_passed_over(
    make_instances, make_bad_instance, make_nginx
):
    """Connecting times out on an instance whose queue is full: the POST goes to the other."""
    # nothing was sent to the full one, so passing the POST on cannot store it twice
    (good,) = make_instances(1)
    full = make_bad_instance("full")
    nginx = make_nginx([full.port, good.socket_port])
    connect = seconds(site_value(UPSTREAM_CONF, "uwsgi_connect_timeout"))
    answers = [post(nginx.url, *delivery(iid)) for iid in (1, 2)]
    assert [a.status_code for a in answers] == [202, 202], [a.text for a in answers]
    entries = finished(nginx, 2)
    (passed_on,) = [e for e in entries if len(e.upstreams) == 2]
    assert passed_on.upstreams == (full.address, good.address)
    assert passed_on.upstream_statuses == ("504", "202")
    assert connect - 0.1 < passed_on.seconds < connect + 1
    assert stored(good) == 2


# ------------------------------------------------------------------ systemd units


def unit_lines(path: Path) -> list[str]:
    """A unit file's settings: no comments or blank lines, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", path.read_text(encoding="utf-8"))
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith(("#", ";"))]


def unit_setting(path: Path, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in unit_lines(path) if line.startswith(key + "=")]


def test_template_unit_is_the_single_unit_plus_its_instance():
    """gitlab2trello@.service is gitlab2trello.service plus its instance's socket and name."""
    own = ("Description=", "ExecStart=", "Environment=")
    single = [line for line in unit_lines(SINGLE_UNIT) if not line.startswith(own)]
    template = [line for line in unit_lines(TEMPLATE_UNIT) if not line.startswith(own)]
    assert template == single
    assert unit_setting(SINGLE_UNIT, "Environment") == []
    assert unit_setting(TEMPLATE_UNIT, "Environment") == [
        "GITLAB2TRELLO_SOCKET=127.0.0.1:%i",
        "GITLAB2TRELLO_SERVER_INSTANCE=%H-%i",
    ]
    (single_exec,) = unit_setting(SINGLE_UNIT, "ExecStart")
    (template_exec,) = unit_setting(TEMPLATE_UNIT, "ExecStart")
    assert template_exec.split() == [
        *single_exec.split(),
        *("--logto2", "/var/log/gitlab2trello/uwsgi-%i.log"),
        *("--procname-prefix-spaced", "gitlab2trello@%i"),
    ]


@pytest.mark.parametrize("unit", [SINGLE_UNIT, TEMPLATE_UNIT], ids=lambda p: p.name)
def test_units_pass_systemd_analyze_verify(unit, tmp_path):
    """systemd-analyze verify accepts the unit (an instance of the template), without a warning."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("no systemd-analyze")
    # ExecStart must name a program that exists here: the checkout's and the test's uwsgi
    text = unit.read_text(encoding="utf-8").replace(f"{CHECKOUT}/.venv/bin/uwsgi", str(UWSGI))
    (tmp_path / unit.name).write_text(text.replace(CHECKOUT, str(ROOT)), encoding="utf-8")
    name = unit.name.replace("@.", "@8081.")
    checked = subprocess.run(
        [analyze, "verify", str(tmp_path / name)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")


def test_production_ini_takes_its_socket_from_the_environment():
    """deploy/uwsgi.ini listens on 127.0.0.1:8080, or on GITLAB2TRELLO_SOCKET when it is set."""
    assert uwsgi_get(UWSGI_INI, "socket").stdout.strip() == PRODUCTION_SOCKET
    env = {**os.environ, "GITLAB2TRELLO_SOCKET": "127.0.0.1:8081"}
    read = subprocess.run(
        [str(UWSGI), "--ini", str(UWSGI_INI), "--get", "socket"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env=env,
    )
    assert (read.returncode, read.stdout.strip()) == (0, "127.0.0.1:8081")


def test_template_unit_instances_run_behind_the_upstream_site(tmp_path, make_nginx):
    """Run as gitlab2trello@<port> runs them, two instances take deliveries behind the upstream."""
    # the unit's command line and Environment= with %i and %H filled in; the user, virtualenv,
    # log file and configuration are the test's. Each instance listens on its port only and
    # reports its own name.
    host = socket.gethostname()
    (exec_start,) = unit_setting(TEMPLATE_UNIT, "ExecStart")
    ports = [free_port(), free_port()]
    procs: dict[int, subprocess.Popen[bytes]] = {}
    logs: dict[int, Path] = {}
    try:
        for port in ports:
            folder = tmp_path / f"instance-{port}"
            (folder / "db").mkdir(parents=True)
            config = folder / "config.ini"
            config.write_text(f"[store]\ndatabase = {folder / 'db' / 'x.sqlite3'}\n")
            env = dict(os.environ)
            for setting in unit_setting(TEMPLATE_UNIT, "Environment"):
                name, value = setting.replace("%H", host).replace("%i", str(port)).split("=", 1)
                env[name] = value
            command = shlex.split(exec_start.replace("%i", str(port)))
            assert command[0] == f"{CHECKOUT}/.venv/bin/uwsgi"
            command = [str(UWSGI), *(a.replace(CHECKOUT, str(ROOT)) for a in command[1:])]
            logs[port] = folder / "uwsgi.log"
            overrides = [  # as in test_production_ini_runs_behind_the_nginx_config
                *("--uid", pwd.getpwuid(os.getuid()).pw_name),
                *("--gid", grp.getgrgid(os.getgid()).gr_name),
                *("--virtualenv", sys.prefix),
                *("--logto2", str(logs[port])),
                *("--env", f"GITLAB2TRELLO_CONFIG={config}"),
            ]
            with (folder / "uwsgi.out").open("wb") as out:
                procs[port] = subprocess.Popen(
                    [*command, *overrides],
                    cwd=folder,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )

        def text(port: int) -> str:
            files = [logs[port], logs[port].with_name("uwsgi.out")]
            return "\n".join(p.read_text(errors="replace") for p in files if p.exists())

        nginx = make_nginx(ports)
        for port in ports:
            wait_for(lambda p=port: text(p).count(APP_READY) == 2, message=f"instance {port}")
        for iid in (1, 2):
            response = post(nginx.url, *delivery(iid))
            assert response.status_code == 202, response.text + nginx.log()
        entries = finished(nginx, 2)
        assert sorted(e.upstreams for e in entries) == [(f"127.0.0.1:{p}",) for p in sorted(ports)]
        # [server] instance from GITLAB2TRELLO_SERVER_INSTANCE; round robin asks each in turn
        names = {requests.get(nginx.url + "/healthz", timeout=10).json()["instance"] for _ in ports}
        assert names == {f"{host}-{port}" for port in ports}
        for port in ports:
            log = text(port)
            assert f"uwsgi socket 0 bound to TCP address 127.0.0.1:{port} " in log
            assert "uwsgi socket 1 " not in log  # not 127.0.0.1:8080 as well
            procs[port].send_signal(signal.SIGTERM)
        for port in ports:
            assert procs[port].wait(20) == 0, text(port)
    finally:
        for proc in procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
