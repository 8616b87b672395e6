"""A real nginx in front of the service, serving deploy/nginx-gitlab2trello.conf.

Used by the deployment tests and by the benchmarks, so that both run the shipped site file:
the file's `listen 80` and `127.0.0.1:8080` are moved to free loopback ports, everything nginx
writes goes to one temporary folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import requests

from tests.conftest import ROOT, free_port, stop_group

NGINX_CONF = ROOT / "deploy" / "nginx-gitlab2trello.conf"
UWSGI_PARAMS = Path("/etc/nginx/uwsgi_params")
PRODUCTION_SOCKET = "127.0.0.1:8080"


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


class Nginx:
    """A real nginx in the foreground, everything it writes in one temporary folder."""

    def __init__(
        self, binary: str, root: Path, upstream_port: int, *, access_log: bool = True
    ) -> None:
        self.binary = binary
        self.access_log = access_log
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = server_block(self.port, upstream_port)
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
            f"    access_log {self.root / 'access.log' if self.access_log else 'off'};\n"
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
