"""A real nginx in front of the service, serving deploy/nginx-gitlab2trello.conf.

Used by the deployment tests and by the benchmarks, so that both run the shipped site file:
the file's `listen 80` and `127.0.0.1:8080` are moved to free loopback ports, everything nginx
writes goes to one temporary folder. Given several ports, nginx serves the site for several
instances instead, deploy/nginx-gitlab2trello-upstream.conf, with the addresses of its upstream
moved to those ports.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.conftest import ROOT, free_port, stop_group

NGINX_CONF = ROOT / "deploy" / "nginx-gitlab2trello.conf"
UPSTREAM_CONF = ROOT / "deploy" / "nginx-gitlab2trello-upstream.conf"
UWSGI_PARAMS = Path("/etc/nginx/uwsgi_params")
PRODUCTION_SOCKET = "127.0.0.1:8080"
# the instances in the upstream block of UPSTREAM_CONF
UPSTREAM_SERVERS = ("127.0.0.1:8081", "127.0.0.1:8082")

# One access log line per request, tab-separated: what the tests read of what nginx did.
# $upstream_addr and $upstream_status list every instance tried, in order ("a, b").
ACCESS_FORMAT = (
    "log_format tests escape=none "
    "'$request_method\\t$uri\\t$status\\t$upstream_addr\\t$upstream_status"
    "\\t$request_time\\t$http_idempotency_key';"
)


def find_nginx() -> str | None:
    """The nginx program, or None when it is not installed."""
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


def server_block(listen_port: int, upstream_port: int) -> str:
    """deploy/nginx-gitlab2trello.conf with its two addresses moved to the test's ports."""
    text = NGINX_CONF.read_text(encoding="utf-8")
    assert text.count("listen 80;") == 1, "the server block should listen on port 80 once"
    assert text.count(PRODUCTION_SOCKET) >= 3, "the locations should pass to 127.0.0.1:8080"
    text = text.replace("listen 80;", f"listen 127.0.0.1:{listen_port};")
    return text.replace(PRODUCTION_SOCKET, f"127.0.0.1:{upstream_port}")


def upstream_site(listen_port: int, upstream_ports: Sequence[int]) -> str:
    """deploy/nginx-gitlab2trello-upstream.conf: its instances moved to the test's ports.

    The upstream block's two `server` lines point at the first two ports; any further port gets
    a copy of the second line.
    """
    text = UPSTREAM_CONF.read_text(encoding="utf-8")
    assert text.count("listen 80;") == 1, "the server block should listen on port 80 once"
    assert len(upstream_ports) >= 2, "the upstream site is for several instances"
    lines = text.splitlines(keepends=True)
    servers = [
        [n for n, line in enumerate(lines) if line.strip().startswith(f"server {address} ")]
        for address in UPSTREAM_SERVERS
    ]
    assert [len(found) for found in servers] == [1, 1], f"one server line each: {UPSTREAM_SERVERS}"
    first, second = lines[servers[0][0]], lines[servers[1][0]]
    moved = [first.replace(UPSTREAM_SERVERS[0], f"127.0.0.1:{upstream_ports[0]}")]
    moved += [
        second.replace(UPSTREAM_SERVERS[1], f"127.0.0.1:{port}") for port in upstream_ports[1:]
    ]
    lines[servers[0][0]] = moved[0]
    lines[servers[1][0]] = "".join(moved[1:])
    return "".join(lines).replace("listen 80;", f"listen 127.0.0.1:{listen_port};")


@dataclass(frozen=True)
class Access:
    """One line of the access log."""

    method: str
    uri: str
    status: int
    upstreams: tuple[str, ...]  # every address tried, in order; () when nginx answered itself
    upstream_statuses: tuple[str, ...]
    seconds: float
    idempotency_key: str


def _listed(value: str) -> tuple[str, ...]:
    return () if value in ("", "-") else tuple(item.strip() for item in value.split(","))


class Nginx:
    """A real nginx in the foreground, everything it writes in one temporary folder.

    ``upstream_port``: the uwsgi port of the service (the single-instance site), or the ports of
    several instances (the upstream site).
    """

    def __init__(
        self,
        binary: str,
        root: Path,
        upstream_port: int | Sequence[int],
        *,
        access_log: bool = True,
    ) -> None:
        self.binary = binary
        self.access_log = access_log
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        if isinstance(upstream_port, int):
            self.server = server_block(self.port, upstream_port)
        else:
            self.server = upstream_site(self.port, upstream_port)
        self.access_path = root / "access.log"
        self.error_log = root / "error.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        temp = self.root / "temp"
        for name in ("body", "uwsgi", "proxy", "fastcgi", "scgi"):
            (temp / name).mkdir(parents=True, exist_ok=True)
        # nginx's default document root (html/ under the prefix): nothing in it may be served
        (self.root / "html").mkdir(exist_ok=True)
        for name in ("index.html", "admin", "issues"):
            (self.root / "html" / name).write_text("from the document root\n", encoding="utf-8")
        # `include uwsgi_params;` is relative to the folder of nginx.conf, as in /etc/nginx
        shutil.copyfile(UWSGI_PARAMS, self.root / "uwsgi_params")
        # as root, workers would run as nobody, who cannot enter pytest's private folders
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf = self.root / "nginx.conf"
        conf.write_text(
            f"{user}worker_processes 1;\n"
            f"error_log {self.error_log} info;\n"
            "events { worker_connections 256; }\n"
            "http {\n"
            f"    {ACCESS_FORMAT}\n"
            f"    access_log {f'{self.access_path} tests' if self.access_log else 'off'};\n"
            f"    client_body_temp_path {temp / 'body'};\n"
            f"    uwsgi_temp_path {temp / 'uwsgi'};\n"
            f"    proxy_temp_path {temp / 'proxy'};\n"
            f"    fastcgi_temp_path {temp / 'fastcgi'};\n"
            f"    scgi_temp_path {temp / 'scgi'};\n"
            f"{self.server}\n"
            "}\n",
            encoding="utf-8",
        )
        return conf

    def start(self) -> Nginx:
        conf = self.write_config()
        command = [self.binary, "-p", f"{self.root}/", "-c", str(conf), "-e", str(self.error_log)]
        checked = subprocess.run(
            [*command, "-t", "-q", "-g", f"pid {self.root / 'test.pid'};"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert checked.returncode == 0, f"nginx -t: {checked.stderr}{self.log()}"
        self.proc = subprocess.Popen(
            [*command, "-g", f"daemon off; pid {self.root / 'nginx.pid'};"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(requests.ConnectionError):
                requests.get(self.url + "/", timeout=1)
                return self
            time.sleep(0.05)
        raise RuntimeError(f"nginx not answering after 10 s:\n{self.log()}")

    def stop(self) -> None:
        stop_group(self.proc)

    def log(self) -> str:
        if not self.error_log.exists():
            return ""
        return self.error_log.read_text(encoding="utf-8", errors="replace")

    def access(self) -> list[Access]:
        """Every request nginx has finished so far, oldest first."""
        if not self.access_path.exists():
            return []
        entries = []
        for line in self.access_path.read_text(encoding="utf-8").splitlines():
            fields = line.split("\t")
            if len(fields) != 7:  # a line nginx is still writing
                continue
            method, uri, status, addrs, statuses, seconds, key = fields
            entries.append(
                Access(
                    method,
                    uri,
                    int(status),
                    _listed(addrs),
                    _listed(statuses),
                    float(seconds),
                    "" if key in ("", "-") else key,
                )
            )
        return entries
