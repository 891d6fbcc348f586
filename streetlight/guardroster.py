"""The guards' roster from a CSV file: ``streetlight provision --guards FILE``.

One row per guard (UTF-8, a header naming the columns, in any order)::

    zone,username,name,phone,weekdays,starts,ends,password
    1116055,hwagok-1,김지킴,010-2345-6789,mon-fri,21:00,02:30,

- ``zone``: the dong code of one of the guard zones of the safety-zone file (the 15 zones of 2022);
  the account's district is the zone's.
- ``username``: the guard's login (a new account with the role ``guard``, or an existing guard's;
  an operator's account is never turned into a guard's).
- ``weekdays`` (default ``mon-fri``), ``starts`` and ``ends`` (default the zone's patrol hours,
  21:00-02:30): the guard's shift in Seoul time; an end not after the start is on the next day,
  and the shift belongs to the weekday it starts on.
- ``phone`` (optional): a Korean mobile number, stored encrypted with the residents' phone keys
  (``STREETLIGHT_PHONE_KEYS``), never shown by the API.
- ``password`` (optional): the new account's password; empty for a new account: one is generated
  and printed once; empty for an existing guard: the password is kept.

Every row is checked before anything is written; a file with a bad row changes nothing and the
errors name their lines. Running the same file again changes nothing but what it says.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from alerts import AlertError, Guard, GuardShift, normalise_phone, parse_weekdays
from api.accounts import create_operator
from api.security import password_hasher
from broker.security import ProvisioningError
from geo import SafetyZones, Zone
from store.connections import connect
from store.errors import DatabaseError
from store.guards import upsert_guard
from store.operators import get_operator, upsert_operator
from store.phones import PhoneKeyring
from store.schema import apply_migrations

COLUMNS = ("zone", "username", "name", "phone", "weekdays", "starts", "ends", "password")
REQUIRED = ("zone", "username")
_USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,62}$")


@dataclass(frozen=True, slots=True)
class RosterRow:
    """One checked row of the roster file."""

    line: int
    guard: Guard
    zone: Zone
    phone: str | None
    password: str | None


def parse_roster(text: str, zones: SafetyZones) -> list[RosterRow]:
    """The rows of a roster file, checked; ProvisioningError listing every bad line."""
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    header = [h.strip().lower() for h in reader.fieldnames or []]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise ProvisioningError(
            f"guards file: missing column(s) {', '.join(missing)} (columns: {', '.join(COLUMNS)})"
        )
    by_code = {z.dong_code: z for z in zones.guard_zones}
    rows: list[RosterRow] = []
    errors: list[str] = []
    seen: set[str] = set()
    for n, raw in enumerate(reader, start=2):
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items() if k is not None}
        if not any(row.values()):
            continue
        try:
            zone = by_code.get(row["zone"])
            if zone is None:
                raise ValueError(f"zone {row['zone']!r} is not one of the {len(by_code)} guard zones")
            username = row["username"]
            if not _USERNAME.match(username):
                raise ValueError(
                    f"username {username!r}: 2-63 of a-z 0-9 . _ -, starting with a letter or digit"
                )
            if username in seen:
                raise ValueError(f"username {username!r} is listed twice")
            seen.add(username)
            starts = dt.time.fromisoformat(row.get("starts") or zones.patrol_start_local.isoformat())
            ends = dt.time.fromisoformat(row.get("ends") or zones.patrol_end_local.isoformat())
            shift = GuardShift(starts, ends, parse_weekdays(row.get("weekdays") or "mon-fri"))
            phone = normalise_phone(row["phone"]) if row.get("phone") else None
            guard = Guard(username, zone.dong_code, shift, row.get("name", ""))
            rows.append(RosterRow(n, guard, zone, phone, row.get("password") or None))
        except (ValueError, AlertError) as exc:
            errors.append(f"line {n}: {exc}")
    if errors:
        raise ProvisioningError("guards file refused, nothing written:\n  " + "\n  ".join(errors))
    return rows


def import_guards(
    path: Path, database_url: str, zones: SafetyZones, keyring: PhoneKeyring | None
) -> list[str]:
    """Write the roster of `path`; returns the lines to print (generated passwords among them)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ProvisioningError(f"{path}: not UTF-8 ({exc.reason})") from None
    rows = parse_roster(text, zones)
    if keyring is None and any(r.phone for r in rows):
        raise ProvisioningError(
            "guards file has phone numbers: set STREETLIGHT_PHONE_KEYS to store them encrypted"
        )
    try:
        return _write(rows, path, database_url, keyring)
    except DatabaseError as exc:
        raise ProvisioningError(
            f"the guards were not provisioned ({exc}); re-run with the same file"
        ) from exc


def _write(rows: list[RosterRow], path: Path, database_url: str, keyring: PhoneKeyring | None) -> list[str]:
    out: list[str] = []
    hasher = password_hasher(3, 65536)
    with connect(database_url, connect_timeout_s=10) as conn:
        apply_migrations(conn)
        for r in rows:
            existing = get_operator(conn, r.guard.username)
            if existing is not None and existing["role"] != "guard":
                raise ProvisioningError(
                    f"line {r.line}: {r.guard.username!r} is a {existing['role']} operator's account, "
                    "not a guard's"
                )
        with conn.transaction():
            for r in rows:
                existing = get_operator(conn, r.guard.username)
                district = r.zone.district_code
                if r.password is not None or existing is None:
                    password = r.password or secrets.token_urlsafe(12)
                    create_operator(
                        conn,
                        r.guard.username,
                        password,
                        role="guard",
                        district=district,
                        display_name=r.guard.name,
                        hasher=hasher,
                    )
                    if r.password is None:
                        out.append(
                            f"  password   {r.guard.username}: {password} (generated; give it to the guard)"
                        )
                else:
                    upsert_operator(
                        conn,
                        r.guard.username,
                        password_hash=existing["password_hash"],
                        role="guard",
                        district_code=district,
                        display_name=r.guard.name or existing["display_name"],
                    )
                upsert_guard(
                    conn,
                    r.guard,
                    district_code=district,
                    zone_name=r.zone.dong,
                    phone=r.phone,
                    keyring=keyring,
                )
    zones_used = sorted({r.zone.dong_code for r in rows})
    return [f"guards: {len(rows)} guards in {len(zones_used)} zones from {path}", *out]
