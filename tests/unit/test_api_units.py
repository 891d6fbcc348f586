"""The API's pure pieces: rate limits, session tokens, password hashing, request validation."""

from __future__ import annotations

import logging
import math

import pytest
from pydantic import ValidationError

from api.config import proxy_options
from api.loginguard import LoginGuard, Throttle
from api.logredact import RedactCredentials
from api.ratelimit import RateLimiter, retry_after_header
from api.schemas import SosIn, WalkPositionIn
from api.security import (
    InvalidToken,
    SessionClaims,
    hash_resident_token,
    new_resident_token,
    password_hasher,
    sign_token,
    verify_password,
    verify_token,
)
from api.state import address_key

SECRET = b"k" * 32


def test_a_limit_refuses_the_extra_hit_and_says_how_long_to_wait() -> None:
    limit = RateLimiter(2, 1.0)
    assert limit.hit("walk", 10.0) == 0.0
    assert limit.hit("walk", 10.2) == 0.0
    assert limit.hit("walk", 10.4) == pytest.approx(0.6)
    assert limit.hit("other", 10.4) == 0.0
    assert limit.hit("walk", 11.01) == 0.0  # the first hit left the window
    assert retry_after_header(0.01) == "1" and retry_after_header(1.2) == "2"


def test_a_limit_forgets_idle_keys_to_bound_memory() -> None:
    limit = RateLimiter(1, 1.0, max_keys=10)
    for i in range(100):
        limit.hit(f"k{i}", float(i))
    assert len(limit._hits) <= 10


def test_a_key_at_its_limit_is_never_forgotten_however_many_other_keys_are_hit() -> None:
    limit = RateLimiter(3, 900.0, max_keys=50)
    for _ in range(3):
        limit.hit("op-admin", 0.0)
    for i in range(10_000):
        limit.hit(f"u{i}", 1.0 + i * 1e-3)
    assert limit.wait("op-admin", 20.0) > 0
    assert len(limit._hits) <= 50


def test_a_locked_username_stays_locked_after_failures_on_many_other_usernames() -> None:
    guard = LoginGuard(per_username=10, per_address=30, window_s=900.0, spray_usernames=5)
    for i in range(10):
        guard.failed("op-admin", f"198.51.100.{i}", 0.0)
    guard._by_user._max_keys = 100  # the default 100,000 keys, shrunk for the test's time
    for i in range(3_000):
        guard.failed(f"u{i}", f"203.0.113.{i // 29}", 1.0)
    refusal = guard.username_refusal("op-admin", 2.0)
    assert refusal is not None and refusal.throttle is Throttle.USERNAME


def test_tokens_round_trip_and_refuse_forgery_and_expiry() -> None:
    claims = SessionClaims("s-1", "kim", expires_at=1000.0)
    token = sign_token(SECRET, claims)
    assert verify_token(SECRET, token, 999.0) == claims
    with pytest.raises(InvalidToken, match="expired"):
        verify_token(SECRET, token, 1000.0)
    with pytest.raises(InvalidToken, match="signature"):
        verify_token(b"x" * 32, token, 999.0)
    forged = token.split(".")
    forged[1] = forged[1][::-1]
    with pytest.raises(InvalidToken):
        verify_token(SECRET, ".".join(forged), 999.0)
    with pytest.raises(InvalidToken, match="malformed"):
        verify_token(SECRET, "nonsense", 0.0)


def test_passwords_are_argon2id_and_resident_tokens_are_stored_hashed() -> None:
    hasher = password_hasher(1, 8)
    stored = hasher.hash("s3cret")
    assert stored.startswith("$argon2id$")
    assert verify_password(hasher, stored, "s3cret") and not verify_password(hasher, stored, "nope")
    assert not verify_password(hasher, "not a hash", "s3cret")
    token = new_resident_token()
    assert len(token) >= 40 and hash_resident_token(token) != token and len(hash_resident_token(token)) == 64


@pytest.mark.parametrize(
    "bad",
    [
        {"lat": math.nan, "lon": 127.0, "accuracy_m": 5},
        {"lat": 37.5, "lon": math.inf, "accuracy_m": 5},
        {"lat": -91, "lon": 127.0, "accuracy_m": 5},
        {"lat": 37.5, "lon": 181, "accuracy_m": 5},
        {"lat": 37.5, "lon": 127.0, "accuracy_m": 5, "speed_mps": -1},
    ],
)
def test_positions_refuse_nan_infinity_and_out_of_range(bad: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        WalkPositionIn.model_validate(bad)


def test_an_sos_needs_only_a_position() -> None:
    sos = SosIn.model_validate({"lat": 37.5, "lon": 127.0})
    assert sos.accuracy_m is None and sos.walk_id is None


def test_login_guard_slows_an_address_and_a_username_and_reports_a_spray_once() -> None:
    guard = LoginGuard(per_username=3, per_address=5, window_s=60.0, spray_usernames=3)
    for i in range(3):
        assert guard.failed("kim", "10.0.0.1", float(i)) is False
    refusal = guard.username_refusal("kim", 3.0)
    assert (
        refusal is not None
        and refusal.throttle is Throttle.USERNAME
        and refusal.wait_s == pytest.approx(57.0)
    )
    assert guard.address_refusal("10.0.0.1", 3.0) is None and guard.username_refusal("lee", 3.0) is None
    assert guard.failed("lee", "10.0.0.1", 4.0) is False
    assert guard.failed("park", "10.0.0.1", 5.0) is True  # a third username from one address
    assert guard.failed("choi", "10.0.0.1", 6.0) is False  # reported once per window
    refusal = guard.address_refusal("10.0.0.1", 6.0)
    assert refusal is not None and refusal.throttle is Throttle.ADDRESS
    assert guard.address_refusal("10.0.0.2", 6.0) is None
    assert guard.address_refusal("10.0.0.1", 61.0) is None  # the window moved on
    assert (
        guard.first_report("k", 0.0) and not guard.first_report("k", 59.0) and guard.first_report("k", 60.0)
    )


def test_credentials_in_websocket_debug_lines_are_redacted() -> None:
    def record(msg: str, *args: object) -> logging.LogRecord:
        r = logging.LogRecord("uvicorn.error", logging.DEBUG, __file__, 1, msg, args, None)
        RedactCredentials().filter(r)
        return r

    assert record("< %s: %s", "Authorization", "Bearer abc").getMessage() == "< Authorization: [redacted]"
    assert record("< %s: %s", "Sec-WebSocket-Protocol", "streetlight.v1, bearer.v2.x.y").getMessage() == (
        "< Sec-WebSocket-Protocol: [redacted]"
    )
    assert record("< %s", 'TEXT \'{"token": "abc"}\' [16 bytes]').getMessage() == "< [redacted]"
    assert record("< %s: %s", "Host", "example").getMessage() == "< Host: example"
    assert (
        record("< GET %s HTTP/1.1", "/v1/stream?last_event_id=3")
        .getMessage()
        .endswith("last_event_id=3 HTTP/1.1")
    )


def test_the_other_services_metrics_servers_listen_on_loopback_by_default() -> None:
    from streetlight.cli import build_parser

    parser = build_parser()
    for command in (["ingest"], ["controller"]):
        args, _ = parser.parse_known_args(command)
        assert args.metrics_host == "127.0.0.1", command


def test_an_ipv6_client_is_keyed_by_its_64_and_an_ipv4_one_by_its_address() -> None:
    assert address_key("2001:db8:1:2::a") == address_key("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::a") != address_key("2001:db8:1:2::a")
    assert address_key("::ffff:198.51.100.7") == address_key("198.51.100.7") == "198.51.100.7"
    assert address_key("unknown") == "unknown"


def test_proxy_headers_are_read_only_from_named_proxies_and_never_from_anyone() -> None:
    assert proxy_options(None) == {"proxy_headers": False}
    assert proxy_options(" ") == {"proxy_headers": False}
    assert proxy_options("172.30.0.10, 10.0.0.0/8") == {
        "proxy_headers": True,
        "forwarded_allow_ips": "172.30.0.10,10.0.0.0/8",
    }
    with pytest.raises(ValueError, match="not '\\*'"):
        proxy_options("*")
