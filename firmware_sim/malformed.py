"""Deliberately bad payloads for testing the backend's validation and dead-letter path.

Every payload is clearly marked: JSON objects carry `"malformed": "<label>"`, raw bytes start
with `MALFORMED`. They are derived from a valid payload the device would send, so each one
breaks exactly one rule of the wire protocol (DESIGN.md §3).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

__all__ = ["OVERSIZED_BYTES", "MalformedPayload", "malformed_payloads"]

# Four times the protocol's 16 KiB payload limit (broker/_payloads.py); telemetry is ~250 bytes.
OVERSIZED_BYTES = 64 * 1024


@dataclass(frozen=True)
class MalformedPayload:
    """A bad payload and what is wrong with it."""

    label: str
    raw: bytes


def _marked(label: str, payload: Mapping[str, object]) -> MalformedPayload:
    body = {"malformed": label, **payload}
    # allow_nan: NaN and Infinity are exactly what some of these must carry.
    return MalformedPayload(label, json.dumps(body, allow_nan=True).encode())


def malformed_payloads(valid: Mapping[str, object]) -> Iterator[MalformedPayload]:
    """Variants of the valid payload `valid`, each breaking one rule: types, NaN, missing fields, size."""
    yield MalformedPayload("not_json", b"MALFORMED not json {")
    yield MalformedPayload("invalid_utf8", b'{"malformed": "invalid_utf8", "x": "\xff\xfe"}')
    yield MalformedPayload("not_an_object", json.dumps(["malformed", "not_an_object"]).encode())
    for key in ("ts", "seq"):
        if key in valid:
            yield _marked(f"missing_{key}", {k: v for k, v in valid.items() if k != key})
    if "seq" in valid:
        yield _marked("seq_wrong_type", {**valid, "seq": str(valid["seq"])})
        yield _marked("seq_negative", {**valid, "seq": -1})
    if "ts" in valid:
        yield _marked("ts_wrong_type", {**valid, "ts": "yesterday"})
    numeric = [k for k, v in valid.items() if isinstance(v, float | int) and not isinstance(v, bool)]
    for key in numeric:
        if key in ("ts", "seq"):
            continue
        yield _marked(f"{key}_nan", {**valid, key: float("nan")})
        yield _marked(f"{key}_infinite", {**valid, key: float("inf")})
        yield _marked(f"{key}_wrong_type", {**valid, key: "high"})
        yield _marked(f"{key}_bool", {**valid, key: True})
    if "level" in valid:
        yield _marked("level_out_of_range", {**valid, "level": 150})
    if "lat" in valid:
        yield _marked("position_out_of_range", {**valid, "lat": 999.0, "lon": -999.0})
    yield _marked("oversized", {**valid, "padding": "x" * OVERSIZED_BYTES})
