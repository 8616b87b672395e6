"""The load generator: wrk with ``deliveries.lua``, one run, figures back as a ``LoadResult``.

wrk is C with an event loop per thread, so it takes far less of the machine's two cores than a
Python client would. Only requests that never got an answer, timeouts and non-2xx answers count
as failures here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import BENCH_DIR, payload

SCRIPT = BENCH_DIR / "deliveries.lua"
SENTINEL_IID = 987654321
WRK_THREADS = 2


@dataclass
class LoadResult:
    label: str
    connections: int
    seconds: float
    requests: int
    ok: int  # 2xx answers
    other: int  # answers that are not 2xx
    connect_errors: int
    timeouts: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    acked: list[int] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def ok_rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def failures(self) -> int:
        """Non-2xx answers, timeouts and refused connections."""
        return self.other + self.timeouts + self.connect_errors


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def body_file(workdir: Path) -> Path:
    """Today's open-issue delivery with the placeholder issue number, once per work folder."""
    path = workdir / "delivery.json"
    if not path.exists():
        path.write_bytes(payload(SENTINEL_IID))
    return path


def run_wrk(
    url: str,
    *,
    workdir: Path,
    seconds: float,
    connections: int,
    post: bool,
    nonce: str = "bench",
    collect: bool = False,
    quota: int = 0,
    iid_base: int = 0,
    stop_when: Callable[[], bool] | None = None,
    label: str = "",
) -> LoadResult:
    """One wrk run of ``seconds`` (or until ``quota`` answers, or ``stop_when()`` is true)."""
    if not have_wrk():
        raise RuntimeError("wrk is missing: apt-get install -y wrk")
    out = workdir / f"wrk-{nonce}.json"
    out.unlink(missing_ok=True)
    threads = min(WRK_THREADS, connections)
    env = {
        **os.environ,
        "BENCH_MODE": "post" if post else "get",
        "BENCH_NONCE": nonce,
        "BENCH_COLLECT": "1" if collect else "0",
        "BENCH_QUOTA": str(-(-quota // threads) if quota else 0),
        "BENCH_IID_BASE": str(iid_base),
        "BENCH_BODY": str(body_file(workdir)),
        "BENCH_OUT": str(out),
    }
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(SCRIPT),
        url,
    ]
    log = (workdir / f"wrk-{nonce}.txt").open("wb")
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    deadline = time.monotonic() + seconds + 30
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if stop_when is not None and stop_when():
                proc.send_signal(signal.SIGINT)  # wrk stops, prints and runs done()
                stop_when = None
            time.sleep(0.1)
        proc.wait(max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
    if not out.exists():
        text = (workdir / f"wrk-{nonce}.txt").read_text(encoding="utf-8", errors="replace")
        raise RuntimeError(f"wrk wrote no result (exit {proc.returncode}):\n{text[-2000:]}")
    data = json.loads(out.read_text(encoding="utf-8"))
    return LoadResult(
        label=label or nonce,
        connections=connections,
        seconds=data["duration_us"] / 1e6,
        requests=data["requests"],
        ok=data["ok"],
        other=data["other"],
        connect_errors=data["connect_errors"],
        timeouts=data["timeouts"],
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        mean_ms=data["mean_us"] / 1000,
        acked=[int(i) for i in data["acked"]],
    )
