"""The deployment files at work: deploy/nginx-gitlab2trello.conf in a real nginx in front of the
service, and deploy/uwsgi.ini as uWSGI reads and runs it.

The nginx server block is the file itself, with only its addresses changed: ``listen 80`` becomes
a free loopback port and ``127.0.0.1:8080`` the port of the service's uwsgi socket.
"""

from __future__ import annotations

import configparser
import contextlib
import grp
import http.client
import json
import os
import pwd
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
from tests.nginx import PRODUCTION_SOCKET, UWSGI_PARAMS, Nginx, find_nginx

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
def make_nginx(nginx_binary: str, tmp_path: Path) -> Iterator[Callable[[int], Nginx]]:
    """Start nginx with the deployment's server block in front of a uwsgi socket; stop it after."""
    started: list[Nginx] = []

    def make(upstream_port: int) -> Nginx:
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
