"""The API's pure pieces: rate limits, session tokens, password hashing, request validation."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

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
