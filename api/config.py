"""The API's configuration (`ApiConfig`): built from the settings by `streetlight.bootstrap`, with
limits tests may shrink (`devkit.apiclient.fast_config`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

if TYPE_CHECKING:
    from api.telephony import AmiConfig
    from geo import Gazetteer
    from store.phones import PhoneKeyring

# A WebSocket message (a walker's position, a console's ping) is under 1 KiB; uvicorn's default
# would read 16 MiB. Passed to the server (`streetlight api`, `devkit.apiclient.serve`), not the app.
WS_MAX_MESSAGE_BYTES = 65536


def proxy_options(trusted_proxies: str | None) -> dict[str, object]:
    """uvicorn's proxy options: ``X-Forwarded-For`` is read only from the proxies named (addresses or
    networks, comma-separated); with none named it is never read, so no local process or container
    chooses the address the per-address limits, the SOS grouping and the audit rows see. ValueError
    for ``*`` (anyone could name their own address)."""
    if trusted_proxies is None or not trusted_proxies.strip():
        return {"proxy_headers": False}
    names = [n.strip() for n in trusted_proxies.split(",") if n.strip()]
    if "*" in names:
        raise ValueError("STREETLIGHT_API_TRUSTED_PROXIES: name the proxy's address or network, not '*'")
    return {"proxy_headers": True, "forwarded_allow_ips": ",".join(names)}


_PLACEHOLDER = re.compile(r"\{([a-z]+)\}")
_TILE_PLACEHOLDERS = frozenset({"z", "x", "y", "s", "r"})


@dataclass(frozen=True, slots=True)
class MapTiles:
    """The console's raster basemap: a tile server's URL template (``{z}/{x}/{y}``; ``{s}`` for
    subdomains a, b, c and ``{r}`` for ``@2x`` on high-density screens), the attribution its
    licence asks for (shown in the map's corner) and its deepest zoom level. None in `ApiConfig`:
    no tile server, the console draws the districts and neighbourhoods as its base layer."""

    url_template: str
    attribution: str = ""
    max_zoom: int = 19

    def __post_init__(self) -> None:
        parts = urlsplit(self.url_template)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                "STREETLIGHT_MAP_TILES must be an http(s) URL template such as "
                f"https://tile.openstreetmap.org/{{z}}/{{x}}/{{y}}.png, got {self.url_template!r}"
            )
        found = set(_PLACEHOLDER.findall(self.url_template))
        if missing := {"z", "x", "y"} - found:
            raise ValueError(
                f"STREETLIGHT_MAP_TILES needs the placeholders {{z}}, {{x}} and {{y}}; "
                f"{', '.join('{' + m + '}' for m in sorted(missing))} missing in {self.url_template!r}"
            )
        if unknown := found - _TILE_PLACEHOLDERS:
            names = ", ".join("{" + u + "}" for u in sorted(unknown))
            raise ValueError(
                f"STREETLIGHT_MAP_TILES: unknown placeholder {names} (known: {{z}} {{x}} {{y}} {{s}} {{r}});"
                " put keys into the URL itself"
            )
        if "{s}" in parts.netloc and not parts.netloc.startswith("{s}."):
            raise ValueError("STREETLIGHT_MAP_TILES: {s} may only be the first label of the host ({s}.host)")
        if "{" in parts.netloc.replace("{s}.", "", 1):
            raise ValueError("STREETLIGHT_MAP_TILES: only {s} may appear in the host")
        if not 1 <= self.max_zoom <= 22:
            raise ValueError(f"STREETLIGHT_MAP_MAX_ZOOM must be between 1 and 22, got {self.max_zoom}")

    @property
    def origin(self) -> str:
        """The tile server's origin as a Content-Security-Policy source (``{s}.`` becomes ``*.``)."""
        parts = urlsplit(self.url_template)
        return f"{parts.scheme}://{parts.netloc.replace('{s}.', '*.', 1)}"


_CAMERA_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
_CAMERA_PLACEHOLDERS = frozenset({"camera_id", "management_no"})
_STREAM_SCHEMES = ("http", "https", "rtsp", "rtsps")


@dataclass(frozen=True, slots=True)
class CameraStreams:
    """A camera's stream link: a URL template (``STREETLIGHT_CCTV_URL_TEMPLATE``) with
    ``{camera_id}`` and/or ``{management_no}`` (관리번호), e.g. the centre's video management
    system's live view. None in `ApiConfig`: cameras are listed without a link."""

    url_template: str

    def __post_init__(self) -> None:
        parts = urlsplit(self.url_template)
        if parts.scheme not in _STREAM_SCHEMES or not parts.hostname:
            raise ValueError(
                "STREETLIGHT_CCTV_URL_TEMPLATE must be an http(s) or rtsp(s) URL template such as "
                f"https://vms.example/live/{{management_no}}, got {self.url_template!r}"
            )
        found = set(_CAMERA_PLACEHOLDER.findall(self.url_template))
        if unknown := found - _CAMERA_PLACEHOLDERS:
            names = ", ".join("{" + u + "}" for u in sorted(unknown))
            raise ValueError(
                f"STREETLIGHT_CCTV_URL_TEMPLATE: unknown placeholder {names} "
                "(known: {camera_id} {management_no})"
            )
        if not found:
            raise ValueError("STREETLIGHT_CCTV_URL_TEMPLATE needs {camera_id} or {management_no}")

    def link(self, camera_id: str, management_no: str | None) -> str | None:
        """The camera's link (its values URL-quoted), or None when the template needs a 관리번호 the
        camera does not have."""
        if "{management_no}" in self.url_template and not management_no:
            return None
        return self.url_template.replace("{camera_id}", quote(camera_id, safe="")).replace(
            "{management_no}", quote(management_no or "", safe="")
        )


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """Everything the application needs, passed to `create_app` (tests build their own)."""

    database_url: str
    token_secret: str | None = None  # None: the secret kept in the database (store_meta)
    # The key of residents' pseudonyms in the audit log (STREETLIGHT_AUDIT_KEY); None: a random key
    # kept in the database (store_meta), shared by API instances. Changing it starts new pseudonyms.
    audit_key: str | None = None
    token_ttl_s: float = 12 * 3600.0
    kdf_time_cost: int = 3
    kdf_memory_kib: int = 65536
    pool_min: int = 2
    pool_max: int = 10
    live_pool_max: int = 10  # async connections of the walkers' live sockets (per API process)
    # Walk positions gather this long after the first into one statement and one NOTIFY
    # (api/walkbatch.py): at 2,000 positions/s on 2 API processes, batches of ~10 instead of a
    # transaction each; it delays the answer, not the lamps (the NOTIFY and the answer both wait
    # for the commit).
    walk_batch_gather_s: float = 0.010
    walk_batch_max: int = 200  # positions per statement (4 notifications of ~50)
    walk_batch_queue: int = 5000  # positions waiting per process; beyond it 503 + Retry-After
    # Issue 6: "positions at most 2 per second per walk, SOS at most 3 per minute per resident".
    walk_positions_per_s: float = 2.0
    sos_per_minute: int = 3
    # Password guessing (api/loginguard.py): failed logins per username (refused from places the
    # operator never used) and per source address (refused whatever the username), per window;
    # an address failing on this many usernames in the window is a suspected spray (audited).
    login_failures_per_username: int = 10
    login_failures_per_address: int = 30
    login_window_s: float = 900.0
    login_spray_usernames: int = 5
    # New residents per client address per hour; 0 = no limit. A phone registers once per install,
    # so 60 an hour leaves room for a carrier NAT address shared by many phones.
    registrations_per_hour: int = 60
    # Walks in progress per resident: a new walk ends the oldest beyond this (an app restarted
    # mid-walk is never locked out); walk starts per resident per minute.
    walks_per_resident: int = 1
    walk_starts_per_minute: int = 6
    # SOS alerts of other residents from one client address within this window are grouped, and
    # all but the first flagged as a suspected burst (never dropped).
    sos_burst_window_s: float = 600.0
    # Request bodies: the largest is an operator account (~1.5 kB); 64 KiB is generous.
    max_body_bytes: int = 65536
    # ``/metrics`` answers only ``Authorization: Bearer <metrics_token>``; None: not served (404).
    metrics_token: str | None = None
    lamp_refresh_s: float = 30.0  # how often the lamp index is rebuilt from the devices table
    nearest_lamps: int = 3  # lamps named in an SOS's place
    stream_queue: int = 1000  # per console; a console that falls this far behind is disconnected
    # The console's basemap (STREETLIGHT_MAP_TILES); None: the district polygons are the base layer.
    map_tiles: MapTiles | None = None
    # Cameras listed for an SOS (GET /v1/alerts/{id}/cameras): within this radius of the latest
    # position (STREETLIGHT_CAMERA_RADIUS_M), each with a stream link when a template is set.
    camera_radius_m: float = 100.0
    camera_streams: CameraStreams | None = None
    camera_refresh_s: float = 30.0  # how often the camera index checks the cameras table for changes
    # The gazetteer the process loaded once (bootstrap); None: the vendored one, loaded at start.
    gazetteer: Gazetteer | None = None
    # The keys of residents' phone numbers (STREETLIGHT_PHONE_KEYS, store/phones.py); None: phone
    # numbers are not taken (PUT /v1/residents/me/phone answers 503).
    phone_keys: PhoneKeyring | None = None
    # The centre's PBX for call-backs (STREETLIGHT_PBX_AMI_URL, api/telephony.py); None: the
    # console offers the tel: link only.
    pbx: AmiConfig | None = None

    def __post_init__(self) -> None:
        if not 1.0 <= self.camera_radius_m <= 1000.0:
            raise ValueError(
                f"STREETLIGHT_CAMERA_RADIUS_M must be between 1 and 1000 (metres), got {self.camera_radius_m}"
            )
