"""``streetlight phones``: residents' phone-number keys (docs/security.md, "Phone numbers")."""

from __future__ import annotations

import argparse
import json

from streetlight import bootstrap
from streetlight.cli import database_url
from streetlight.settings import Settings, warn_secrets_in_flags

HELP = "residents' phone numbers: re-encrypt under the current key (rotate), or print a new key (new-key)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``streetlight phones``."""
    parser.add_argument(
        "action",
        choices=["rotate", "new-key"],
        help="rotate: re-encrypt every number under the first key of STREETLIGHT_PHONE_KEYS; "
        "new-key: print a new entry id:base64key to put first in STREETLIGHT_PHONE_KEYS",
    )
    parser.add_argument("--key-id", default="k1", help="new-key: the id of the new key (default k1)")
    parser.add_argument("--database-url", help="PostgreSQL URL (default: DATABASE_URL)")


def run(args: argparse.Namespace) -> int:
    """0 when done, 1 when numbers remain under keys no longer listed, 2 on bad usage."""
    from store.connections import connect
    from store.phones import PhoneKeyring, rotate_phones

    if args.action == "new-key":
        print(PhoneKeyring.generate(args.key_id))
        return 0
    settings = Settings.from_env()
    warn_secrets_in_flags("phones", {"--database-url": args.database_url})
    bootstrap.start_process(settings)
    try:
        keyring = bootstrap.phone_keyring(settings)
    except ValueError as exc:
        print(f"streetlight phones: {exc}")
        return 2
    if keyring is None:
        print("streetlight phones: STREETLIGHT_PHONE_KEYS is not set")
        return 2
    url = database_url("phones", args.database_url, settings)
    if not url:
        return 2
    with connect(url) as conn:
        done = rotate_phones(conn, keyring)
    print(json.dumps({"current_key": keyring.current_id, **done}))
    return 0 if done["phones_under_unknown_keys"] == 0 else 1
