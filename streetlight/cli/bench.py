"""``streetlight bench NAME``: run one benchmark against real services on this machine.

Each benchmark lives in ``devkit/bench/<name>.py`` (not the product: imported only when a benchmark
runs) and exposes ``HELP``, ``add_arguments(parser)`` and ``run(args) -> dict``. The dict is printed
as the last stdout line, as one JSON object with at least ``"bench"`` (DESIGN.md §7); progress goes
to stderr. A benchmark measures its own baseline in the same run, so its result is a ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
from types import ModuleType

from streetlight.cli import load_optional

HELP = "run a benchmark (ingest, fleet, api, soak, ...) and print its figures as JSON"

# name -> module under devkit.bench; the order is the order of --help.
BENCHES: dict[str, str] = {
    "ingest": "ingest",
    "fleet": "fleet",
    "controller": "controller",
    "api": "api",
    "brighten": "brighten",
    "sos": "sos",
    "sos-live": "soslive",
    "soak": "soak",
    "geo": "geo",
    "storage": "storage",
}


def _load(module: str) -> ModuleType | None:
    return load_optional("devkit.bench", module)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``NAME`` and the benchmark's own options, parsed by the benchmark when it runs."""
    parser.add_argument("bench", nargs="?", choices=list(BENCHES), metavar="NAME", help=", ".join(BENCHES))
    parser.add_argument(
        "bench_args", nargs=argparse.REMAINDER, metavar="...", help="the benchmark's options (NAME --help)"
    )


def bench_parser(name: str) -> tuple[argparse.ArgumentParser, ModuleType] | None:
    """The argument parser of benchmark ``name`` and its module, or None when it is not built."""
    module = _load(BENCHES[name])
    if module is None:
        return None
    parser = argparse.ArgumentParser(prog=f"streetlight bench {name}", description=module.HELP)
    module.add_arguments(parser)
    return parser, module


def run(args: argparse.Namespace) -> int:
    """Run the benchmark named and print its result as the last line."""
    if args.bench is None:
        print("streetlight bench: name a benchmark (see streetlight bench --help)", file=sys.stderr)
        return 2
    found = bench_parser(args.bench)
    if found is None:
        print(f"streetlight bench {args.bench}: not built yet in this version", file=sys.stderr)
        return 3
    parser, module = found
    result = module.run(parser.parse_args(args.bench_args))
    print(json.dumps(result, ensure_ascii=False, sort_keys=False), flush=True)
    return 0 if result.get("ok", True) else 1
