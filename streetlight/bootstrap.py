"""The one wiring module: each service's typed configuration built from the `Settings`, and the
clients, pools and services put together for every process the ``streetlight`` command starts.

Below this module nothing reads the environment or the settings. Each service package defines
the configuration it takes (``ingest.WorkerConfig``, ``controller.ControllerConfig``,
``api.config.ApiConfig``) and receives its collaborators as arguments. The sub-commands
(``streetlight/cli/``) parse their options and call the functions here; every process entry
starts with `start_process` (the one logging set-up) and loads the gazetteer once
(`load_gazetteer`), handing it to the services that locate points.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import multiprocessing
import os
import random
import signal
import socket
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtime import logs
from runtime.logs import get_logger
from streetlight.settings import Settings

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from alerts import AreaNamer
    from api.config import ApiConfig
    from api.telephony import AmiConfig
    from broker import AmqpSource, ConnectionParams
    from controller import ControllerConfig
    from geo import Gazetteer
    from ingest import Locator, SenderCheckFn, WorkerConfig
    from store.jobs import RetentionPolicy
    from store.phones import PhoneKeyring

log = get_logger(__name__)

CheckResult = tuple[str | None, str | None, str]


def start_process(settings: Settings) -> None:
    """What every process entry does first: the one logging set-up (level and format from the
    settings: ``STREETLIGHT_LOG_LEVEL``, ``STREETLIGHT_LOG_FORMAT``)."""
    logs.configure(settings.log_level, settings.log_format)


def load_gazetteer() -> Gazetteer:
    """The vendored Seoul gazetteer (about 0.2 s); called once per process and passed on."""
    from geo import Gazetteer

    return Gazetteer.load()


# --------------------------------------------------------------------------- API


@dataclass(frozen=True, slots=True)
class ApiServer:
    """How ``streetlight api`` serves the application: where, with how many processes, and the
    server's options (uvicorn's)."""

    host: str
    port: int
    workers: int = 1
    log_level: str = "info"
    trusted_proxies: str | None = None

    def uvicorn_options(self) -> dict[str, Any]:
        """uvicorn's options; the logging is the process's own (`start_process`), not uvicorn's.
        ValueError for trusted proxies it refuses (`api.config.proxy_options`)."""
        from api.config import WS_MAX_MESSAGE_BYTES, proxy_options

        return {
            "log_config": None,
            "log_level": self.log_level.lower(),
            "access_log": False,
            "ws": "websockets-sansio",
            "ws_max_size": WS_MAX_MESSAGE_BYTES,
            "lifespan": "on",
            **proxy_options(self.trusted_proxies),
        }


def retention_policy(settings: Settings) -> RetentionPolicy:
    """The retention job's policy from the settings (docs/privacy.md); ValueError when a period is
    not positive."""
    from store.jobs import RetentionPolicy

    for name, days in (
        ("STREETLIGHT_SOS_EXACT_DAYS", settings.sos_exact_days),
        ("STREETLIGHT_DELETION_HOLD_DAYS", settings.deletion_hold_days),
    ):
        if not days > 0:
            raise ValueError(f"{name} must be a positive number of days, got {days}")
    return RetentionPolicy(
        sos_track=timedelta(days=settings.sos_exact_days),
        deletion_hold=timedelta(days=settings.deletion_hold_days),
    )


def phone_keyring(settings: Settings) -> PhoneKeyring | None:
    """The keys of residents' phone numbers (``STREETLIGHT_PHONE_KEYS``), or None; PhoneKeyError
    (a ValueError that never holds a key) when the setting is malformed."""
    from store.phones import PhoneKeyring

    return PhoneKeyring.parse(settings.phone_keys) if settings.phone_keys else None


def pbx_config(settings: Settings) -> AmiConfig | None:
    """The centre's PBX (``STREETLIGHT_PBX_AMI_URL`` and friends), or None; ValueError when the URL
    is not ``ami://user@host[:port]``."""
    from urllib.parse import urlsplit

    from api.telephony import AmiConfig

    if not settings.pbx_ami_url:
        return None
    parts = urlsplit(settings.pbx_ami_url)
    if parts.scheme != "ami" or not parts.hostname or not parts.username:
        raise ValueError(
            f"STREETLIGHT_PBX_AMI_URL must be ami://user@host[:port], got {settings.pbx_ami_url!r}"
        )
    return AmiConfig(
        host=parts.hostname,
        port=parts.port or 5038,
        username=parts.username,
        secret=settings.pbx_ami_secret or parts.password or "",
        channel=settings.pbx_channel,
        context=settings.pbx_context,
        exten=settings.pbx_exten,
    )


def api_config(settings: Settings, database_url: str, *, gazetteer: Gazetteer | None = None) -> ApiConfig:
    """The API's configuration from the settings (the database from the command line or the settings).
    ValueError names a setting that is not valid (the basemap's or the cameras' URL template, the
    camera radius)."""
    from api.config import ApiConfig, CameraStreams, MapTiles

    tiles = (
        MapTiles(settings.map_tiles, settings.map_attribution, settings.map_max_zoom)
        if settings.map_tiles
        else None
    )
    return ApiConfig(
        database_url=database_url,
        token_secret=settings.api_token_secret,
        audit_key=settings.audit_key,
        token_ttl_s=settings.api_token_ttl_s,
        kdf_time_cost=settings.api_kdf_time_cost,
        kdf_memory_kib=settings.api_kdf_memory_kib,
        registrations_per_hour=settings.api_registrations_per_hour,
        metrics_token=settings.api_metrics_token,
        map_tiles=tiles,
        camera_radius_m=settings.camera_radius_m,
        camera_streams=CameraStreams(settings.cctv_url_template) if settings.cctv_url_template else None,
        gazetteer=gazetteer,
        phone_keys=phone_keyring(settings),
        pbx=pbx_config(settings),
    )


def serve_api(config: ApiConfig, server: ApiServer, settings: Settings) -> None:
    """Serve the application until SIGINT/SIGTERM.

    One worker: uvicorn in this process. Several: this process binds the listening socket and
    starts that many worker processes (``spawn``), each handed the socket and `config` as
    arguments; the kernel spreads the connections among them. A worker that dies is started again.
    """
    options = server.uvicorn_options()
    if server.workers <= 1:
        if config.gazetteer is None:
            config = dataclasses.replace(config, gazetteer=load_gazetteer())
        _run_uvicorn(config, options, host=server.host, port=server.port)
        return
    sock = _listening_socket(server.host, server.port)
    try:
        _supervise_api_workers(config, sock, options, server.workers, settings)
    finally:
        sock.close()


def _run_uvicorn(
    config: ApiConfig,
    options: dict[str, Any],
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    sock: socket.socket | None = None,
) -> None:
    import uvicorn

    from api.app import create_app

    uv = uvicorn.Server(uvicorn.Config(create_app(config), host=host, port=port, **options))
    uv.run(sockets=[sock] if sock is not None else None)


def _listening_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port, as uvicorn binds its own (IPv6 when the host is)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    sock.listen(2048)
    return sock


def api_worker_main(
    config: ApiConfig,
    sock: socket.socket,
    options: dict[str, Any],
    log_level: str,
    log_format: str | None,
    index: int = 0,
) -> None:
    """The entry of one API worker process: logging, the gazetteer, then uvicorn on the shared socket."""
    logs.configure(log_level, log_format)
    logs.bind_context(worker=index)  # every line of this process, its requests' too
    if config.gazetteer is None:
        config = dataclasses.replace(config, gazetteer=load_gazetteer())
    _run_uvicorn(config, options, sock=sock)


def _supervise_api_workers(
    config: ApiConfig, sock: socket.socket, options: dict[str, Any], workers: int, settings: Settings
) -> None:
    ctx = multiprocessing.get_context("spawn")
    children: dict[int, BaseProcess] = {}

    def start(i: int) -> None:
        proc = ctx.Process(
            target=api_worker_main,
            args=(config, sock, options, settings.log_level, settings.log_format, i),
            name=f"api-worker-{i}",
        )
        proc.start()
        children[i] = proc
        log.info("api_worker_started", worker=i, pid=proc.pid)

    stopping = False

    def _on_signal(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    old_int = signal.signal(signal.SIGINT, _on_signal)
    old_term = signal.signal(signal.SIGTERM, _on_signal)
    try:
        for i in range(workers):
            start(i)
        while not stopping:
            time.sleep(0.5)
            for i, proc in list(children.items()):
                if not proc.is_alive() and not stopping:
                    log.warning("api_worker_exited", worker=i, status=proc.exitcode, restarting=True)
                    time.sleep(1.0)
                    start(i)
    finally:
        for proc in children.values():
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)  # uvicorn's graceful shutdown
        for proc in children.values():
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
                proc.join()
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


# --------------------------------------------------------------------------- controller


def controller_owner() -> str:
    """A lease owner name unique among running controllers: host, process id and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{random.randrange(16**4):04x}"


def district_codes(spec: str, gazetteer: Gazetteer) -> tuple[str, ...]:
    """The candidate districts: the codes given, or every district of the gazetteer and the city centre."""
    from alerts import CITY_CENTRE, is_centre_code

    if spec.strip().lower() in ("", "all"):
        return (*sorted(area.code for area in gazetteer.districts), CITY_CENTRE)
    codes = tuple(dict.fromkeys(c.strip() for c in spec.split(",") if c.strip()))
    bad = [c for c in codes if not is_centre_code(c)]
    if bad:
        raise ValueError(f"district codes must be 5 digits, got {', '.join(bad)}")
    return codes


def controller_config(
    settings: Settings,
    *,
    mqtt: ConnectionParams,
    database_url: str,
    districts: tuple[str, ...],
    gazetteer: Gazetteer,
    owner: str | None = None,
    lease_ttl_s: float | None = None,
    hold_s: int | None = None,
    device_rate_per_s: float | None = None,
    device_burst: float | None = None,
) -> ControllerConfig:
    """The controller's configuration from the settings and the command line (None: the default)."""
    from alerts import EscalationPolicy
    from controller import ControllerConfig, HoldPolicy

    optional: dict[str, Any] = {
        "lease_ttl_s": lease_ttl_s,
        "holds": HoldPolicy(hold_s=hold_s) if hold_s is not None else None,
        "device_rate_per_s": device_rate_per_s,
        "device_burst": device_burst,
    }
    return ControllerConfig(
        mqtt=mqtt,
        database_url=database_url,
        districts=districts,
        owner=owner or controller_owner(),
        escalation=EscalationPolicy(
            renotify_after_s=settings.escalate_after_s,
            police_after_s=settings.police_after_s,
            guard_ack_after_s=settings.guard_ack_after_s,
        ),
        police_webhook_url=settings.police_webhook_url,
        guard_webhook_url=settings.guard_webhook_url,
        gazetteer=gazetteer,
        **{k: v for k, v in optional.items() if v is not None},
    )


def run_controller(config: ControllerConfig, *, metrics_host: str, metrics_port: int | None) -> None:
    """Run the controller (and its metrics server when a port is given) until SIGINT/SIGTERM."""
    from controller import Controller

    async def main() -> None:
        controller = Controller(config)
        if metrics_port:
            from controller._metrics import serve_metrics

            serve_metrics(controller, config.owner, metrics_host, metrics_port)
        task = asyncio.create_task(controller.run(), name="controller")
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        log.info("controller_started", owner=config.owner, candidates=len(config.districts))
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(main())


# --------------------------------------------------------------------------- ingest


def ingest_params(
    settings: Settings, mqtt_url: str, index: int, workers: int, password_file: Path | None
) -> ConnectionParams:
    """Worker ``index``'s login: with several workers each has its own account, ``USER@index``
    (``USER-index`` when USER is already an instance account), because the broker binds a client
    id to its username and two workers on one account would take each other's connection."""
    from broker import parse_mqtt_url

    user = parse_mqtt_url(mqtt_url).username
    if user is not None and workers > 1:
        user = f"{user}{'-' if '@' in user else '@'}{index}"
    return settings.mqtt_params(mqtt_url, username=user, password_file=password_file)


@dataclass(frozen=True, slots=True)
class IngestOptions:
    """What the command line says about one ingest worker beside the settings."""

    index: int = 0
    shared: bool = True
    client_id_prefix: str = "streetlight-ingest"
    group: str | None = None  # on a plain subscription: instances taking turns on one session
    lease_ttl_s: float = 15.0
    qos: int = 1
    max_rows: int = 5000
    max_delay_s: float = 0.2
    spool_max_bytes: int = 1 << 30
    device_rate_per_s: float | None = None
    device_burst: float | None = None
    registry_file: Path | None = None
    registry_check: str = "auto"  # auto, on or off
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0  # 0: no metrics server; worker i listens on port + i
    jobs: bool = True
    amqp: AmqpSource | None = None  # consume the cluster's quorum queue instead of subscribing over MQTT


def ingest_worker_config(
    settings: Settings, params: ConnectionParams | None, database_url: str, options: IngestOptions
) -> WorkerConfig:
    """One worker's configuration: its session, share group and spool (named like its session);
    with ``options.amqp`` (``params`` None) a consumer of the quorum queue, its spool named
    ``PREFIX-INDEX``."""
    from broker import INGEST_GROUP, ingest_filters
    from ingest import WorkerConfig, retired_share_group, share_group

    if options.amqp is not None:
        consumer = f"{options.client_id_prefix}-{options.index}"
        config = WorkerConfig(
            mqtt=None,
            amqp=options.amqp,
            database_url=database_url,
            spool_path=settings.data_dir / "spool" / f"{consumer}.spool",
            index=options.index,
            shared=False,
            client_id=consumer,
            max_rows=options.max_rows,
            max_delay_s=options.max_delay_s,
            spool_max_bytes=options.spool_max_bytes,
            state_resync=False,  # no retained states on a queue
        )
        if options.device_rate_per_s is not None:
            config.device_rate_per_s = options.device_rate_per_s
        if options.device_burst is not None:
            config.device_burst = options.device_burst
        return config
    if params is None:
        raise ValueError("an MQTT ingest worker needs the broker's connection parameters")

    group = share_group(database_url) if options.shared else None
    retired = retired_share_group(database_url) if options.shared else None
    # With an account the broker makes the client id the username (use_username_as_clientid).
    client_id = params.username or f"{options.client_id_prefix}-{options.index}"
    grouped = not options.shared and bool(options.group)
    config = WorkerConfig(
        mqtt=params,
        database_url=database_url,
        # One spool per instance, named like its MQTT session: both hold what this instance owes.
        spool_path=settings.data_dir / "spool" / f"{client_id}.spool",
        index=options.index,
        shared=options.shared,
        client_id=options.group if grouped and options.group else client_id,
        share_group=group or INGEST_GROUP,
        retired_filters=ingest_filters(group=retired) if retired else [],
        qos=options.qos,
        max_rows=options.max_rows,
        max_delay_s=options.max_delay_s,
        spool_max_bytes=options.spool_max_bytes,
        share_check=options.shared,  # in session, no extra login (ingest/_sharecheck.py)
    )
    if options.device_rate_per_s is not None:
        config.device_rate_per_s = options.device_rate_per_s
    if options.device_burst is not None:
        config.device_burst = options.device_burst
    return config


def ingest_sender_check(database_url: str, options: IngestOptions) -> SenderCheckFn | None:
    """The registry check: the file given, else the provisioned devices in the database."""
    from ingest import DatabaseRegistry, file_registry_lookup, sender_checker

    if options.registry_check == "off":
        # Messages from ids nobody provisioned are stored.
        log.warning("registry_check", state="off", reason="disabled")
        return None
    if options.registry_file is not None:
        return sender_checker(file_registry_lookup(options.registry_file))
    registry = DatabaseRegistry(database_url)
    provisioned = registry.load()
    check = sender_checker(registry.lookup)
    if options.registry_check == "on":
        log.info("registry_check", state="on", source="database", count=provisioned)
        return check
    if provisioned == 0:
        log.warning(
            "registry_check",
            state="off",
            reason="no_provisioned_devices",
            hint="streetlight provision --database-url turns it on (re-read every 30 s)",
        )
    else:
        log.info("registry_check", state="on", source="database", count=provisioned)

    def check_once_provisioned(device_id: str, district: str, payload: bytes) -> CheckResult:
        return check(device_id, district, payload) if registry.active() else (None, None, "")

    return check_once_provisioned


def gazetteer_namer(gazetteer: Gazetteer) -> AreaNamer:
    """(lat, lon, district, dong) -> the area's names, from the process's gazetteer: the codes when
    known, else where the point lies."""
    from alerts import AreaNames

    def names(lat: float, lon: float, district_code: str, dong_code: str) -> AreaNames:
        try:
            dong = gazetteer.dong(dong_code) if dong_code else None
        except KeyError:
            dong = None
        if dong is None:
            where = gazetteer.locate(lat, lon)
            if where.dong_code and (not district_code or where.district_code == district_code):
                dong = gazetteer.dong(where.dong_code)
        code = dong.district_code if dong is not None else district_code
        try:
            district = gazetteer.district(code) if code else None
        except KeyError:
            district = None
        return AreaNames(
            district_code=code,
            district_name=district.name if district else "",
            district_name_en=district.name_eng if district else "",
            dong_code=dong.code if dong else "",
            dong_name=dong.name if dong else "",
            dong_name_en=dong.name_eng if dong else "",
        )

    return names


def gazetteer_locator(gazetteer: Gazetteer) -> Locator:
    """(lat, lon) -> (district, dong) for the outage grouping, from the process's gazetteer."""

    def locate(lat: float, lon: float) -> tuple[str, str]:
        where = gazetteer.locate(lat, lon)
        return where.district_code or "", where.dong_code or ""

    return locate


class IngestRefused(RuntimeError):
    """The worker could not start (its spool is another's) or must not go on (its broker ignores
    its shared subscription); the message says why, ``reason`` names it for the log."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def run_ingest_worker(
    settings: Settings,
    config: WorkerConfig,
    options: IngestOptions,
    check: SenderCheckFn | None,
) -> None:
    """Run one ingest worker (its lease, metrics server and the periodic jobs) until SIGTERM/SIGINT.
    IngestRefused when its spool is held by another worker, or when its share check proves the
    broker delivers nothing to its shared subscription."""
    from ingest import (
        AmqpIngestWorker,
        ConsumerLease,
        IngestWorker,
        JobsLeader,
        SpoolLocked,
        raise_fault_alerts,
        serve_metrics,
    )

    logs.bind_context(worker=options.index)  # the worker process's main thread (its own threads bind too)
    grouped = not config.shared and bool(options.group) and config.amqp is None
    own_id = (config.mqtt.username if config.mqtt else None) or f"{options.client_id_prefix}-{options.index}"
    try:
        lease = (
            ConsumerLease(config.database_url, options.group, own_id, options.lease_ttl_s)
            if grouped and options.group
            else None
        )
        # One gazetteer for the births' neighbourhoods, the offline pass and the alerts' places in
        # words.
        gazetteer = _gazetteer_or_none()
        namer = None if gazetteer is None else gazetteer_namer(gazetteer)
        locate = None if gazetteer is None else gazetteer_locator(gazetteer)
        worker = (AmqpIngestWorker if config.amqp is not None else IngestWorker)(
            config,
            check_sender=check,
            on_faults=functools.partial(raise_fault_alerts, namer=namer),
            lease=lease,
            locate=locate,
        )
    except SpoolLocked as exc:
        raise IngestRefused(f"ingest worker {options.index}: {exc}", "spool_locked") from exc
    server = (
        serve_metrics(worker.metrics, options.metrics_host, options.metrics_port + options.index)
        if options.metrics_port
        else None
    )
    leader = None
    if options.jobs:
        leader = JobsLeader(
            config.database_url,
            silent_after_s=settings.telemetry_interval_s * settings.silent_after_intervals,
            locate=locate,
            metrics=worker.metrics,
            namer=namer,
            retention=retention_policy(settings),
            # Workers sharing the streams raise no data_loss alert from their batches' gaps.
            seq_gap_check=config.shared or config.amqp is not None,
        ).start()

    def _on_signal(_signum: int, _frame: object) -> None:
        worker.stop()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    log.info("ingest_worker_starting", spool=str(config.spool_path))
    try:
        worker.run()
    finally:
        if leader is not None:
            leader.stop()
        if server is not None:
            server.shutdown()
    log.info("ingest_worker_stopped", metrics=worker.metrics.snapshot())
    if worker.refused is not None:
        raise IngestRefused(
            f"ingest worker {options.index}: {worker.refused}", "shared_subscriptions_ignored"
        )


def _gazetteer_or_none() -> Gazetteer | None:
    """The gazetteer for the outage grouping and the alerts' place names, or None when geo cannot
    load (outages are then grouped by district and alerts carry codes only)."""
    try:
        return load_gazetteer()
    except Exception as exc:  # optional: alerts still work on district codes
        log.warning("gazetteer_unavailable", error=str(exc), outages_grouped_by="district", places_by="code")
        return None
