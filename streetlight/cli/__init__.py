"""``streetlight``: one command with a sub-command per service and tool.

Each sub-command lives in ``streetlight/cli/<name>.py`` and exposes ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``. A sub-command whose module is not built yet
says so instead of pretending.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streetlight.settings import Settings

# name -> module under streetlight.cli; the order is the order of --help.
COMMANDS: dict[str, str] = {
    "up": "up",
    "locate": "locate",
    "broker": "broker",
    "ingest": "ingest",
    "controller": "controller",
    "api": "api",
    "sim": "sim",
    "provision": "provision",
    "bench": "bench",
    "migrate": "migrate",
    "audit": "audit",
    "phones": "phones",
}


def load_optional(package: str, module: str) -> ModuleType | None:
    """``package.module``, or None when that module does not exist (an error inside it still raises)."""
    name = f"{package}.{module}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            return None
        raise


def load_command(module: str) -> ModuleType | None:
    """The module of a sub-command, or None when it is not built."""
    return load_optional("streetlight.cli", module)


def database_url(command: str, flag: str | None, settings: Settings) -> str | None:
    """``--database-url`` (``flag``), else ``DATABASE_URL``; None, said on stdout for
    ``streetlight <command>``, when neither is set."""
    url = flag or settings.database_url
    if not url:
        print(f"streetlight {command}: no database: pass --database-url or set DATABASE_URL")
    return url


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command that exists."""
    parser = argparse.ArgumentParser(prog="streetlight", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = load_command(module_name)
        if module is None:
            p = sub.add_parser(name, help="(not built yet)")
            p.set_defaults(_missing=name)
            continue
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``streetlight`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_missing", None):
        print(f"streetlight {args._missing}: not built yet in this version", file=sys.stderr)
        return 3
    run = getattr(args, "_run", None)
    if run is None:
        parser.print_help()
        return 2
    rc = run(args)
    return int(rc or 0)
