"""What the application holds while it runs (opened in the lifespan), and the request dependencies
that hand it out: the connection pool, the gazetteer, the lamp index, limits, the stream hub."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated

from argon2 import PasswordHasher
from fastapi import Depends, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from alerts import AlertKind, resident_pseudonym
from api.config import ApiConfig
from api.hub import StreamHub
from api.loginguard import LoginGuard
from api.metrics import ApiMetrics
from api.places import CameraDirectory, LampDirectory
from api.ratelimit import RateLimiter
from api.security import InvalidToken, Operator, hash_resident_token, verify_token
from api.telephony import Telephony
from api.walkbatch import PositionBatcher
from geo import Gazetteer
from store.operators import session_account
from store.types import AsyncPool, Conn, Pool
from store.walks import resident_by_token_hash


@dataclass
class AppState:
    """The running application's resources."""

    config: ApiConfig
    pool: Pool
    gazetteer: Gazetteer
    lamps: LampDirectory
    hasher: PasswordHasher
    token_secret: bytes
    audit_key: bytes  # names residents in the audit log by a pseudonym (`resident_subject`)
    metrics: ApiMetrics
    hub: StreamHub
    position_limit: RateLimiter
    sos_limit: RateLimiter
    sos_fold_limit: RateLimiter  # presses over `sos_limit` written into their alert: 1/s per alert
    login_guard: LoginGuard
    register_limit: RateLimiter | None
    walk_start_limit: RateLimiter
    dummy_password_hash: str  # verified for unknown usernames (same time as a wrong password)
    db_slots: asyncio.Semaphore  # request connections in use (the pool's max size)
    # The walkers' live sockets write from the event loop (no thread hop per position); opened in
    # the lifespan, on the server's loop.
    apool: AsyncPool | None = None
    # Walk positions, batched into one statement and one NOTIFY (opened in the lifespan with apool).
    positions: PositionBatcher | None = None
    # The centre's telephone system for call-backs (api/telephony.py); None: tel: links only.
    telephony: Telephony | None = None
    # The camera register's index, rebuilt when the cameras table changes (api/places.py).
    cameras: CameraDirectory = field(default_factory=CameraDirectory)


async def get_state(request: Request) -> AppState:
    """The application's state (set by the lifespan). ``async``: FastAPI runs a plain ``def``
    dependency in its thread pool, a thread hop per request for reading an attribute."""
    state: AppState = request.state.api
    return state


State = Annotated[AppState, Depends(get_state)]


def bearer_token(request: Request) -> str:
    """The request's ``Authorization: Bearer`` token; 401 when missing."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(
            401, "missing bearer token (Authorization: Bearer <token>)", {"WWW-Authenticate": "Bearer"}
        )
    return token.strip()


async def get_conn(state: State) -> AsyncIterator[Conn]:
    """A pooled connection (autocommit; wrap several writes in ``conn.transaction()``).

    A request waits for its connection here, on the event loop, never in a worker thread: as a
    sync dependency, a request blocked in ``pool.connection()`` held one of the threadpool's 40
    threads, and with more requests waiting than threads, the requests that had a connection found
    no thread to finish in, so all stalled until the pool timeout (measured with ``streetlight
    bench brighten``: 200 concurrent walkers got 503s after 30 s). ``db_slots`` has the pool's size.
    """
    async with state.db_slots:
        conn = await run_in_threadpool(state.pool.getconn)
        try:
            yield conn
        finally:
            await run_in_threadpool(state.pool.putconn, conn)


Db = Annotated[Conn, Depends(get_conn)]


def resident_subject(state: AppState, resident_id: str) -> str:
    """How the audit log names a resident: its pseudonym, never the id (docs/privacy.md)."""
    return resident_pseudonym(state.audit_key, resident_id)


def address_key(address: str) -> str:
    """The key of a client address in per-address limits and groupings: an IPv4 address as it is,
    an IPv6 address as its /64 (one home or phone is given a whole /64 to pick addresses from)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def client_address(request: Request) -> str:
    """The client's address as the server saw it (behind a proxy: the proxy's forwarded one)."""
    return request.client.host if request.client else "unknown"


def current_resident(request: Request, conn: Db) -> str:
    """The resident an install token belongs to; 401 when unknown or deleted."""
    resident = resident_by_token_hash(conn, hash_resident_token(bearer_token(request)))
    if resident is None:
        raise HTTPException(401, "unknown or revoked resident token", {"WWW-Authenticate": "Bearer"})
    return resident


class GuardRefused(InvalidToken):
    """A guard's token where only the operators' roles are allowed (a guard sees /v1/guards/... only)."""


GUARD_ROLE = "guard"


def operator_from_token(state: AppState, conn: Conn, token: str, *, allow_guard: bool = False) -> Operator:
    """The operator of a session token, with the account's role and district as they are now;
    InvalidToken for a forged or expired token, or a session ended (logout, account disabled);
    GuardRefused for a guard's token unless `allow_guard`."""
    claims = verify_token(state.token_secret, token, time.time())
    row = session_account(conn, claims.session_id)
    if row is None or row["username"] != claims.username:
        raise InvalidToken("operator session ended (logged out, account disabled or replaced); log in again")
    if row["role"] == GUARD_ROLE and not allow_guard:
        raise GuardRefused("a guard's account may use /v1/guards/... and /v1/auth/logout only")
    return Operator(row["username"], row["role"], row["district_code"], claims.expires_at, claims.session_id)


def current_operator(request: Request, state: State, conn: Db) -> Operator:
    """The logged-in operator; 401 for a missing, forged or expired token or an ended session.

    One indexed query per request (the handler's own pooled connection, shared through FastAPI's
    dependency cache), measured in docs/security.md."""
    return _account(request, state, conn, allow_guard=False)


def _account(request: Request, state: AppState, conn: Conn, *, allow_guard: bool) -> Operator:
    try:
        return operator_from_token(state, conn, bearer_token(request), allow_guard=allow_guard)
    except GuardRefused as exc:
        raise HTTPException(403, str(exc)) from exc
    except InvalidToken as exc:
        raise HTTPException(401, str(exc), {"WWW-Authenticate": "Bearer"}) from exc


def current_account(request: Request, state: State, conn: Db) -> Operator:
    """The logged-in operator or guard (logout); 401 as `current_operator`."""
    return _account(request, state, conn, allow_guard=True)


def current_guard(request: Request, state: State, conn: Db) -> Operator:
    """The logged-in guard; 401 as `current_operator`, 403 for an operator's account."""
    account = _account(request, state, conn, allow_guard=True)
    if account.role != GUARD_ROLE:
        raise HTTPException(403, f"role {account.role!r} may not do this; needs guard")
    return account


Resident = Annotated[str, Depends(current_resident)]
CurrentOperator = Annotated[Operator, Depends(current_operator)]
CurrentAccount = Annotated[Operator, Depends(current_account)]
CurrentGuard = Annotated[Operator, Depends(current_guard)]

_DEVICE_ALERT_KINDS = tuple(k.value for k in AlertKind if k is not AlertKind.SOS)


# The roles that may see residents' positions (walkers, the walk and SOS overrides of lamps).
POSITION_ROLES = ("district", "city", "admin")


def visible_districts(op: Operator) -> list[str] | None:
    """The districts whose alerts and lamps an operator sees; None means all of them."""
    if op.role == "district":
        return [op.district or ""]
    if op.role == "maintenance" and op.district:
        return [op.district]
    return None


def visible_kinds(op: Operator) -> list[str] | None:
    """The alert kinds an operator sees; None means all (maintenance sees lamp alerts only)."""
    return list(_DEVICE_ALERT_KINDS) if op.role == "maintenance" else None


def may_see(op: Operator, districts: list[str], kind: str) -> bool:
    """True when the operator may see (and act on) an alert of this kind routed to these districts."""
    mine = visible_districts(op)
    kinds = visible_kinds(op)
    return (mine is None or bool(set(mine) & set(districts))) and (kinds is None or kind in kinds)


def require_role(op: Operator, *roles: str) -> None:
    """403 unless the operator has one of `roles`."""
    if op.role not in roles:
        raise HTTPException(403, f"role {op.role!r} may not do this; needs {' or '.join(roles)}")
