"""``streetlight audit verify``: check that the privacy audit trail is an unbroken hash chain."""

from __future__ import annotations

import argparse
import json

from streetlight import bootstrap
from streetlight.cli import database_url
from streetlight.settings import Settings, warn_secrets_in_flags

HELP = "check the privacy audit trail: every row links to the one before and matches its hash"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``streetlight audit``."""
    parser.add_argument("action", choices=["verify"], help="verify: check the whole chain")
    parser.add_argument("--database-url", help="PostgreSQL URL (default: DATABASE_URL)")


def run(args: argparse.Namespace) -> int:
    """0 when the chain is intact, 1 when a row was changed, removed or inserted, 2 on bad usage."""
    from store.errors import StoreUnavailable
    from store.operators import verify_audit_chain_at

    settings = Settings.from_env()
    warn_secrets_in_flags("audit", {"--database-url": args.database_url})
    bootstrap.start_process(settings)
    url = database_url("audit", args.database_url, settings)
    if not url:
        return 2
    try:
        report = verify_audit_chain_at(url)
    except StoreUnavailable as exc:
        print(f"streetlight audit: cannot read the audit log: {exc}")
        return 1
    print(
        json.dumps(
            {
                "rows": report.rows,
                "intact": report.ok,
                "broken_at_id": report.broken_at,
                "reason": report.reason,
            }
        )
    )
    return 0 if report.ok else 1
