"""``streetlight migrate``: bring the database schema up to date."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime

from streetlight import bootstrap
from streetlight.cli import database_url
from streetlight.settings import Settings, warn_secrets_in_flags

HELP = "apply the database migrations (creates or updates the schema; safe to run twice)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``streetlight migrate``."""
    parser.add_argument("--database-url", help="PostgreSQL URL (default: DATABASE_URL)")
    path = parser.add_mutually_exclusive_group()
    path.add_argument(
        "--timescale",
        action="store_true",
        help="insist on TimescaleDB: fail, saying why, when it cannot be used (first run only; "
        "default: STREETLIGHT_STORAGE)",
    )
    path.add_argument(
        "--no-timescale",
        action="store_true",
        help="use native partitioning even when TimescaleDB is available (first run only)",
    )
    parser.add_argument(
        "--maintenance",
        action="store_true",
        help="then run the maintenance job: partitions ahead, rollups, retention, phone numbers "
        "re-encrypted under the current key of STREETLIGHT_PHONE_KEYS (for a timer)",
    )
    parser.add_argument(
        "--now",
        metavar="ISO8601",
        help="with --maintenance: run the job as of this instant, e.g. 2026-12-31T00:00:00+09:00 "
        "(to see what retention would do then; default: the clock)",
    )


def parse_now(value: str) -> datetime:
    """``--now``: an ISO 8601 instant with its time zone; ValueError saying what is wrong."""
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(
            f"--now must be an ISO 8601 instant, e.g. 2026-12-31T00:00:00+09:00, got {value!r}"
        ) from None
    if when.tzinfo is None:
        raise ValueError(f"--now needs a time zone (Z or +09:00), got {value!r}")
    return when.astimezone(UTC)


def run(args: argparse.Namespace) -> int:
    """Apply the migrations and say what was applied and which storage path is in use."""
    from store.errors import DatabaseError, StoreError
    from store.schema import migrate

    now = None
    if getattr(args, "now", None) is not None:
        if not getattr(args, "maintenance", False):
            print("streetlight migrate: --now goes with --maintenance")
            return 2
        try:
            now = parse_now(args.now)
        except ValueError as exc:
            print(f"streetlight migrate: {exc}")
            return 2
    settings = Settings.from_env()
    try:
        policy = bootstrap.retention_policy(settings)
        phone_keys = bootstrap.phone_keyring(settings)
    except ValueError as exc:
        print(f"streetlight migrate: {exc}")
        return 2
    warn_secrets_in_flags("migrate", {"--database-url": args.database_url})
    bootstrap.start_process(settings)
    url = database_url("migrate", args.database_url, settings)
    if not url:
        return 2
    try:
        wanted = settings.timescale_wanted
        if getattr(args, "timescale", False):
            wanted = True
        elif args.no_timescale:
            wanted = False
        report = migrate(url, timescale=wanted)
    except (StoreError, OSError) as exc:
        print(f"streetlight migrate: {exc}")
        return 1
    except DatabaseError as exc:
        print(f"streetlight migrate: cannot reach the database: {exc}")
        return 1
    for name in report.applied:
        print(f"applied {name}")
    if not report.applied:
        print("schema already up to date")
    if report.timescale:
        print(f"storage: TimescaleDB {report.timescale_version or ''}".rstrip())
    else:
        print("storage: native partitioning (TimescaleDB not in use)")
    if getattr(args, "maintenance", False):
        from store.connections import connect
        from store.jobs import run_maintenance

        with connect(url) as conn:
            done = run_maintenance(conn, now=now, policy=policy, phone_keys=phone_keys)
        print("maintenance: " + json.dumps(done, default=str, ensure_ascii=False))
    return 0
