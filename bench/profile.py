"""profile: the web path's CPU per delivery, before and after a change, and where it goes.

Two versions of the code run side by side in one run: "after" is this checkout, "before" the
commit ``BENCH_BEFORE`` names (default ``79ecf59``), exported with ``git archive`` into the work
folder. Both run under the same Python, the same uWSGI and the same uWSGI options (this
checkout's ``deploy/uwsgi-base.ini`` is copied over the export's), each on SQLite and on a new
PostgreSQL database, one instance, direct to uWSGI's HTTP socket; no instance has Trello
credentials, so the worker mules idle.

As in ack and pg, a figure is the median of slices; within a slice hello then POST on the same
instance, and the instances take turns (in reverse order every other slice), so that before and
after see the same neighbours. During every POST slice the CPU time of the instance's web
processes is read from /proc; after each slice the store is read: every delivery id answered
2xx must be there.

Then, under a separate POST load (outside the timed slices, so that the sampler's cost does not
reach the figures), py-spy samples each web process of each instance; the stacks are folded
into the functions that take the web path's busy time, inclusive and self.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.ack import SPAN, Cell, check_store, warm_up
from bench.common import Bridge, Options, Postgres, Section, Table, Target, fmt, running
from bench.load import LoadResult, run_wrk
from bench.pg import IDLE_TRELLO, CpuMeter
from tests.conftest import ROOT

BEFORE_REF = os.environ.get("BENCH_BEFORE", "79ecf59")
VERSIONS = ("before", "after")
STORES = ("SQLite", "PostgreSQL")
CONNECTIONS = 16
RATE = 250  # py-spy samples per second and process
TOP = 12
PROFILE_IID_BASE = 800_000_000  # issue numbers of the profiling loads, apart from the slices'

Reading = tuple[dict[str, dict[int, float]], float]


@dataclass
class Profile:
    """What py-spy saw in the web processes of one instance: its stacks, root first."""

    processes: int = 0
    rounds: int = 0  # times py-spy looked at the processes (rate x seconds x processes)
    errors: int = 0
    stacks: collections.Counter[tuple[str, ...]] = field(default_factory=collections.Counter)
    failures: list[str] = field(default_factory=list)

    @property
    def traces(self) -> int:
        """Thread stacks py-spy kept (it leaves out the threads it takes for idle)."""
        return sum(self.stacks.values())


@dataclass
class Run:
    """One version of the code on one store: its instance, slices and CPU."""

    version: str
    store: str
    root: Path
    bridge: Bridge
    workdir: Path
    cell: Cell = field(init=False)
    web: float = 0.0  # CPU seconds of the web processes during the POST slices
    hello_web: float = 0.0  # the same during the hello slices
    hello_ok: int = 0  # hello requests answered 2xx
    web_slices: list[float] = field(default_factory=list)  # µs per 2xx delivery, by slice
    postgres: float = 0.0  # CPU seconds of PostgreSQL during the POST slices
    profile: Profile | None = None

    def __post_init__(self) -> None:
        self.cell = Cell(self.version, "direct", CONNECTIONS)

    @property
    def key(self) -> str:
        return f"{self.version}-{self.store.lower()}"

    def per_delivery(self, seconds: float) -> float | None:
        """Microseconds per delivery answered 2xx."""
        return 1e6 * seconds / self.cell.ok if self.cell.ok else None


# ---------------------------------------------------------------------------- the code


def git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=60, check=False
    )


def describe(ref: str) -> str:
    """``abc1234 subject`` of a commit."""
    return git("log", "-1", "--format=%h %s", ref).stdout.strip()


def export(ref: str, dest: Path) -> tuple[Path | None, str]:
    """The tree of commit ``ref`` in ``dest``, with this checkout's uWSGI options.

    Returns the folder (None when ``ref`` is not in this clone) and what to say about it.
    """
    found = git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    if found.returncode != 0:
        return None, f"`{ref}` is not in this clone (a shallow clone?): only after is measured"
    commit = found.stdout.strip()
    dest.mkdir(parents=True)
    archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", commit], stdout=subprocess.PIPE)
    untar = subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, check=False)
    assert archive.stdout is not None
    archive.stdout.close()
    if archive.wait(60) != 0 or untar.returncode != 0:
        return None, f"`git archive {ref}` failed: only after is measured"
    ini = dest / "deploy" / "uwsgi-base.ini"
    same = ini.exists() and ini.read_bytes() == (ROOT / "deploy/uwsgi-base.ini").read_bytes()
    shutil.copyfile(ROOT / "deploy" / "uwsgi-base.ini", ini)
    told = "the same as" if same else "replaced by"
    return dest, f"{describe(commit)}; its deploy/uwsgi-base.ini {told} this checkout's"


def checkout() -> str:
    """``abc1234 subject`` of this checkout's HEAD, and how many files differ from it."""
    changed = [line for line in git("status", "--porcelain").stdout.splitlines() if line]
    dirty = f" plus {len(changed)} uncommitted file(s)" if changed else ""
    return describe("HEAD") + dirty


# ---------------------------------------------------------------------------- CPU


def web_pids(bridge: Bridge) -> list[int]:
    return [pid for name, pid in bridge.pids().items() if name.startswith("worker")]


def web_seconds(bridge: Bridge, before: Reading, after: Reading) -> float:
    """CPU seconds of one instance's web processes between two ``CpuMeter`` readings."""
    web_before, web_after = before[0]["web"], after[0]["web"]
    return sum(
        max(0.0, web_after.get(pid, 0.0) - web_before.get(pid, 0.0)) for pid in web_pids(bridge)
    )


def measure(runs: list[Run], meter: CpuMeter, options: Options) -> None:
    for run in runs:
        warm_up(run.bridge, run.bridge.url, options, run.workdir, run.key)
    run_index = 0
    for index in range(options.slices):
        order = runs if index % 2 == 0 else list(reversed(runs))
        for run in order:
            nonce = f"{run.key}-{index}"
            hello_before = meter.read()
            hello = run_wrk(
                run.bridge.url + "/hello/x",
                workdir=run.workdir,
                seconds=options.duration,
                connections=CONNECTIONS,
                post=False,
                nonce=f"hello-{nonce}",
            )
            before = meter.read()
            run.hello_web += web_seconds(run.bridge, hello_before, before)
            run.hello_ok += hello.ok
            post = run_wrk(
                run.bridge.url + "/issue",
                workdir=run.workdir,
                seconds=options.duration,
                connections=CONNECTIONS,
                post=True,
                nonce=nonce,
                collect=True,
                iid_base=run_index * SPAN,
            )
            after = meter.read()
            run_index += 1
            seconds = web_seconds(run.bridge, before, after)
            run.web += seconds
            run.web_slices.append(1e6 * seconds / post.ok if post.ok else 0.0)
            if run.store == "PostgreSQL":
                run.postgres += CpuMeter.used(before, after)[0]["postgres"]
            run.cell.hello.append(hello)
            run.cell.post.append(post)
            check_store(run.bridge, nonce, post, run.cell)


# ---------------------------------------------------------------------------- py-spy


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def read_raw(path: Path) -> collections.Counter[tuple[str, ...]]:
    """py-spy's ``--format raw``: one line per stack, ``frame;frame;... count``, root first."""
    stacks: collections.Counter[tuple[str, ...]] = collections.Counter()
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if count.isdigit():  # an empty stack: a thread in uWSGI's C, no Python frame
            stacks[tuple(stack.split(";")) if stack else ()] += int(count)
    return stacks


def sample(run: Run, seconds: float, index: int) -> Profile:
    """py-spy on each web process of ``run`` for ``seconds``, under a POST load of its own."""
    found = Profile()
    spy = py_spy()
    if spy is None:
        found.failures.append("py-spy is missing")
        return found
    load: list[LoadResult] = []
    loader = threading.Thread(
        target=lambda: load.append(
            run_wrk(
                run.bridge.url + "/issue",
                workdir=run.workdir,
                seconds=seconds + 2,
                connections=CONNECTIONS,
                post=True,
                nonce=f"profile-{run.key}",
                iid_base=PROFILE_IID_BASE + index * SPAN,
            )
        ),
        daemon=True,
    )
    loader.start()
    time.sleep(1.0)  # the load is on
    spies = []
    for pid in web_pids(run.bridge):
        out = run.workdir / f"py-spy-{pid}.txt"
        log = (run.workdir / f"py-spy-{pid}.log").open("wb")
        command = [
            spy,
            "record",
            "--nonblocking",
            "--format",
            "raw",
            "--rate",
            str(RATE),
            "--function",
            "--full-filenames",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, round(seconds))),
            "-o",
            str(out),
        ]
        spies.append((pid, out, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)))
        log.close()
    for pid, out, proc in spies:
        try:
            code = proc.wait(seconds + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait(10)
        text = (run.workdir / f"py-spy-{pid}.log").read_text(encoding="utf-8", errors="replace")
        counts = re.search(r"Samples: (\d+) Errors: (\d+)", text)
        if code != 0 or not out.exists() or counts is None:
            tail = " ".join(text.split()[-30:])
            found.failures.append(f"py-spy on web process {pid} failed (exit {code}): {tail}")
            continue
        found.processes += 1
        found.rounds += RATE * max(1, round(seconds))
        found.errors += int(counts.group(2))
        found.stacks.update(read_raw(out))
    loader.join(seconds + 60)
    return found


FRAME_RE = re.compile(r"^(?P<name>.*) \((?P<file>.*):(?P<line>\d+)\)$")
STDLIB = Path(sysconfig.get_paths()["stdlib"])


def where(path: str, root: Path) -> str:
    """A file as the report names it: project-relative, package-relative or stdlib/."""
    file = Path(os.path.normpath(path))  # uWSGI's chdir makes them deploy/../server.py
    if file.is_relative_to(root):
        return str(file.relative_to(root))
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1]
    if file.is_relative_to(STDLIB):
        return "stdlib/" + str(file.relative_to(STDLIB))
    return path


Function = tuple[str, str]  # name and file (project-relative): a row of the tables

# py-spy (without --native, with --nonblocking) takes many blocked threads for active. A stack
# whose top is one of these waits for something else, on no CPU of its own: it is counted
# apart, and the shares are of the other stacks.
WAITS: dict[Function, str] = {
    ("Condition.wait", "stdlib/threading.py"): "threading wait",
    ("Event.wait", "stdlib/threading.py"): "threading wait",
    ("Handler.acquire", "stdlib/logging/__init__.py"): "logging lock",
    ("Connection.wait", "psycopg/connection.py"): "PostgreSQL's answer",
}
NO_PYTHON = "no Python frame"


@dataclass
class Shares:
    """Per function: share of the working stacks inclusive and self, and its first line."""

    working: int  # stacks that wait for nothing
    waiting: collections.Counter[str]  # the others, by what they wait for
    total: dict[Function, float]
    own: dict[Function, float]
    line: dict[Function, str]


def shares(profile: Profile, root: Path) -> Shares:
    total: collections.Counter[Function] = collections.Counter()
    own: collections.Counter[Function] = collections.Counter()
    waiting: collections.Counter[str] = collections.Counter()
    line: dict[Function, str] = {}
    working = 0
    for stack, count in profile.stacks.items():
        keys: list[Function] = []
        for frame in stack:
            match = FRAME_RE.match(frame)
            if match is None:
                keys.append((frame, ""))
                continue
            key = (match["name"], where(match["file"], root))
            line[key] = match["line"]
            keys.append(key)
        if not keys or keys[-1] in WAITS:
            waiting[WAITS[keys[-1]] if keys else NO_PYTHON] += count
            continue
        working += count
        for key in set(keys):
            total[key] += count
        own[keys[-1]] += count
    share = 100 / (working or 1)
    return Shares(
        working,
        waiting,
        {k: n * share for k, n in total.items()},
        {k: n * share for k, n in own.items()},
        line,
    )


# ---------------------------------------------------------------------------- the run


def run(options: Options) -> Section:
    section = Section(
        "profile",
        "web CPU per delivery before and after a change, SQLite and PostgreSQL, and where it goes",
    )
    base = options.subdir("profile")
    before_root, before_text = export(BEFORE_REF, base / "before-code")
    roots = {"after": ROOT} if before_root is None else {"before": before_root, "after": ROOT}
    about = {"before": before_text, "after": f"this checkout, {checkout()}"}
    pg = Postgres()
    with running(pg):
        runs: list[Run] = []
        for store in STORES:
            for version, root in roots.items():
                workdir = base / f"{version}-{store.lower()}"
                url = pg.database() if store == "PostgreSQL" else None
                bridge = Bridge(
                    workdir / "service",
                    {**IDLE_TRELLO, "server": {"instance": version}},
                    database_url=url,
                    root=root,
                )
                runs.append(Run(version, store, root, bridge, workdir))
        bridges = [r.bridge for r in runs]
        with running(*bridges):
            for bridge in bridges:
                bridge.start()
            meter = CpuMeter(pg, bridges, [])
            try:
                measure(runs, meter, options)
            finally:
                meter.close()
            seconds = 3.0 if options.quick else 8.0
            for index, r in enumerate(runs):
                r.profile = sample(r, seconds, index)
    report(section, runs, options, about, seconds)
    return section


# ---------------------------------------------------------------------------- the report


def report(
    section: Section, runs: list[Run], options: Options, about: dict[str, str], seconds: float
) -> None:
    by_key = {(r.version, r.store): r for r in runs}
    rows = []
    for r in runs:
        c = r.cell
        verdict = "ok" if not c.lost and not c.bad else "; ".join([f"LOST {c.lost}", *c.bad])
        rows.append(
            [
                r.version,
                r.store,
                f"{c.median('hello', 'rps'):.0f}",
                f"{c.median('post', 'ok_rps'):.0f}",
                f"{c.ratio:.3f}",
                fmt(c.median("post", "p50_ms")),
                fmt(c.median("post", "p99_ms")),
                "/".join(fmt(p.p99_ms) for p in c.post),
                fmt(r.per_delivery(r.web), 0),
                "/".join(f"{us:.0f}" for us in r.web_slices),
                fmt(1e6 * r.hello_web / r.hello_ok if r.hello_ok else None, 0),
                fmt(r.per_delivery(r.postgres), 0) if r.store == "PostgreSQL" else "",
                str(c.failures),
                f"{c.ok}/{c.stored}",
                verdict,
            ]
        )
    section.tables.append(
        Table(
            [
                "code",
                "store",
                "hello req/s",
                "POST 2xx/s",
                "POST/hello",
                "POST p50 ms",
                "POST p99 ms",
                "p99 by slice",
                "web CPU µs/2xx",
                "by slice",
                "hello CPU µs/req",
                "PostgreSQL CPU µs/2xx",
                "non-2xx",
                "2xx/stored",
                "store check",
            ],
            rows,
            f"One instance, direct, {CONNECTIONS} connections, keep-alive:",
        )
    )
    ratios: dict[str, float | None] = {}
    rows = []
    for store in STORES:
        before, after = by_key.get(("before", store)), by_key.get(("after", store))
        if before is None or after is None:
            ratios[store] = None
            continue
        cpu_b, cpu_a = before.per_delivery(before.web), after.per_delivery(after.web)
        ratios[store] = cpu_a / cpu_b if cpu_a is not None and cpu_b else None
        ok_b, ok_a = before.cell.median("post", "ok_rps"), after.cell.median("post", "ok_rps")
        p99_b, p99_a = before.cell.median("post", "p99_ms"), after.cell.median("post", "p99_ms")
        rows.append(
            [
                store,
                fmt(ratios[store], 2),
                fmt(ok_a / ok_b if ok_b else None, 2),
                fmt(p99_a / p99_b if p99_b else None, 2),
            ]
        )
    if rows:
        section.tables.append(
            Table(
                ["store", "web CPU µs/2xx", "POST 2xx/s", "POST p99"],
                rows,
                "After / before:",
            )
        )
    report_profiles(section, runs, seconds)
    for store in STORES:
        after = by_key[("after", store)]
        section.targets += [
            Target(f"web CPU per delivery, after / before ({store})", ratios[store], "<=", 0.5),
            Target(
                f"POST/hello ratio (after, {store}, direct)", after.cell.ratio, ">=", 0.15, digits=3
            ),
            Target(
                f"POST p99 (after, {store}, direct)",
                after.cell.median("post", "p99_ms"),
                "<=",
                10,
                " ms",
                1,
            ),
        ]
    slices = f"the median of {options.slices} slices of" if options.slices > 1 else "one run of"
    section.notes += [
        f"after: {about['after']}. before: {about['before']}. Both run from the same "
        f"virtualenv and uWSGI; before is exported with `git archive` (`BENCH_BEFORE=<ref> "
        f"python -m bench profile` measures against another commit).",
        f"Each figure is {slices} {options.duration:g} s, after a {options.warmup:g} s warm-up "
        "of each instance; within a slice hello then POST on the same instance, and the "
        f"{len(runs)} instances take turns. wrk, 2 threads, keep-alive, direct to uWSGI's "
        "HTTP socket.",
        "Every POST is a new issue with its own Idempotency-Key. Trello is not configured, so "
        "the worker mules idle. store check: every delivery id answered 2xx is in the store; "
        "stored may exceed 2xx by the requests wrk cut at the end of each slice.",
        "web CPU µs/2xx: utime + stime of the instance's uWSGI web processes (/proc/PID/stat, "
        "all their threads) summed over the POST slices, over the deliveries answered 2xx; "
        "PostgreSQL: the server's processes and the backends of the run's databases, as in pg. "
        "by slice: the same per POST slice, in the order measured. A process answering fewer "
        "deliveries per second spends more CPU on each (less is shared by a group commit or "
        "a wake-up), so compare CPU per delivery at like throughput. hello CPU µs/req: the "
        "web processes' CPU per `GET /hello/x` of the hello slices, what uWSGI and Bottle cost "
        "a request that does nothing.",
        f"Profile: after the timed slices, under a POST load of its own ({CONNECTIONS} "
        f"connections), `py-spy record --nonblocking --format raw --rate {RATE} --function` "
        f"on each web process for {seconds:g} s, its threads' stacks of both processes "
        "together. py-spy (no `--idle`) drops the threads it sees blocked, but it takes many "
        "waiting threads for active: a stack with no Python frame (a thread in uWSGI's C: "
        "accept, reading or writing the socket) or whose top is a wait (threading's "
        "Condition/Event.wait, the logging lock, psycopg's Connection.wait for the server's "
        "answer) is counted apart; the rest are the working stacks.",
        "A share is the part of the working stacks in which the function is on the stack "
        "(total) or on top (self), so shares describe busy time; a function is its name and "
        "file, shown at its first line. Time in C (SQLite's statements and fsync, the JSON "
        "parser) counts as self time of the Python function that called it.",
    ]


def report_profiles(section: Section, runs: list[Run], seconds: float) -> None:
    found: dict[tuple[str, str], Shares] = {}
    for r in runs:
        if r.profile is None:
            continue
        for failure in r.profile.failures:
            section.notes.append(f"{r.version}, {r.store}: {failure}")
        if r.profile.processes:
            found[(r.version, r.store)] = shares(r.profile, r.root)
    if not found:
        section.notes.append("No profile: py-spy gave no samples.")
        return
    kinds = sorted({kind for s in found.values() for kind in s.waiting})
    rows = []
    for r in runs:
        got = found.get((r.version, r.store))
        if got is None or r.profile is None:
            continue
        p, traces = r.profile, r.profile.traces or 1
        rows.append(
            [
                r.version,
                r.store,
                str(p.processes),
                str(p.rounds),
                str(p.errors),
                str(p.traces),
                f"{got.working / p.rounds:.2f}",
                f"{100 * got.working / traces:.0f}",
                *(f"{100 * got.waiting[kind] / traces:.0f}" for kind in kinds),
            ]
        )
    section.tables.append(
        Table(
            [
                "code",
                "store",
                "web processes",
                "samples",
                "errors",
                "stacks",
                "working threads",
                "working %",
                *(f"{kind} %" for kind in kinds),
            ],
            rows,
            f"py-spy, {seconds:g} s at {RATE} Hz on each web process (samples: looks at a "
            "process; stacks: the threads it found active; working threads: working stacks "
            "per sample and process; the % columns share out the stacks):",
        )
    )
    for store in STORES:
        versions = [v for v in VERSIONS if (v, store) in found]
        if not versions:
            continue
        lines = list(reversed(versions))  # a function's first line: after's, else before's
        for kind in ("total", "self"):
            table: dict[Function, dict[str, float]] = collections.defaultdict(dict)
            for version in versions:
                got = found[(version, store)]
                for key, share in (got.total if kind == "total" else got.own).items():
                    table[key][version] = share
            top = sorted(table, key=lambda k: -max(table[k].values()))[:TOP]
            rows = []
            for key in top:
                name, file = key
                number = next(
                    (found[(v, store)].line[key] for v in lines if key in found[(v, store)].line),
                    "",
                )
                rows.append(
                    [
                        f"`{name}`",
                        f"{file}:{number}" if file else "",
                        *(f"{table[key].get(v, 0.0):.1f}" for v in versions),
                    ]
                )
            section.tables.append(
                Table(
                    ["function", "file:line", *(f"{kind} % {v}" for v in versions)],
                    rows,
                    f"{store}: the top {TOP} functions by {kind} share of the web processes' "
                    "working stacks:",
                )
            )
