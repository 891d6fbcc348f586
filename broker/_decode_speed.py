"""Measure decode-and-validate speed of a typical lamp telemetry payload with candidate libraries.

Run: ``python -m broker._decode_speed`` (figures go into docs/protocol.md, "Decode speed").
Each candidate refuses the same things the chosen schema refuses for this payload's fields (types,
ranges, required fields), so the comparison is of full validation, not of bare parsing.
"""

from __future__ import annotations

import math
import timeit
from collections.abc import Callable
from typing import Annotated, Any

import msgspec
import orjson

from broker._payloads import MAX_PAYLOAD_BYTES, Telemetry, decode_telemetry
from broker._topics import parse_device_topic

NOW_MS = 1_764_100_000_000
PAYLOAD = (
    b'{"ts":1764100000000,"seq":123456,"level":80,"power_w":36.4,"voltage_v":221.7,'
    b'"current_a":0.164,"temp_c":21.5,"lux":3.2,"faults":[]}'
)
_RANGES: dict[str, tuple[float, float]] = {
    "power_w": (0, 2000),
    "voltage_v": (0, 300),
    "current_a": (0, 50),
    "temp_c": (-50, 150),
    "lux": (0, 200_000),
}


def _orjson_manual(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ValueError("payload")
    doc = orjson.loads(payload)
    if not isinstance(doc, dict):
        raise ValueError("payload")
    ts, seq, level = doc["ts"], doc["seq"], doc["level"]
    if type(ts) is not int or not 1_577_836_800_000 <= ts <= NOW_MS + 300_000:
        raise ValueError("ts")
    if type(seq) is not int or seq < 0:
        raise ValueError("seq")
    if type(level) is not int or not 0 <= level <= 100:
        raise ValueError("level")
    for name, (lo, hi) in _RANGES.items():
        v = doc.get(name)
        if v is not None and (type(v) not in (int, float) or not math.isfinite(v) or not lo <= v <= hi):
            raise ValueError(name)
    faults = doc.get("faults", [])
    if not isinstance(faults, list) or not all(isinstance(f, str) for f in faults):
        raise ValueError("faults")
    return doc


def _candidates() -> dict[str, Callable[[], object]]:
    plain = msgspec.json.Decoder()
    typed = msgspec.json.Decoder(Telemetry)
    found: dict[str, Callable[[], object]] = {
        "msgspec typed Struct (broker.decode_telemetry, full validation)": lambda: decode_telemetry(
            PAYLOAD, NOW_MS
        ),
        "msgspec typed Decoder alone (no size/depth/UTF-8/future-ts checks)": lambda: typed.decode(PAYLOAD),
        "orjson.loads + manual checks": lambda: _orjson_manual(PAYLOAD),
        "baseline: orjson.loads only (no validation)": lambda: orjson.loads(PAYLOAD),
        "baseline: msgspec untyped decode (no validation)": lambda: plain.decode(PAYLOAD),
        "topic: broker.parse_device_topic": lambda: parse_device_topic("sl/v1/11230/L-11230-0042/telemetry"),
    }
    try:
        import pydantic
    except ImportError:  # pydantic is optional: measured when installed
        return found

    class Lamp(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(frozen=True, strict=True, allow_inf_nan=False)
        ts: Annotated[int, pydantic.Field(ge=1_577_836_800_000)]
        seq: Annotated[int, pydantic.Field(ge=0)]
        level: Annotated[int, pydantic.Field(ge=0, le=100)]
        power_w: Annotated[float, pydantic.Field(ge=0, le=2000)] | None = None
        voltage_v: Annotated[float, pydantic.Field(ge=0, le=300)] | None = None
        current_a: Annotated[float, pydantic.Field(ge=0, le=50)] | None = None
        temp_c: Annotated[float, pydantic.Field(ge=-50, le=150)] | None = None
        lux: Annotated[float, pydantic.Field(ge=0, le=200_000)] | None = None
        faults: tuple[str, ...] = ()

    found["pydantic v2 model_validate_json"] = lambda: Lamp.model_validate_json(PAYLOAD)
    return found


def main() -> None:
    """Print µs per message for each candidate (best of 5 runs of 100k decodes)."""
    n = 100_000
    for name, fn in _candidates().items():
        best = min(timeit.repeat(fn, number=n, repeat=5)) / n
        print(f"{best * 1e6:6.2f} µs/msg  {name}")  # noqa: T201


if __name__ == "__main__":
    main()
