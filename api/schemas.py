"""Request bodies, validated once at the boundary (STYLE.md 4): NaN, infinities and out-of-range
values are refused with a message naming the field."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

Lat = Annotated[float, Field(ge=-90.0, le=90.0, allow_inf_nan=False, description="WGS 84 latitude, degrees")]
Lon = Annotated[
    float, Field(ge=-180.0, le=180.0, allow_inf_nan=False, description="WGS 84 longitude, degrees")
]
# A phone's GPS reports accuracy in metres; 100 km is no position at all.
Accuracy = Annotated[
    float, Field(ge=0.0, le=100_000.0, allow_inf_nan=False, description="horizontal accuracy, metres")
]
Heading = Annotated[
    float, Field(ge=0.0, le=360.0, allow_inf_nan=False, description="direction of travel, degrees from north")
]
# 100 m/s is far beyond anyone on foot or a bicycle; the controller judges plausibility further.
Speed = Annotated[float, Field(ge=0.0, le=100.0, allow_inf_nan=False, description="speed, metres per second")]
Text = Annotated[str, Field(max_length=1000)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class WalkPositionIn(_Body):
    """A resident's position during a safe walk."""

    lat: Lat
    lon: Lon
    accuracy_m: Accuracy
    heading_deg: Heading | None = None
    speed_mps: Speed | None = None


class SosIn(_Body):
    """An SOS from the Safety app (button or shake)."""

    lat: Lat
    lon: Lon
    accuracy_m: Accuracy | None = None
    walk_id: Annotated[str, Field(min_length=1, max_length=64)] | None = None


class LoginIn(_Body):
    """An operator's credentials."""

    # PostgreSQL text cannot hold NUL: refuse it here (422) rather than fail the lookup (500).
    username: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\x00]+$")]
    password: Annotated[str, Field(min_length=1, max_length=256)]


class NoteIn(_Body):
    """An optional note for an alert action."""

    note: Text = ""


class DispatchIn(_Body):
    """Who was sent (e.g. a police unit) and a note."""

    unit: Annotated[str, Field(max_length=100)] = ""
    note: Text = ""


class ResolveIn(_Body):
    """How the incident ended, in words."""

    outcome: Annotated[str, Field(max_length=200)] = ""
    note: Text = ""


class OverrideIn(_Body):
    """A maintenance override of one lamp's level for a while."""

    level: Annotated[int, Field(ge=0, le=100, description="lamp output, percent")]
    duration_s: Annotated[
        int, Field(ge=1, le=86_400, description="how long before the lamp's schedule resumes")
    ]


class OperatorIn(_Body):
    """An operator account (admin only)."""

    username: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
    password: Annotated[str, Field(min_length=8, max_length=256)]
    role: Annotated[str, Field(pattern=r"^(district|city|maintenance|admin)$")]
    district: Annotated[str, Field(pattern=r"^[0-9]{5}$")] | None = None
    display_name: Annotated[str, Field(max_length=100)] | None = None


def describe_errors(errors: Sequence[Mapping[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """A validation failure in words (``"lat: Input should be less than or equal to 90"``, one per
    field, ``; ``-joined) and as a list; the answer of the HTTP endpoints (422) and the walkers'
    socket alike. Never the offending input itself: a NaN would make the answer invalid JSON."""
    problems = []
    for err in errors:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        problems.append(f"{where}: {err.get('msg', 'invalid')}")
    listed = [
        {"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg")), "type": str(e.get("type"))}
        for e in errors
    ]
    return "; ".join(problems), listed
