"""The ASGI application: ``create_app(config)``, built by ``streetlight.bootstrap`` (or a test) with
its `ApiConfig`; nothing is built or read from the environment at import.

Resources are opened in the lifespan and handed to the requests as the lifespan state ``api``
(an `AppState`, ``request.state.api``): the database pool, the gazetteer, the lamp index
(refreshed in the background), the stream hub.

Errors: invalid input is a 4xx naming the field or the problem, never a 5xx. Request bodies
are checked by pydantic (422 with ``detail`` naming each field); the cores' ValueErrors (a
coordinate the gazetteer refuses) become 422 too; the database's refusal of a value
(`store.errors.StoreRejected`) is a 422 as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from api import (
    callback,
    cameras,
    history,
    lamps,
    logredact,
    operators,
    patrol,
    residents,
    soslive,
    stream,
    walklive,
)
from api.config import ApiConfig
from api.guards import BoundaryMiddleware
from api.hub import StreamHub
from api.loginguard import LoginGuard
from api.metrics import ApiMetrics, MetricsMiddleware
from api.places import LampDirectory
from api.ratelimit import RateLimiter
from api.schemas import describe_errors
from api.security import dummy_password_hash, password_hasher
from api.state import AppState
from api.telephony import AsteriskAmi
from api.walkbatch import PositionBatcher, PositionsBusy
from geo import Gazetteer
from runtime import tuning
from runtime.logs import get_logger
from store.connections import connect
from store.errors import DatabaseError, DatabaseUnavailable, StoreRejected, ValueRefused
from store.jobs import storage_jobs_report
from store.notes import WALK_CHANNEL
from store.operators import shared_audit_key, shared_token_secret
from store.pools import async_pool, sync_pool
from store.schema import apply_migrations

log = get_logger(__name__)
STATIC_DIR = Path(__file__).resolve().parent / "static"

DESCRIPTION = """Smart streetlights for Seoul's alleys: the residents' Safety app (safe walks that
brighten the lamps ahead, SOS to the district control centre) and the operators' console API.

Residents authenticate with the install token from `POST /v1/residents`; operators with the
session token from `POST /v1/auth/login`. Both as `Authorization: Bearer <token>`."""


async def _refresh_lamps(state: AppState) -> None:
    while True:
        await asyncio.sleep(state.config.lamp_refresh_s)
        try:
            await run_in_threadpool(_refresh_once, state)
        except DatabaseError as exc:
            log.warning("lamp_index_refresh_failed", error=str(exc))


def _refresh_once(state: AppState) -> int:
    with state.pool.connection() as conn:
        return state.lamps.refresh(conn)


def _open_state(config: ApiConfig, metrics: ApiMetrics) -> AppState:
    with connect(config.database_url) as conn:
        apply_migrations(conn)
        secret = config.token_secret.encode("utf-8") if config.token_secret else shared_token_secret(conn)
        audit_key = config.audit_key.encode("utf-8") if config.audit_key else shared_audit_key(conn)
    pool = sync_pool(config.database_url, min_size=config.pool_min, max_size=config.pool_max, name="api")
    pool.open(wait=True, timeout=30.0)
    hasher = password_hasher(config.kdf_time_cost, config.kdf_memory_kib)
    state = AppState(
        config=config,
        pool=pool,
        gazetteer=config.gazetteer if config.gazetteer is not None else Gazetteer.load(),
        lamps=LampDirectory(),
        hasher=hasher,
        token_secret=secret,
        audit_key=audit_key,
        metrics=metrics,
        hub=StreamHub(config.database_url, metrics, config.stream_queue),
        position_limit=RateLimiter(max(1, round(config.walk_positions_per_s)), 1.0),
        sos_limit=RateLimiter(config.sos_per_minute, 60.0),
        sos_fold_limit=RateLimiter(1, 1.0),
        login_guard=LoginGuard(
            per_username=config.login_failures_per_username,
            per_address=config.login_failures_per_address,
            window_s=config.login_window_s,
            spray_usernames=config.login_spray_usernames,
        ),
        register_limit=RateLimiter(config.registrations_per_hour, 3600.0)
        if config.registrations_per_hour
        else None,
        walk_start_limit=RateLimiter(config.walk_starts_per_minute, 60.0),
        dummy_password_hash=dummy_password_hash(hasher),
        db_slots=asyncio.Semaphore(config.pool_max),
    )
    if config.pbx is not None:
        state.telephony = AsteriskAmi(config.pbx)
    _refresh_once(state)
    return state


def create_app(config: ApiConfig) -> FastAPI:
    """The application for `config`; its resources open when the server starts it (lifespan)."""
    metrics = ApiMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, AppState]]:
        logredact.install()  # after the server configured its loggers
        state = await run_in_threadpool(_open_state, config, metrics)
        state.apool = async_pool(
            config.database_url, min_size=1, max_size=config.live_pool_max, name="api-live"
        )
        await state.apool.open(wait=True, timeout=30.0)
        state.positions = PositionBatcher(
            state.apool,
            WALK_CHANNEL,
            gather_s=config.walk_batch_gather_s,
            max_batch=config.walk_batch_max,
            max_queue=config.walk_batch_queue,
        )
        async with asyncio.TaskGroup() as tg:
            hub_task = tg.create_task(state.hub.run(), name="stream-hub")
            refresh_task = tg.create_task(_refresh_lamps(state), name="lamp-refresh")
            positions_task = tg.create_task(state.positions.run(), name="walk-positions")
            try:
                await asyncio.wait_for(state.hub.ready.wait(), timeout=15.0)
                tuning.settle("api")
                yield {"api": state}
            finally:
                hub_task.cancel()
                refresh_task.cancel()
                positions_task.cancel()
                await state.apool.close()
                await run_in_threadpool(state.pool.close)

    app = FastAPI(
        title="streetlight API",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.add_middleware(
        BoundaryMiddleware,
        max_body_bytes=config.max_body_bytes,
        tile_origin=config.map_tiles.origin if config.map_tiles else None,
    )
    app.add_middleware(MetricsMiddleware, metrics=lambda: metrics)
    app.include_router(residents.router)
    app.include_router(history.router)  # before operators: /v1/alerts/search is no alert id
    app.include_router(operators.router)
    app.include_router(lamps.router)
    app.include_router(cameras.router)
    app.include_router(patrol.router)
    app.include_router(stream.router)
    app.include_router(walklive.router)
    app.include_router(callback.router)
    app.include_router(soslive.router)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail, errors = describe_errors(exc.errors())
        return JSONResponse({"detail": detail, "errors": errors}, status_code=422)

    @app.exception_handler(ValueError)
    async def invalid_value(request: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(ValueRefused)
    async def value_refused(request: Request, exc: ValueRefused) -> JSONResponse:
        # A value PostgreSQL (or psycopg's encoder) refuses: a NUL byte, an untranslatable character,
        # a number out of range. The caller's input, so a 4xx; the boundary checks catch most first.
        log.info("value_refused", path=request.url.path, error_type=type(exc).__name__)
        return JSONResponse({"detail": f"a value was refused by the database: {exc}"}, status_code=400)

    @app.exception_handler(StoreRejected)
    async def store_rejected(request: Request, exc: StoreRejected) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.get("/healthz", tags=["health"], summary="Liveness")
    def healthz() -> dict[str, str]:
        """The process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="Readiness", responses={503: {"description": "not ready"}})
    def readyz(request: Request) -> JSONResponse:
        """The database answers and the live stream listens; the storage jobs' health is shown."""
        state: AppState = request.state.api
        try:
            with state.pool.connection(timeout=2.0) as conn:
                conn.execute("SELECT 1")
        except (DatabaseError, OSError) as exc:
            # Unauthenticated: the error text (host, port, user) goes to the log, not the answer.
            log.warning("readyz_database_unavailable", error=str(exc), error_type=type(exc).__name__)
            return JSONResponse({"status": "database unavailable"}, status_code=503)
        if not state.hub.ready.is_set():
            return JSONResponse({"status": "stream not listening"}, status_code=503)
        # Failed or late storage jobs are shown, not a reason to stop serving (docs/operations.md).
        try:
            with state.pool.connection(timeout=2.0) as conn:
                jobs: dict[str, object] = storage_jobs_report(conn)
        except (DatabaseError, OSError) as exc:
            log.warning("readyz_storage_jobs_unknown", error=str(exc), error_type=type(exc).__name__)
            jobs = {"status": "unknown"}
        return JSONResponse(
            {"status": "ready", "lamps": len(state.lamps.snapshot.index), "storage_jobs": jobs}
        )

    @app.get(
        "/metrics",
        tags=["health"],
        summary="Prometheus metrics",
        response_class=Response,
        responses={401: {"description": "wrong or missing bearer token"}, 404: {"description": "not served"}},
    )
    def prometheus(request: Request) -> Response:
        """Counters and latency histograms in the Prometheus text format, for the scraper holding
        ``STREETLIGHT_API_METRICS_TOKEN`` (``Authorization: Bearer``); not served without one."""
        wanted = request.state.api.config.metrics_token
        if not wanted:
            return JSONResponse({"detail": "metrics are not served: set STREETLIGHT_API_METRICS_TOKEN"}, 404)
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), wanted.encode()):
            return JSONResponse(
                {"detail": "metrics need Authorization: Bearer <metrics token>"},
                401,
                {"WWW-Authenticate": "Bearer"},
            )
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/", include_in_schema=False)
    def console_root() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/console", include_in_schema=False)
    def console() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/app", include_in_schema=False)
    def safety_app() -> RedirectResponse:
        return RedirectResponse("/app/", status_code=308)

    # The residents' Safety page (a PWA: manifest and service worker under /app/, its scope).
    app.mount("/app", StaticFiles(directory=STATIC_DIR / "app", html=True), name="app")

    @app.exception_handler(PositionsBusy)
    async def positions_busy(request: Request, exc: PositionsBusy) -> JSONResponse:
        return JSONResponse({"detail": f"busy, retry: {exc}"}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(DatabaseUnavailable)
    async def database_down(request: Request, exc: DatabaseUnavailable) -> JSONResponse:
        # The one 5xx we answer on purpose: the app should retry, and says so.
        return JSONResponse(
            {"detail": "database unavailable, retry"}, status_code=503, headers={"Retry-After": "1"}
        )

    return app
