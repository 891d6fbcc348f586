"""Helpers for the API's tests and benchmarks: a cheap configuration, a client, seeded lamps."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import httpx
import psycopg
import uvicorn

from api.accounts import create_operator
from api.app import create_app
from api.config import WS_MAX_MESSAGE_BYTES, ApiConfig, proxy_options
from api.security import password_hasher
from devkit.localservices import free_port
from store.devices import upsert_device
from store.phones import PhoneKeyring
from store.schema import apply_migrations

# argon2id at its floor: tests check behaviour, not the cost (2 busy cores).
FAST_KDF = {"kdf_time_cost": 1, "kdf_memory_kib": 8}
PASSWORD = "correct horse battery"

# Points well inside one district (no neighbour within 50 m): 11020 Jung-gu, 11230 Gangnam-gu.
JUNG = (37.5610, 126.9940)
GANGNAM = (37.5000, 127.0500)
BUSAN = (35.1796, 129.0756)


# A random phone key per test process: the phone endpoints work in every test's API.
TEST_PHONE_KEYS = PhoneKeyring.parse(PhoneKeyring.generate("test"))


def fast_config(database_url: str, **changes: object) -> ApiConfig:
    """A configuration for tests: cheap password hashing, a small pool."""
    base: dict[str, object] = {
        "database_url": database_url,
        "pool_min": 1,
        "pool_max": 4,
        "phone_keys": TEST_PHONE_KEYS,
        **FAST_KDF,
    }
    base.update(changes)
    return ApiConfig(**base)  # type: ignore[arg-type]


def seed(
    database_url: str, lamps: Sequence[tuple[str, str, float, float]] = (), *, timescale: bool = False
) -> None:
    """Migrate, add lamps (id, district, lat, lon) and the operators tests log in as.

    The storage path is pinned, plain unless ``timescale``; a database already migrated keeps the
    path it was created on (a test's ``storage_url``)."""
    hasher = password_hasher(1, 8)
    with psycopg.connect(database_url, autocommit=True) as conn:
        apply_migrations(conn, timescale=timescale)
        for device_id, district, lat, lon in lamps:
            upsert_device(
                conn,
                device_id,
                kind="lamp",
                district_code=district,
                lat=lat,
                lon=lon,
                lamp_number=f"{district}-{device_id}",
            )
        create_operator(conn, "op-jung", PASSWORD, role="district", district="11020", hasher=hasher)
        create_operator(conn, "op-gangnam", PASSWORD, role="district", district="11230", hasher=hasher)
        create_operator(conn, "op-city", PASSWORD, role="city", hasher=hasher)
        create_operator(conn, "op-maint", PASSWORD, role="maintenance", hasher=hasher)
        create_operator(conn, "op-admin", PASSWORD, role="admin", hasher=hasher)


@contextmanager
def serve(config: ApiConfig, *, port: int | None = None, trusted_proxies: str | None = None) -> Iterator[str]:
    """A real uvicorn serving the application on 127.0.0.1 in a thread; yields its base URL.
    ``X-Forwarded-For`` is read from `trusted_proxies` only, as `streetlight api` does."""
    port = port or free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            ws="websockets-sansio",
            ws_max_size=WS_MAX_MESSAGE_BYTES,
            lifespan="on",
            **proxy_options(trusted_proxies),  # type: ignore[arg-type]
        )
    )
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30.0
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the API did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15.0)


@contextmanager
def client(config: ApiConfig) -> Iterator[httpx.Client]:
    """An HTTP client of the application running in a real uvicorn."""
    with serve(config) as base_url, httpx.Client(base_url=base_url, timeout=10.0) as c:
        yield c


def login(c: httpx.Client, username: str) -> dict[str, str]:
    """Authorization headers of a seeded operator."""
    r = c.post("/v1/auth/login", json={"username": username, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def resident(c: httpx.Client) -> dict[str, str]:
    """Authorization headers of a fresh resident."""
    r = c.post("/v1/residents")
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}
