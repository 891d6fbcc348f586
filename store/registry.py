"""The provisioned-device registry in the ``devices`` table, and secrets shared by service instances.

``streetlight provision`` mirrors its file registry here (``mark_provisioned``, ``mark_revoked``);
ingest reads it back (``provisioned_devices``; ``provisioned_devices_at`` on a connection of its
own) to refuse messages from ids nobody provisioned, so a deployed ingest needs no registry file.
A row written by a birth alone has no ``credentials_hash``: it was never provisioned.
``credentials_hash`` holds a fingerprint of the broker's password hash (never the secret, never
the hash itself), so a rotation shows as a change; a rotation or a revocation also clears the
device's stored ``bdseq`` (``device_state``), so what the old credentials said about the
connection cannot outlive them.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from store.connections import on_own_connection
from store.types import Conn


@dataclass(frozen=True, slots=True)
class ProvisionedDevice:
    """What provisioning registered for one device: the facts a message is checked against."""

    device_id: str
    kind: str
    district_code: str
    dong_code: str | None = None
    lamp_number: str | None = None
    paired_device_id: str | None = None
    lat: float | None = None
    lon: float | None = None
    credentials_fingerprint: str | None = None
    revoked: bool = False
    address: str | None = None
    lamp_count: int | None = None


def mark_provisioned(conn: Conn, devices: Iterable[ProvisionedDevice]) -> int:
    """Insert or update provisioned devices (registered facts win over what a birth wrote)."""
    rows = [
        (
            d.device_id,
            d.kind,
            d.district_code,
            d.dong_code,
            d.lamp_number,
            d.lat,
            d.lon,
            d.paired_device_id,
            d.credentials_fingerprint,
            d.address,
            d.lamp_count,
        )
        for d in devices
    ]
    if not rows:
        return 0
    # New credentials (a rotation, or a first provisioning) start a new connection lineage: the
    # stored bdseq may have been set by whoever held the old ones.
    conn.execute(
        "UPDATE device_state s SET bdseq = NULL, updated_at = now() "
        "FROM unnest(%s::text[], %s::text[]) AS n(device_id, fingerprint) "
        "LEFT JOIN devices d ON d.device_id = n.device_id "
        "WHERE s.device_id = n.device_id AND s.bdseq IS NOT NULL "
        "AND d.credentials_hash IS DISTINCT FROM n.fingerprint",
        ([r[0] for r in rows], [r[8] for r in rows]),
    )
    with conn.cursor() as cur:
        cur.executemany(
            """
            INSERT INTO devices (device_id, kind, district_code, dong_code, lamp_number, lat, lon,
                                 paired_device_id, provisioned, credentials_hash, address, lamp_count)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, true, %s, %s, %s)
            ON CONFLICT (device_id) DO UPDATE SET
                kind = EXCLUDED.kind, district_code = EXCLUDED.district_code,
                dong_code = coalesce(EXCLUDED.dong_code, devices.dong_code),
                lamp_number = coalesce(EXCLUDED.lamp_number, devices.lamp_number),
                lat = coalesce(EXCLUDED.lat, devices.lat), lon = coalesce(EXCLUDED.lon, devices.lon),
                paired_device_id = coalesce(EXCLUDED.paired_device_id, devices.paired_device_id),
                address = coalesce(EXCLUDED.address, devices.address),
                lamp_count = coalesce(EXCLUDED.lamp_count, devices.lamp_count),
                provisioned = true, credentials_hash = EXCLUDED.credentials_hash, updated_at = now()
            """,
            rows,
        )
    return len(rows)


def mark_revoked(conn: Conn, device_ids: Iterable[str]) -> None:
    """Record that these devices' credentials are revoked (the row and its history stay)."""
    ids = list(device_ids)
    if ids:
        # As on a rotation: what the revoked credentials said about the connection is void.
        conn.execute(
            "UPDATE device_state SET bdseq = NULL, updated_at = now() WHERE device_id = ANY(%s) "
            "AND bdseq IS NOT NULL AND device_id IN "
            "(SELECT device_id FROM devices WHERE provisioned AND credentials_hash IS NOT NULL)",
            (ids,),
        )
        conn.execute(
            "UPDATE devices SET provisioned = false, updated_at = now() "
            "WHERE device_id = ANY(%s) AND credentials_hash IS NOT NULL",
            (ids,),
        )


def provisioned_devices(conn: Conn) -> dict[str, ProvisionedDevice]:
    """Every device provisioning ever registered, revoked ones flagged; {} when none was."""
    rows = conn.execute(
        "SELECT device_id, kind, district_code, dong_code, lamp_number, paired_device_id, lat, lon, "
        "credentials_hash, provisioned, address, lamp_count FROM devices "
        "WHERE credentials_hash IS NOT NULL"
    ).fetchall()
    return {
        str(r[0]): ProvisionedDevice(
            device_id=str(r[0]),
            kind=str(r[1]),
            district_code=str(r[2]),
            dong_code=r[3],
            lamp_number=r[4],
            paired_device_id=r[5],
            lat=r[6],
            lon=r[7],
            credentials_fingerprint=r[8],
            revoked=not r[9],
            address=r[10],
            lamp_count=r[11],
        )
        for r in rows
    }


def shared_secret(conn: Conn, key: str, nbytes: int = 16) -> str:
    """A random hex secret kept in ``store_meta`` under ``key``, created by the first caller."""
    conn.execute(
        "INSERT INTO store_meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING",
        (key, secrets.token_hex(nbytes)),
    )
    row = conn.execute("SELECT value FROM store_meta WHERE key = %s", (key,)).fetchone()
    if row is None:  # only if someone deleted it between the two statements
        raise LookupError(f"store_meta {key!r} vanished")
    return str(row[0])


def rotate_shared_secret(conn: Conn, key: str, nbytes: int = 16) -> None:
    """Replace the secret under ``key`` with a new random one; the old one is kept under
    ``key:retired`` (its holders can be told to drop it)."""
    with conn.transaction():
        conn.execute(
            "INSERT INTO store_meta (key, value) SELECT %s, value FROM store_meta WHERE key = %s "
            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            (f"{key}:retired", key),
        )
        conn.execute(
            "INSERT INTO store_meta (key, value) VALUES (%s, %s) "
            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            (key, secrets.token_hex(nbytes)),
        )


def retired_shared_secret(conn: Conn, key: str) -> str | None:
    """The secret ``rotate_shared_secret`` replaced last under ``key``, or None."""
    row = conn.execute("SELECT value FROM store_meta WHERE key = %s", (f"{key}:retired",)).fetchone()
    return None if row is None else str(row[0])


# -- on a connection of their own (ingest's registry and share group): StoreUnavailable when the
# database cannot be read


def provisioned_devices_at(database_url: str, *, connect_timeout_s: int = 2) -> dict[str, ProvisionedDevice]:
    """``provisioned_devices`` read on a short-lived connection of its own."""
    return on_own_connection(database_url, provisioned_devices, connect_timeout_s=connect_timeout_s)


def shared_secret_at(database_url: str, key: str, *, connect_timeout_s: int = 10) -> str:
    """``shared_secret`` read (or created) on a short-lived connection of its own."""
    return on_own_connection(database_url, shared_secret, key, connect_timeout_s=connect_timeout_s)


def retired_shared_secret_at(database_url: str, key: str, *, connect_timeout_s: int = 10) -> str | None:
    """``retired_shared_secret`` read on a short-lived connection of its own."""
    return on_own_connection(database_url, retired_shared_secret, key, connect_timeout_s=connect_timeout_s)
