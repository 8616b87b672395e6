"""``python -m bench [--quick] [NAME ...]``: run benchmarks, print them, write bench/results.md.

Names: ack, pg, profile, seed, pace, calls, memory, twoway (all of them when none is given) and
soak, which only runs when named: ``python -m bench soak --minutes 30``. pg and profile need
PostgreSQL (``make postgres``); profile compares this checkout with the commit ``BENCH_BEFORE``
names (default 79ecf59) and samples the web processes with py-spy.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench.common import (
    BENCH_DIR,
    Options,
    Section,
    machine,
    machine_line,
    now_text,
    write_results,
)

SUITE = ("ack", "pg", "profile", "seed", "pace", "calls", "memory", "twoway")
EVERY = (*SUITE, "soak")

HEADER = """# gitlab2trello benchmarks

Written by `python -m bench` (`make bench`); `python -m bench --quick` is a shorter run and
`python -m bench NAME` runs one benchmark (its section is replaced, the others are kept).
Figures are ratios against baselines measured in the same run on the same machine: absolute
numbers move with the machine and its neighbours. Targets are reported, never asserted.

Last run: {date} on {machine}."""


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(EVERY))
    parser.add_argument("--quick", action="store_true", help="shorter runs (under 2 minutes)")
    parser.add_argument("--minutes", type=float, default=10.0, help="soak: how long (10)")
    parser.add_argument("--interval", type=float, default=30.0, help="soak: RSS sample period")
    parser.add_argument(
        "--output", type=Path, default=BENCH_DIR / "results.md", help="markdown results file"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    args = parser.parse_args(argv)
    if any(name not in EVERY for name in args.names):
        parser.error(f"names are {', '.join(EVERY)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    names = list(dict.fromkeys(args.names)) or list(SUITE)
    workdir = Path(tempfile.mkdtemp(prefix="gitlab2trello-bench-"))
    options = Options.make(args.quick, workdir)
    options.shared.update(minutes=args.minutes, interval=args.interval)
    info = machine()
    mode = "quick" if args.quick else "full"
    print(f"# {machine_line(info)}\n# {now_text()}, {mode} run of {', '.join(names)}\n")
    sections: list[Section] = []
    started = time.monotonic()
    try:
        for name in names:
            began = time.monotonic()
            print(f"## {name} ...", flush=True)
            module = importlib.import_module(f"bench.{name}")
            try:
                section = module.run(options)
            except Exception:  # one broken benchmark must not lose the others' figures
                section = Section(name, "failed")
                section.notes.append("failed:\n\n```\n" + traceback.format_exc() + "```")
            section.elapsed = time.monotonic() - began
            how = f"--minutes {args.minutes:g}" if name == "soak" else f"{mode} run"
            section.meta = f"{now_text()}, {how}, {section.elapsed:.0f} s, on {machine_line(info)}"
            sections.append(section)
            print(section.markdown(), end="\n\n", flush=True)
            write_results(
                args.output, sections, HEADER.format(date=now_text(), machine=machine_line(info))
            )
    finally:
        if args.keep:
            print(f"work folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"# {len(sections)} benchmark(s) in {time.monotonic() - started:.0f} s")
    print(f"# results written to {args.output}")
    failed = [s.name for s in sections if s.title == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
