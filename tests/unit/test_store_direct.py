"""The direct telemetry COPY may only carry values its binary column types hold exactly."""

from __future__ import annotations

import msgspec

from broker._payloads import Telemetry
from store.writer import DIRECT_TELEMETRY_TYPES, TELEMETRY_FIELDS

# What a binary dumper of each type carries without wrapping or overflowing.
_RANGE = {
    "int2": (-(2**15), 2**15 - 1),
    "int4": (-(2**31), 2**31 - 1),
    "int8": (-(2**63), 2**63 - 1),
    "float4": (-3.4e38, 3.4e38),
}


def _bounds(t: msgspec.inspect.Type) -> tuple[int | float, int | float] | None:
    if isinstance(t, msgspec.inspect.UnionType):
        inner = [x for x in t.types if not isinstance(x, msgspec.inspect.NoneType)]
        assert len(inner) == 1
        t = inner[0]
    if isinstance(t, (msgspec.inspect.IntType, msgspec.inspect.FloatType)):
        assert t.ge is not None and t.le is not None, "an unbounded number cannot go the direct way"
        return t.ge, t.le
    return None


def test_every_protocol_bound_of_telemetry_fits_its_direct_column_type() -> None:
    info = msgspec.inspect.type_info(Telemetry)
    assert isinstance(info, msgspec.inspect.StructType)
    fields = {f.name: f.type for f in info.fields}
    direct = dict(zip(TELEMETRY_FIELDS, DIRECT_TELEMETRY_TYPES, strict=True))
    checked = 0
    for name, column_type in direct.items():
        if name in ("device_id", "bdseq"):
            continue  # from the topic and the ingest's own constant
        schema = fields["ts" if name == "ts_ms" else name]
        bounds = _bounds(schema)
        if column_type in _RANGE:
            assert bounds is not None, name
            lo, hi = _RANGE[column_type]
            assert lo <= bounds[0] and bounds[1] <= hi, f"{name}: {bounds} does not fit {column_type}"
            checked += 1
        elif column_type == "timestamptz":
            assert bounds is not None and bounds[1] < 2**63 // 1000, name
    assert checked == 10  # seq, level, 5 lamp readings, rssi, battery, sightings
