"""``streetlight api``: the Safety-app API, the operators' API and the console (uvicorn)."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from streetlight import bootstrap
from streetlight.cli import database_url
from streetlight.settings import Settings, warn_secrets_in_flags

HELP = "serve the Safety-app and operators' API and the console (migrates the database first)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``streetlight api``."""
    parser.add_argument("--host", help="listen address (default: STREETLIGHT_API_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (default: STREETLIGHT_API_PORT or 8080)")
    parser.add_argument("--database-url", help="PostgreSQL URL (default: DATABASE_URL)")
    parser.add_argument(
        "--workers", type=int, default=1, help="worker processes sharing the listening socket (default 1)"
    )
    parser.add_argument(
        "--demo-operators",
        action="store_true",
        help="create the demo accounts (city, maintenance, admin, one per district) and print them",
    )
    parser.add_argument(
        "--create-operator",
        nargs="+",
        metavar="USERNAME",
        help="create or update one operator account, then exit (with --role and --district); the "
        "password from --password-file, STREETLIGHT_OPERATOR_PASSWORD or a prompt, never the command line",
    )
    parser.add_argument(
        "--password-file", type=Path, metavar="FILE", help="the new operator's password (first line)"
    )
    parser.add_argument("--role", default="district", choices=["district", "city", "maintenance", "admin"])
    parser.add_argument("--district", help="5-digit district code of a district operator")


def _operator_password(password_file: Path | None, from_env: str | None) -> str | None:
    """The new operator's password: the file's first line, the environment, or a prompt on a tty."""
    if password_file is not None:
        lines = password_file.read_text(encoding="utf-8").splitlines()
        return lines[0] if lines else None
    if from_env:
        return from_env
    if not sys.stdin.isatty():
        return None
    first = getpass.getpass("new operator's password: ")
    return first if first == getpass.getpass("again: ") else None


def _new_operator(args: argparse.Namespace, settings: Settings) -> tuple[str, str | None]:
    """``--create-operator``'s username and password; the password None (and said why) if refused."""
    username = args.create_operator[0]
    if len(args.create_operator) != 1:
        print(
            "streetlight api: --create-operator takes only USERNAME: a password on the command line "
            "is visible to every local user (ps); use --password-file, STREETLIGHT_OPERATOR_PASSWORD "
            "or the prompt"
        )
        return username, None
    try:
        password = _operator_password(args.password_file, settings.operator_password)
    except OSError as exc:
        print(f"streetlight api: cannot read the password file: {exc}")
        return username, None
    if not password:
        print(
            "streetlight api: no password: pass --password-file, set STREETLIGHT_OPERATOR_PASSWORD, "
            "or run it on a terminal to be asked"
        )
        return username, None
    return username, password


def run(args: argparse.Namespace) -> int:
    """Migrate, optionally create accounts, then serve until stopped."""
    from api.accounts import create_operator, ensure_demo_operators
    from api.security import password_hasher
    from store.connections import connect
    from store.errors import DatabaseUnavailable
    from store.schema import apply_migrations

    settings = Settings.from_env()
    warn_secrets_in_flags("api", {"--database-url": args.database_url})
    bootstrap.start_process(settings)
    url = database_url("api", args.database_url, settings)
    if not url:
        return 2
    new_operator: tuple[str, str] | None = None
    if args.create_operator:
        # Asked before anything else is done, so a refusal changes nothing.
        username, password = _new_operator(args, settings)
        if password is None:
            return 2
        new_operator = (username, password)
    hasher = password_hasher(settings.api_kdf_time_cost, settings.api_kdf_memory_kib)
    # Loaded once for this process's server (with --workers N each worker loads its own).
    gazetteer = bootstrap.load_gazetteer() if new_operator is None and args.workers <= 1 else None
    try:
        with connect(url) as conn:
            apply_migrations(conn)
            if new_operator is not None:
                username, password = new_operator
                try:
                    create_operator(
                        conn, username, password, role=args.role, district=args.district, hasher=hasher
                    )
                except ValueError as exc:
                    print(f"streetlight api: {exc}")
                    return 2
                print(f"operator {username} ({args.role} {args.district or ''}) saved".rstrip())
                return 0
            if args.demo_operators:
                for op in ensure_demo_operators(conn, hasher=hasher, gazetteer=gazetteer):
                    where = f"{op.role} {op.district or ''}".strip()
                    print(f"demo login: {op.username} / {op.password} ({where})")
    except DatabaseUnavailable as exc:
        print(f"streetlight api: cannot reach the database: {exc}")
        return 1
    server = bootstrap.ApiServer(
        host=args.host or settings.api_host,
        port=args.port or settings.api_port,
        workers=args.workers,
        log_level=settings.log_level,
        trusted_proxies=settings.api_trusted_proxies,
    )
    try:
        server.uvicorn_options()
        config = bootstrap.api_config(settings, url, gazetteer=gazetteer)
    except ValueError as exc:
        print(f"streetlight api: {exc}")
        return 2
    bootstrap.serve_api(config, server, settings)
    return 0
