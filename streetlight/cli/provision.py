"""``streetlight provision``: device and account credentials, and the broker configuration from them."""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import fcntl
import hashlib
import io
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from broker.security import (
    REGISTRY_FILE,
    DeviceSpec,
    MosquittoOptions,
    Principal,
    ProvisioningError,
    Registry,
    TlsFiles,
    acl_table,
    load_device_file,
    reload_mosquitto,
    write_emqx,
    write_mosquitto,
    write_private,
)
from geo import load_safety_zones
from streetlight import bootstrap
from streetlight.cameraregister import import_cameras
from streetlight.guardroster import import_guards
from streetlight.lampregister import RegisterImport, is_register, lamp_list_csv, parse_register
from streetlight.settings import Settings, warn_secrets_in_flags
from streetlight.standarddata import decode

if TYPE_CHECKING:
    from geo import Gazetteer

HELP = "register lamps and blinkers, issue credentials, generate Mosquitto/EMQX security config"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``streetlight provision``."""
    parser.add_argument(
        "--devices",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="GeoJSON FeatureCollection of Points, CSV (id,kind,district_code,lat,lon,...), or a district's "
        "lamp register as published (전국보안등정보표준데이터, UTF-8 or CP949); repeatable",
    )
    parser.add_argument(
        "--guards",
        type=Path,
        metavar="FILE",
        help="the guards' roster (CSV: zone,username,name,phone,weekdays,starts,ends,password) into the "
        "database (--database-url); alone, nothing else is provisioned (docs/operations.md, Guards)",
    )
    parser.add_argument(
        "--cameras",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="camera register as published (전국CCTV표준데이터, UTF-8 or CP949) into the cameras table "
        "(--database-url); alone, nothing else is provisioned; repeatable",
    )
    parser.add_argument(
        "--lamp-list",
        type=Path,
        metavar="FILE",
        help="the register's lamps as CSV (device_id, lamp_number, address, ...) for the people who flash "
        "the controllers (default: STATE_DIR/lamp-list.csv)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="registry location (default: $STREETLIGHT_DATA_DIR/provision)",
    )
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="Mosquitto files (default: STATE_DIR/mosquitto)"
    )
    parser.add_argument("--emqx-out", type=Path, metavar="DIR", help="EMQX files (default: STATE_DIR/emqx)")
    parser.add_argument(
        "--install-dir",
        type=Path,
        metavar="DIR",
        help="where mosquitto will read the files from, if not --out (the paths inside mosquitto.conf)",
    )
    parser.add_argument(
        "--emqx-install-dir",
        type=Path,
        metavar="DIR",
        help="the same for EMQX (paths inside emqx-security.conf)",
    )
    parser.add_argument(
        "--service",
        action="extend",
        nargs="+",
        default=[],
        metavar="ROLE@INSTANCE",
        help="service instance accounts, one per running process (ingest@0 ingest@1 controller@north-a); "
        "the broker binds a client id to its username, so instances never share an account",
    )
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help="mirror the devices into this database for ingest's registry check (default: DATABASE_URL)",
    )
    parser.add_argument(
        "--rotate", action="append", default=[], metavar="ID", help="issue a new secret; repeatable"
    )
    parser.add_argument(
        "--revoke", action="append", default=[], metavar="ID", help="revoke credentials; repeatable"
    )
    secrets_to = parser.add_mutually_exclusive_group()
    secrets_to.add_argument("--secrets-out", type=Path, metavar="FILE", help="new secrets as CSV, mode 0600")
    secrets_to.add_argument(
        "--print-secrets", action="store_true", help="print new secrets to stdout instead"
    )
    parser.add_argument(
        "--dev-port", type=int, metavar="PORT", default=1883, help="loopback password listener port (0: none)"
    )
    parser.add_argument(
        "--tls-port", type=int, metavar="PORT", default=0, help="mTLS listener port (0: none, the default)"
    )
    parser.add_argument(
        "--tls-dir",
        type=Path,
        metavar="DIR",
        help="ca.crt, server.crt, server.key, crl.pem (see make_test_ca.sh)",
    )
    parser.add_argument(
        "--persistence-dir",
        type=Path,
        metavar="DIR",
        default=Path("/var/lib/mosquitto"),
        help="where mosquitto keeps sessions, queues and retained states across restarts "
        "(default /var/lib/mosquitto; 'none' to keep them in memory only)",
    )
    parser.add_argument(
        "--broker-user",
        metavar="USER",
        help="mosquitto's `user` option: the account it runs as when started as root",
    )
    reload_to = parser.add_mutually_exclusive_group()
    reload_to.add_argument("--reload-pid", type=int, metavar="PID", help="SIGHUP this mosquitto afterwards")
    reload_to.add_argument("--reload-pidfile", type=Path, metavar="FILE", help="SIGHUP the mosquitto in FILE")
    parser.add_argument("--list", action="store_true", help="list every principal and exit")
    parser.add_argument(
        "--rotate-share-group",
        action="store_true",
        help="give ingest a new secret share group in the database (--database-url) and exit; "
        "restart every ingest instance afterwards",
    )


def run(args: argparse.Namespace) -> int:
    """Provision, rotate, revoke; write the registry and broker files; optionally reload mosquitto."""
    warn_secrets_in_flags("provision", {"--database-url": args.database_url})
    state_dir: Path = args.state_dir or Settings.from_env().data_dir / "provision"
    registry_path = state_dir / REGISTRY_FILE
    try:
        if args.list:
            _print_list(Registry.load(registry_path))
            return 0
        if args.guards:
            settings = Settings.from_env()
            url = args.database_url or settings.database_url
            if not url:
                raise ProvisioningError("--guards needs a database: pass --database-url or set DATABASE_URL")
            zones = load_safety_zones()
            print("\n".join(import_guards(args.guards, url, zones, bootstrap.phone_keyring(settings))))
            if not (args.cameras or args.devices or args.rotate or args.revoke or args.service):
                return 0
        if args.cameras:
            url = args.database_url or Settings.from_env().database_url
            print("\n".join(import_cameras(args.cameras, url, bootstrap.load_gazetteer())))
            if not (args.devices or args.rotate or args.revoke or args.service or args.rotate_share_group):
                return 0
        if args.rotate_share_group:
            print(f"provision: {_rotate_share_group(args.database_url or Settings.from_env().database_url)}")
            return 0
        # Everything that can be refused is checked before anything is written.
        devices, registers = _read_devices(args.devices)
        options = _mosquitto_options(args)
        with _locked(state_dir):
            registry = Registry.load(registry_path)
            # With no device list the registry's devices are kept as they are.
            report = registry.provision(
                devices or [p.device for p in registry.devices() if p.device is not None],
                services=args.service,
            )
            for name in args.rotate:
                report.secrets[name] = registry.rotate(name)
                report.rotated.append(name)
            for name in args.revoke:
                registry.revoke(name)
                report.secrets.pop(name, None)
                report.revoked.append(name)
            acl_table(registry)  # raises UnsafeAclError before the registry changes on disk
            # Secrets first: if they cannot be written, nothing is saved and the run can be repeated.
            secrets_where = _emit_secrets(report.secrets, args, state_dir)
            registry.save(registry_path)
            mosq = write_mosquitto(
                registry, args.out or state_dir / "mosquitto", options, install_dir=args.install_dir
            )
            emqx = write_emqx(
                registry, args.emqx_out or state_dir / "emqx", install_dir=args.emqx_install_dir
            )
            lamp_list = _write_lamp_list(registers, args.lamp_list or state_dir / "lamp-list.csv")
        reloaded = _reload(args)
        database = _mirror(registry, args.database_url or Settings.from_env().database_url)
    except (ProvisioningError, OSError) as exc:
        print(f"streetlight provision: {exc}", file=sys.stderr)
        return 1

    all_devices = registry.devices()
    n_revoked = sum(p.revoked for p in all_devices)
    new_devices = sum(1 for n in report.added if registry.device(n) is not None)
    print(
        f"provision: {len(all_devices)} devices ({new_devices} new, {len(report.updated)} updated, "
        f"{n_revoked} revoked), {len(registry) - len(all_devices)} accounts"
    )
    if report.rotated:
        print(f"  rotated    {', '.join(report.rotated)}")
    if report.revoked:
        print(f"  revoked    {', '.join(report.revoked)}")
    print(f"  registry   {registry_path}")
    print(f"  secrets    {secrets_where}")
    print(f"  mosquitto  {mosq.conf.parent}/ (mosquitto.conf, passwords, acl)")
    print(f"  emqx       {emqx.conf.parent}/ (emqx-security.conf, bootstrap users, acl.conf, rules)")
    print(f"  broker     {reloaded}")
    print(f"  database   {database}")
    for imported in registers:
        print(
            f"  register   {imported.source} ({imported.encoding}): {len(imported.lamps)} lamps, "
            f"{len(imported.bad)} rows skipped"
        )
        for bad in imported.bad:
            print(f"    skipped  {bad}")
    if lamp_list:
        print(f"  lamp list  {lamp_list}")
    return 0


def _read_devices(paths: list[Path]) -> tuple[list[DeviceSpec], list[RegisterImport]]:
    """The devices of every file (a lamp register's good rows), with a neighbourhood code from the
    gazetteer for each device placed without one; and the registers' imports (with their bad rows)."""

    gazetteer: Gazetteer | None = None
    devices: list[DeviceSpec] = []
    registers: list[RegisterImport] = []
    for path in paths:
        text, encoding = decode(path.read_bytes(), str(path))
        if is_register(text):
            gazetteer = gazetteer or bootstrap.load_gazetteer()
            imported = parse_register(text, gazetteer, str(path), encoding)
            registers.append(imported)
            devices.extend(imported.lamps)
        else:
            devices.extend(load_device_file(path))
    if any(d.dong_code is None and d.lat is not None and d.lon is not None for d in devices):
        gazetteer = gazetteer or bootstrap.load_gazetteer()
        devices = [_with_dong(d, gazetteer) for d in devices]
    return devices, registers


def _with_dong(device: DeviceSpec, gazetteer: Gazetteer) -> DeviceSpec:
    if device.dong_code is not None or device.lat is None or device.lon is None:
        return device
    where = gazetteer.locate(device.lat, device.lon)
    if where.dong_code is None or where.district_code != device.district_code:
        return device
    return dataclasses.replace(device, dong_code=where.dong_code)


def _write_lamp_list(registers: list[RegisterImport], path: Path) -> str:
    if not registers:
        return ""
    lamps = [lamp for imported in registers for lamp in imported.lamps]
    write_private(path, lamp_list_csv(lamps), mode=0o640)
    return f"{path} ({len(lamps)} lamps: device id next to the lamp number, for flashing the controllers)"


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """One provisioning run at a time per state dir (two operators must not lose each other's work)."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with (state_dir / ".lock").open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise ProvisioningError(f"another `streetlight provision` is running on {state_dir}") from exc
        yield


def _mosquitto_options(args: argparse.Namespace) -> MosquittoOptions:
    tls = None
    if args.tls_port:
        if args.tls_dir is None:
            raise ProvisioningError(
                "--tls-port needs --tls-dir (create one with broker/security/make_test_ca.sh)"
            )
        d = args.tls_dir.resolve()
        # crl.pem is required, not optional: without it a revoked certificate reconnects.
        tls = TlsFiles(d / "ca.crt", d / "server.crt", d / "server.key", d / "crl.pem")
    persistence = None if str(args.persistence_dir) == "none" else args.persistence_dir
    return MosquittoOptions(
        dev_port=args.dev_port or None,
        tls_port=args.tls_port or None,
        tls=tls,
        run_as=args.broker_user,
        persistence_dir=persistence,
    )


def _emit_secrets(secrets: dict[str, str], args: argparse.Namespace, state_dir: Path) -> str:
    if not secrets:
        return "none issued (existing credentials unchanged)"
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["username", "secret"])
    writer.writerows(sorted(secrets.items()))
    if args.print_secrets:
        print(buf.getvalue(), end="")
        return f"{len(secrets)} printed above (shown once; they are stored only hashed)"
    path: Path = args.secrets_out or (
        state_dir / "secrets" / f"issued-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}.csv"
    )
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # O_EXCL: never overwrite an earlier batch the installer has not collected yet.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(buf.getvalue())
    return f"{path} ({len(secrets)} new, mode 0600: hand it to the installer, then delete it)"


def _mirror(registry: Registry, database_url: str | None) -> str:
    """Mirror the devices into the ``devices`` table, where ingest's registry check reads them."""
    if not database_url:
        return "not told: pass --database-url (or set DATABASE_URL) so ingest refuses unknown ids"
    from store.connections import connect
    from store.errors import DatabaseError
    from store.registry import ProvisionedDevice, mark_provisioned, mark_revoked
    from store.schema import apply_migrations

    def row(p: Principal, d: DeviceSpec) -> ProvisionedDevice:
        # A fingerprint of the stored hash shows a rotation; the hash itself stays in the registry.
        fingerprint = hashlib.sha256(p.password.mosquitto().encode()).hexdigest()[:32]
        return ProvisionedDevice(
            d.id,
            d.kind,
            d.district_code,
            d.dong_code,
            d.lamp_number,
            d.paired,
            d.lat,
            d.lon,
            fingerprint,
            address=d.address,
            lamp_count=d.lamp_count,
        )

    devices = [(p, p.device) for p in registry.devices() if p.device is not None]
    try:
        with connect(database_url, connect_timeout_s=10) as conn:
            apply_migrations(conn)
            with conn.transaction():
                n = mark_provisioned(conn, [row(p, d) for p, d in devices])
                mark_revoked(conn, [p.name for p, _ in devices if p.revoked])
    except DatabaseError as exc:
        raise ProvisioningError(
            f"files written, but the database was not updated ({exc}); re-run with the same arguments"
        ) from exc
    return f"{n} devices mirrored into the devices table (ingest's registry check)"


def _rotate_share_group(database_url: str | None) -> str:
    """A new secret for ingest's share group (a leaked one lets devices take turns of the telemetry)."""
    if not database_url:
        raise ProvisioningError("--rotate-share-group needs --database-url (or DATABASE_URL)")
    from ingest._registry import SHARE_GROUP_KEY
    from store.connections import connect
    from store.errors import DatabaseError
    from store.registry import rotate_shared_secret
    from store.schema import apply_migrations

    try:
        with connect(database_url, connect_timeout_s=10) as conn:
            apply_migrations(conn)
            rotate_shared_secret(conn, SHARE_GROUP_KEY)
    except DatabaseError as exc:
        raise ProvisioningError(f"the share group was not rotated: {exc}") from exc
    return (
        "ingest share group rotated (the name is not shown); restart every ingest instance: each "
        "subscribes in the new group and drops its subscriptions in the old one"
    )


def _reload(args: argparse.Namespace) -> str:
    pid: int | None = args.reload_pid
    if args.reload_pidfile is not None:
        pid = int(args.reload_pidfile.read_text().strip())
    if pid is None:
        return "not told: pass --reload-pid/--reload-pidfile (or restart it) to apply the new files"
    try:
        reload_mosquitto(pid)
    except ProcessLookupError:
        return f"NOT reloaded: no process {pid}"
    return f"reloaded (SIGHUP to pid {pid}); revoked clients are disconnected now"


def _print_list(registry: Registry) -> None:
    for p in registry:
        state = "revoked" if p.revoked else "active"
        print(f"{p.name:<40} {p.role:<15} {p.district_code or '-':<6} {state}")
