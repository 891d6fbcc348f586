"""The file-based registry of devices and accounts, and the provisioning operations on it.

The registry is one JSON file (mode 0600) holding every principal the broker knows: devices,
service accounts and control-centre clients, each with a hashed secret and a revoked flag. It is
the source the broker configuration is generated from. The database ``devices`` table (``store/``)
can follow it through a ``DeviceSink``; the file stays authoritative for the broker.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Literal, Protocol, cast, get_args

from broker.security._errors import DeviceFileError, ProvisioningError, UnknownPrincipalError
from broker.security._ids import (
    CITY_DISTRICT,
    SEOUL_DISTRICTS,
    check_district,
    check_identity,
    check_service_account,
    service_role,
)
from broker.security._passwords import PasswordHash, hash_secret, new_secret

DeviceKind = Literal["lamp", "blinker"]
Role = Literal["device", "ingest", "controller", "api", "control_centre"]
SERVICE_ACCOUNTS: Final[tuple[Role, ...]] = ("ingest", "controller", "api")
REGISTRY_VERSION: Final = 1
REGISTRY_FILE: Final = "registry.json"


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """What a device list says about one lamp or beacon blinker."""

    id: str
    kind: DeviceKind
    district_code: str
    dong_code: str | None = None
    lamp_number: str | None = None
    paired: str | None = None
    lat: float | None = None
    lon: float | None = None
    address: str | None = None  # road address, else lot address (the lamp register)
    lamp_count: int | None = None  # lamps on the pole (the lamp register's 설치개수)


@dataclass(frozen=True, slots=True)
class Principal:
    """One broker identity: a device, a service account or a control-centre client."""

    name: str
    role: Role
    password: PasswordHash
    district_code: str | None = None
    device: DeviceSpec | None = None
    revoked: bool = False


class DeviceSink(Protocol):
    """Where provisioned devices are mirrored too (the database registry, later)."""

    def upsert_devices(self, devices: Sequence[DeviceSpec]) -> None:
        """Insert or update these devices."""

    def mark_revoked(self, device_id: str) -> None:
        """Record that this device's credentials are revoked."""


@dataclass(slots=True)
class ProvisionReport:
    """What one provisioning run changed; ``secrets`` are shown once and never stored."""

    secrets: dict[str, str] = field(default_factory=dict)
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: int = 0
    rotated: list[str] = field(default_factory=list)
    revoked: list[str] = field(default_factory=list)


class Registry:
    """All principals, keyed by name; load, change in memory, save atomically."""

    def __init__(self, principals: Iterable[Principal] = ()) -> None:
        self._by_name: dict[str, Principal] = {p.name: p for p in principals}

    def __len__(self) -> int:
        return len(self._by_name)

    def __iter__(self) -> Iterator[Principal]:
        return iter(sorted(self._by_name.values(), key=lambda p: (p.role, p.name)))

    def get(self, name: str) -> Principal | None:
        """The principal called ``name``, or None."""
        return self._by_name.get(name)

    def device(self, device_id: str) -> Principal | None:
        """The device principal ``device_id``, or None (also None for an account of that name)."""
        p = self._by_name.get(device_id)
        return p if p is not None and p.role == "device" else None

    def devices(self) -> list[Principal]:
        """Every device principal, revoked ones included."""
        return [p for p in self if p.role == "device"]

    def put(self, principal: Principal) -> None:
        """Add or replace a principal."""
        self._by_name[principal.name] = principal

    # -- provisioning ---------------------------------------------------------------------------

    def provision(
        self,
        devices: Iterable[DeviceSpec],
        *,
        districts: Sequence[str] = SEOUL_DISTRICTS,
        services: Iterable[str] = (),
    ) -> ProvisionReport:
        """Register devices, the standard accounts and the ``services`` instance accounts.

        Existing principals keep their credentials. ``services`` are names like ``ingest@0``: one
        account per running instance, since the broker binds the client id to the username.
        """
        report = ProvisionReport()
        wanted: list[tuple[str, Role, str | None, DeviceSpec | None]] = [
            (role, role, None, None) for role in SERVICE_ACCOUNTS
        ]
        for name in services:
            role = cast(Role, service_role(name))
            if (name, role, None, None) not in wanted:
                wanted.append((name, role, None, None))
        wanted += [(f"cc-{d}", "control_centre", d, None) for d in (CITY_DISTRICT, *districts)]
        seen: set[str] = set()
        for device in devices:
            if device.id in seen:
                raise ProvisioningError(f"device {device.id!r} appears twice in the device list")
            seen.add(device.id)
            wanted.append((device.id, "device", device.district_code, device))
        for name, role, district, spec in wanted:
            if role in SERVICE_ACCOUNTS:
                check_service_account(name)
            else:
                check_identity(name)
            current = self._by_name.get(name)
            if current is None:
                secret = new_secret()
                self.put(Principal(name, role, hash_secret(secret), district, spec))
                report.secrets[name] = secret
                report.added.append(name)
            elif current.role != role:
                raise ProvisioningError(f"{name!r} is already provisioned as {current.role}, not {role}")
            elif current.device != spec or current.district_code != district:
                # A moved or re-described device keeps its secret; only its ACL follows the new data.
                self.put(replace(current, device=spec, district_code=district))
                report.updated.append(name)
            else:
                report.unchanged += 1
        return report

    def rotate(self, name: str) -> str:
        """Issue a new secret for ``name`` (also re-enables a revoked one); returns the secret."""
        current = self._require(name)
        secret = new_secret()
        self.put(replace(current, password=hash_secret(secret), revoked=False))
        return secret

    def revoke(self, name: str) -> None:
        """Mark ``name`` revoked: it leaves the password file and the ACL at the next generation."""
        self.put(replace(self._require(name), revoked=True))

    def _require(self, name: str) -> Principal:
        current = self._by_name.get(name)
        if current is None:
            raise UnknownPrincipalError(name)
        return current

    # -- persistence ----------------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path) -> Registry:
        """Read a registry file; a missing file is an empty registry."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        if raw.get("version") != REGISTRY_VERSION:
            raise ProvisioningError(f"{path}: unsupported registry version {raw.get('version')!r}")
        return cls(_principal_from_json(item) for item in raw["principals"])

    def save(self, path: Path) -> None:
        """Write the registry atomically with mode 0600 (it holds password hashes)."""
        doc = {"version": REGISTRY_VERSION, "principals": [_principal_to_json(p) for p in self]}
        write_private(path, json.dumps(doc, indent=1, ensure_ascii=False) + "\n", mode=0o600)


def sync_devices(registry: Registry, sink: DeviceSink) -> None:
    """Mirror the registry's devices into ``sink``: upsert the active ones, mark the revoked ones."""
    devices = registry.devices()
    sink.upsert_devices([p.device for p in devices if p.device is not None and not p.revoked])
    for p in devices:
        if p.revoked:
            sink.mark_revoked(p.name)


def write_private(path: Path, text: str, *, mode: int) -> None:
    """Write ``text`` to ``path`` atomically (temp file + rename).

    A new file gets ``mode``. A file that exists keeps its owner, group and mode: the operator
    gave the broker's group read access once (``chgrp mosquitto``), and a rewrite by root must
    not take it away, or the broker reloading on SIGHUP can read no password and refuses everyone.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        current: os.stat_result | None = path.stat()
    except FileNotFoundError:
        current = None
    # Atomic so that a broker reloading on SIGHUP never reads a half-written password or ACL file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        if current is None:
            os.fchmod(fd, mode)
        else:
            _keep_owner_and_mode(fd, path, current)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        Path(tmp).replace(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            Path(tmp).unlink()
        raise


def _keep_owner_and_mode(fd: int, path: Path, current: os.stat_result) -> None:
    """Give the temp file ``fd`` the owner, group and mode ``path`` has now, or refuse."""
    try:
        # Owner and group first: chown clears set-id bits, and fchmod then sets the mode exactly.
        if (current.st_uid, current.st_gid) != (os.geteuid(), os.getegid()):
            os.fchown(fd, current.st_uid, current.st_gid)
        os.fchmod(fd, stat.S_IMODE(current.st_mode))
    except PermissionError as exc:
        # Renaming a file we could not give the same owner over the old one would lock the broker
        # out of it; refuse before anything changes.
        raise ProvisioningError(
            f"{path}: cannot keep its owner {current.st_uid}:{current.st_gid} and mode "
            f"{stat.S_IMODE(current.st_mode):o} on rewrite ({exc.strerror}); run as its owner or root"
        ) from exc


def _principal_to_json(p: Principal) -> dict[str, Any]:
    return {
        "name": p.name,
        "role": p.role,
        "district_code": p.district_code,
        "revoked": p.revoked,
        "password": p.password.mosquitto(),
        "device": None if p.device is None else {k: getattr(p.device, k) for k in DeviceSpec.__slots__},
    }


def _principal_from_json(item: Mapping[str, Any]) -> Principal:
    dev = item.get("device")
    return Principal(
        name=item["name"],
        role=item["role"],
        password=PasswordHash.from_mosquitto(item["password"]),
        district_code=item.get("district_code"),
        device=None if dev is None else DeviceSpec(**dev),
        revoked=bool(item.get("revoked", False)),
    )


# -- device lists ---------------------------------------------------------------------------------


def load_device_file(path: Path) -> list[DeviceSpec]:
    """Read devices from a GeoJSON FeatureCollection of Points or a CSV with a header row."""
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() in {".geojson", ".json"} or text.lstrip().startswith("{"):
        return _from_geojson(str(path), json.loads(text))
    return _from_csv(str(path), text)


def _from_geojson(source: str, doc: Mapping[str, Any]) -> list[DeviceSpec]:
    if doc.get("type") != "FeatureCollection":
        raise DeviceFileError(source, "top level", "expected a GeoJSON FeatureCollection")
    out = []
    for i, feature in enumerate(doc.get("features", [])):
        where = f"feature {i}"
        geometry = feature.get("geometry") or {}
        if geometry.get("type") != "Point":
            raise DeviceFileError(source, where, "geometry must be a Point")
        lon, lat = geometry["coordinates"][:2]
        out.append(_spec(source, where, dict(feature.get("properties") or {}), lat, lon))
    return out


def _from_csv(source: str, text: str) -> list[DeviceSpec]:
    out = []
    for i, row in enumerate(csv.DictReader(text.splitlines())):
        where = f"row {i + 2}"  # +1 for the header, +1 to count from 1 like an editor
        lat, lon = row.get("lat"), row.get("lon")
        out.append(_spec(source, where, dict(row), lat or None, lon or None))
    return out


def _spec(source: str, where: str, props: dict[str, Any], lat: object, lon: object) -> DeviceSpec:
    def text(key: str) -> str | None:
        value = props.get(key)
        return None if value is None or value == "" else str(value)

    device_id, kind, district = text("id"), text("kind"), text("district_code")
    if device_id is None or kind is None or district is None:
        raise DeviceFileError(source, where, "id, kind and district_code are required")
    if kind not in get_args(DeviceKind):
        raise DeviceFileError(source, where, f"kind must be lamp or blinker, got {kind!r}")
    try:
        check_identity(device_id)
        check_district(district)
        lat_f = None if lat is None else float(cast(str, lat))
        lon_f = None if lon is None else float(cast(str, lon))
    except (ProvisioningError, ValueError, TypeError) as exc:
        raise DeviceFileError(source, where, str(exc)) from exc
    for value, bound in ((lat_f, 90.0), (lon_f, 180.0)):
        if value is not None and not (math.isfinite(value) and -bound <= value <= bound):
            raise DeviceFileError(source, where, f"coordinate out of range: {value}")
    paired = text("paired")
    if paired is not None:
        check_identity(paired)
    return DeviceSpec(
        id=device_id,
        kind=cast(DeviceKind, kind),
        district_code=district,
        dong_code=text("dong_code"),
        lamp_number=text("lamp_number"),
        paired=paired,
        lat=lat_f,
        lon=lon_f,
    )
