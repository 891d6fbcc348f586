"""``streetlight bench NAME``: run one benchmark against real services on this machine.

Each benchmark lives in ``streetlight/bench/<name>.py`` and exposes ``HELP``,
``add_arguments(parser)`` and ``run(args) -> dict``. The dict is printed as the last stdout
line, as one JSON object with at least ``"bench"`` (DESIGN.md §7); progress goes to stderr.
A benchmark measures its own baseline in the same run, so its result is a ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
from types import ModuleType

from streetlight.cli import load_optional

HELP = "run a benchmark (ingest, fleet, api, soak, ...) and print its figures as JSON"

# name -> module under streetlight.bench; the order is the order of --help.
BENCHES: dict[str, str] = {
    "ingest": "ingest",
    "fleet": "fleet",
    "controller": "controller",
    "api": "api",
    "brighten": "brighten",
    "sos": "sos",
    "soak": "soak",
    "geo": "geo",
    "storage": "storage",
}


def _load(module: str) -> ModuleType | None:
    return load_optional("streetlight.bench", module)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", metavar="NAME")
    for name, module_name in BENCHES.items():
        module = _load(module_name)
        if module is None:
            p = sub.add_parser(name, help="(not built yet)")
            p.set_defaults(_bench_missing=name)
            continue
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_bench_run=module.run)


def run(args: argparse.Namespace) -> int:
    missing = getattr(args, "_bench_missing", None)
    if missing:
        print(f"streetlight bench {missing}: not built yet in this version", file=sys.stderr)
        return 3
    bench = getattr(args, "_bench_run", None)
    if bench is None:
        print("streetlight bench: name a benchmark (see streetlight bench --help)", file=sys.stderr)
        return 2
    result = bench(args)
    print(json.dumps(result, ensure_ascii=False, sort_keys=False), flush=True)
    return 0 if result.get("ok", True) else 1
