"""The one place where configuration is read: environment variables into one frozen settings object.

Every service receives the values it needs from here as arguments; nothing else reads ``os.environ``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from broker import ConnectionParams


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number, got {raw!r}") from exc


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc


def _choice(env: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str:
    raw = env.get(name) or allowed[0]
    if raw not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {raw!r}")
    return raw


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything configurable, with the defaults a single-machine deployment wants."""

    mqtt_url: str | None = None
    """``mqtt://user@host:port`` (a secret in the URL works but shows in ``ps``), or a
    comma-separated list of a cluster's nodes (``mqtt://user@a:1883,mqtt://user@b:1883``: every
    client connects to the first that answers and moves to the next when its node dies); None
    means: start the embedded broker."""
    mqtt_password: str | None = None
    """The MQTT secret of the URL's user (``MQTT_PASSWORD``), so it is on no command line."""
    mqtt_password_file: Path | None = None
    """A file holding the secret, or provision's ``username,secret`` CSV (``MQTT_PASSWORD_FILE``)."""
    operator_password: str | None = None
    """``streetlight api --create-operator USER``'s password (``STREETLIGHT_OPERATOR_PASSWORD``)."""
    database_url: str | None = None
    """``postgresql://...``; None means: start the embedded PostgreSQL."""
    amqp_url: str | None = None
    """``amqp://user:secret@host:port/vhost[,amqp://...]``: the RabbitMQ nodes whose quorum queue
    ``streetlight ingest --source amqp`` consumes (``AMQP_URL``); any live one serves."""
    data_dir: Path = field(default_factory=lambda: Path.cwd() / ".streetlight")
    """Where embedded services keep their data, the spool and generated configuration."""
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    ingest_workers: int = 1
    telemetry_interval_s: float = 60.0
    silent_after_intervals: float = 3.0
    escalate_after_s: float = 30.0
    police_after_s: float = 90.0
    police_webhook_url: str | None = None
    guard_webhook_url: str | None = None
    """Where the controller POSTs an SOS inside a guard zone sent to its guards on duty (JSON)."""
    guard_ack_after_s: float = 60.0
    """An SOS sent to guards that none acknowledges this long goes to the city centre and police."""
    log_level: str = "INFO"
    log_format: str | None = None
    """``console`` (readable lines), ``json`` (one object a line) or None: console on a terminal,
    JSON otherwise (``STREETLIGHT_LOG_FORMAT``)."""
    local_broker: str = "auto"
    local_database: str = "auto"
    """Without DATABASE_URL: ``auto`` (pg_ctl if installed, else embedded), ``pg_ctl`` or ``embedded``."""
    """Without MQTT_URL: ``auto`` (mosquitto if installed, else embedded), ``mosquitto`` or ``embedded``."""
    api_token_secret: str | None = None
    """Signs operators' tokens; None: a random secret kept in the database, shared by API instances."""
    api_token_ttl_s: float = 12 * 3600.0  # one operator shift
    api_kdf_time_cost: int = 3  # argon2id passes for operators' passwords (RFC 9106 second choice)
    api_kdf_memory_kib: int = 65536  # argon2id memory, 64 MiB (RFC 9106 second recommended option)
    api_registrations_per_hour: int = 60
    """New residents per client address per hour; 0: no limit (benchmarks and simulators)."""
    api_metrics_token: str | None = None
    """Bearer token Prometheus sends to the API's ``/metrics``; None: ``/metrics`` is not served."""
    api_trusted_proxies: str | None = None
    """Comma-separated addresses or networks of the reverse proxies whose ``X-Forwarded-For`` the
    API believes; None: no proxy header is read (the peer's address is the client's)."""
    map_tiles: str | None = None
    """The console's basemap: a raster tile server's URL template (``STREETLIGHT_MAP_TILES``, e.g.
    the city's own, VWorld's or ``https://tile.openstreetmap.org/{z}/{x}/{y}.png``); None: the
    district and neighbourhood polygons are the map's base layer (no request leaves the site)."""
    map_attribution: str = ""
    """The attribution the tile server's licence asks for (``STREETLIGHT_MAP_ATTRIBUTION``)."""
    map_max_zoom: int = 19
    """The tile server's deepest zoom level (``STREETLIGHT_MAP_MAX_ZOOM``)."""
    camera_radius_m: float = 100.0
    """Cameras listed for an SOS: those within this many metres of the resident's latest position
    (``STREETLIGHT_CAMERA_RADIUS_M``)."""
    cctv_url_template: str | None = None
    """A camera's stream link (``STREETLIGHT_CCTV_URL_TEMPLATE``, e.g. the video management
    system's ``https://vms.example/live/{management_no}``; placeholders ``{camera_id}`` and
    ``{management_no}``); None: cameras are listed without a link."""
    sos_exact_days: float = 30.0
    """Days an SOS position is kept exact before it is coarsened to ~100 m everywhere
    (``STREETLIGHT_SOS_EXACT_DAYS``; 30: the period Seoul keeps SOS video). docs/privacy.md."""
    deletion_hold_days: float = 30.0
    """Days a deleted resident's SOS alert is held after the incident closed before it is unlinked
    and coarsened (``STREETLIGHT_DELETION_HOLD_DAYS``); an open incident is always held."""
    audit_key: str | None = None
    """Key of residents' pseudonyms in the audit log (``STREETLIGHT_AUDIT_KEY``); None: a random key
    kept in the database, shared by API instances."""
    phone_keys: str | None = field(default=None, repr=False)
    """Keys of residents' phone numbers (``STREETLIGHT_PHONE_KEYS``: ``id:base64key,...``, 32-byte
    AES keys, the current one first); None: the API takes no phone numbers. Never logged."""
    pbx_ami_url: str | None = None
    """The centre's Asterisk manager interface for call-backs (``STREETLIGHT_PBX_AMI_URL``,
    ``ami://user@host:5038``); None: the console offers the ``tel:`` link only."""
    pbx_ami_secret: str | None = field(default=None, repr=False)
    """The AMI user's secret (``STREETLIGHT_PBX_AMI_SECRET``)."""
    pbx_channel: str = "PJSIP/{number}@carrier"
    """The resident's leg of a call-back (``STREETLIGHT_PBX_CHANNEL``; ``{number}``: E.164 digits)."""
    pbx_context: str = "streetlight-callback"
    """Where the answered call goes (``STREETLIGHT_PBX_CONTEXT`` / ``STREETLIGHT_PBX_EXTEN``)."""
    pbx_exten: str = "{district}"
    storage: str = "auto"
    """Storage path on a new database: ``auto`` (TimescaleDB when it loads), ``timescaledb``
    (fail clearly when it cannot) or ``plain`` (native partitioning). Read by ``streetlight migrate``."""

    @property
    def timescale_wanted(self) -> bool | None:
        """``storage`` as ``apply_migrations`` takes it: None detects, True insists, False refuses."""
        return {"auto": None, "timescaledb": True, "plain": False}[self.storage]

    def mqtt_params(
        self, url: str, *, username: str | None = None, password_file: Path | None = None
    ) -> ConnectionParams:
        """Connection parameters for ``url``, the secret taken from the URL, ``MQTT_PASSWORD`` or
        the password file (``password_file`` over ``MQTT_PASSWORD_FILE``); raises MqttUrlError."""
        from broker import parse_mqtt_url, with_credentials

        return with_credentials(
            parse_mqtt_url(url),
            username=username,
            password=self.mqtt_password,
            password_file=password_file or self.mqtt_password_file,
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read settings from the environment (``os.environ`` unless given)."""
        e = os.environ if env is None else env
        data_dir = Path(e.get("STREETLIGHT_DATA_DIR") or (Path.cwd() / ".streetlight"))
        return cls(
            mqtt_url=e.get("MQTT_URL") or None,
            mqtt_password=e.get("MQTT_PASSWORD") or None,
            mqtt_password_file=Path(e["MQTT_PASSWORD_FILE"]) if e.get("MQTT_PASSWORD_FILE") else None,
            operator_password=e.get("STREETLIGHT_OPERATOR_PASSWORD") or None,
            database_url=e.get("DATABASE_URL") or None,
            amqp_url=e.get("AMQP_URL") or None,
            data_dir=data_dir,
            api_host=e.get("STREETLIGHT_API_HOST", "127.0.0.1"),
            api_port=_int(e, "STREETLIGHT_API_PORT", 8080),
            ingest_workers=_int(e, "STREETLIGHT_INGEST_WORKERS", 1),
            telemetry_interval_s=_float(e, "STREETLIGHT_TELEMETRY_INTERVAL_S", 60.0),
            silent_after_intervals=_float(e, "STREETLIGHT_SILENT_AFTER_INTERVALS", 3.0),
            escalate_after_s=_float(e, "STREETLIGHT_ESCALATE_AFTER_S", 30.0),
            police_after_s=_float(e, "STREETLIGHT_POLICE_AFTER_S", 90.0),
            police_webhook_url=e.get("STREETLIGHT_POLICE_WEBHOOK_URL") or None,
            guard_webhook_url=e.get("STREETLIGHT_GUARD_WEBHOOK_URL") or None,
            guard_ack_after_s=_float(e, "STREETLIGHT_GUARD_ACK_AFTER_S", 60.0),
            log_level=e.get("STREETLIGHT_LOG_LEVEL", "INFO"),
            log_format=_choice(e, "STREETLIGHT_LOG_FORMAT", ("console", "json"))
            if e.get("STREETLIGHT_LOG_FORMAT")
            else None,
            local_broker=_choice(e, "STREETLIGHT_LOCAL_BROKER", ("auto", "mosquitto", "embedded")),
            local_database=_choice(e, "STREETLIGHT_LOCAL_DATABASE", ("auto", "pg_ctl", "embedded")),
            api_token_secret=e.get("STREETLIGHT_API_TOKEN_SECRET") or None,
            api_token_ttl_s=_float(e, "STREETLIGHT_API_TOKEN_TTL_S", 12 * 3600.0),
            api_kdf_time_cost=_int(e, "STREETLIGHT_API_KDF_TIME_COST", 3),
            api_kdf_memory_kib=_int(e, "STREETLIGHT_API_KDF_MEMORY_KIB", 65536),
            api_registrations_per_hour=_int(e, "STREETLIGHT_API_REGISTRATIONS_PER_HOUR", 60),
            api_metrics_token=e.get("STREETLIGHT_API_METRICS_TOKEN") or None,
            api_trusted_proxies=e.get("STREETLIGHT_API_TRUSTED_PROXIES", "").strip() or None,
            map_tiles=e.get("STREETLIGHT_MAP_TILES", "").strip() or None,
            map_attribution=e.get("STREETLIGHT_MAP_ATTRIBUTION", "").strip(),
            map_max_zoom=_int(e, "STREETLIGHT_MAP_MAX_ZOOM", 19),
            storage=_choice(e, "STREETLIGHT_STORAGE", ("auto", "timescaledb", "plain")),
            camera_radius_m=_float(e, "STREETLIGHT_CAMERA_RADIUS_M", 100.0),
            cctv_url_template=e.get("STREETLIGHT_CCTV_URL_TEMPLATE", "").strip() or None,
            sos_exact_days=_float(e, "STREETLIGHT_SOS_EXACT_DAYS", 30.0),
            deletion_hold_days=_float(e, "STREETLIGHT_DELETION_HOLD_DAYS", 30.0),
            audit_key=e.get("STREETLIGHT_AUDIT_KEY") or None,
            phone_keys=e.get("STREETLIGHT_PHONE_KEYS", "").strip() or None,
            pbx_ami_url=e.get("STREETLIGHT_PBX_AMI_URL", "").strip() or None,
            pbx_ami_secret=e.get("STREETLIGHT_PBX_AMI_SECRET") or None,
            pbx_channel=e.get("STREETLIGHT_PBX_CHANNEL") or "PJSIP/{number}@carrier",
            pbx_context=e.get("STREETLIGHT_PBX_CONTEXT") or "streetlight-callback",
            pbx_exten=e.get("STREETLIGHT_PBX_EXTEN") or "{district}",
        )


def warn_secrets_in_flags(command: str, flags: Mapping[str, str | None]) -> list[str]:
    """Warn (stderr) about each ``--flag`` whose URL carries a password: any local user reads it
    in ``ps``. Returns the flags warned about. The URL still works; the fix is the environment."""
    from urllib.parse import urlsplit

    warned = []
    for flag, url in flags.items():
        try:  # a list of brokers: any of its URLs
            has_secret = any(urlsplit(item.strip()).password is not None for item in (url or "").split(","))
        except ValueError:
            has_secret = False
        if has_secret:
            warned.append(flag)
            sys.stderr.write(
                f"streetlight {command}: warning: {flag} carries a password, visible to every local user "
                "(ps); pass the URL without it and the secret in MQTT_PASSWORD[_FILE] (MQTT) or "
                "PGPASSWORD / PGPASSFILE (PostgreSQL)\n"
            )
    return warned
