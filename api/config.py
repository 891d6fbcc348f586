"""The API's configuration: what `streetlight.settings.Settings` says, plus limits tests may shrink."""

from __future__ import annotations

from dataclasses import dataclass

from streetlight.settings import Settings


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """Everything the application needs, passed to `create_app` (tests build their own)."""

    database_url: str
    token_secret: str | None = None  # None: the secret kept in the database (store_meta)
    token_ttl_s: float = 12 * 3600.0
    kdf_time_cost: int = 3
    kdf_memory_kib: int = 65536
    pool_min: int = 2
    pool_max: int = 10
    live_pool_max: int = 10  # async connections of the walkers' live sockets (per API process)
    # Issue 6: "positions at most 2 per second per walk, SOS at most 3 per minute per resident".
    walk_positions_per_s: float = 2.0
    sos_per_minute: int = 3
    # Failed logins per username per minute before 429 (password guessing).
    logins_per_minute: int = 10
    # New residents per client address per minute; 0 = no limit (the default: many phones share
    # one carrier NAT address, and the simulator registers thousands from one host).
    registrations_per_minute: int = 0
    lamp_refresh_s: float = 30.0  # how often the lamp index is rebuilt from the devices table
    nearest_lamps: int = 3  # lamps named in an SOS's place
    stream_queue: int = 1000  # per console; a console that falls this far behind is disconnected

    @classmethod
    def from_settings(cls, settings: Settings, database_url: str | None = None) -> ApiConfig:
        """The configuration of a deployed API (database from the argument or DATABASE_URL)."""
        url = database_url or settings.database_url
        if not url:
            raise ValueError("the API needs a database: set DATABASE_URL")
        return cls(
            database_url=url,
            token_secret=settings.api_token_secret,
            token_ttl_s=settings.api_token_ttl_s,
            kdf_time_cost=settings.api_kdf_time_cost,
            kdf_memory_kib=settings.api_kdf_memory_kib,
        )
