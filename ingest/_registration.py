"""What a birth may change in a device's registration, and what it may only claim (pure).

A device's ``devices`` row, written by provisioning or else by the device's first birth, is the
truth about *what* and *where* it is: kind, district, position, pairing. The controller blinks
and brightens lamps by that position and a beacon blinker brightens its paired lamp, so a stolen
controller that could re-kind, move or re-pair itself by its birth could darken or light streets
elsewhere. A later birth therefore updates only what a device legitimately changes on its own
(firmware and model, after an upgrade or a repair), fills in a position nobody registered, and
pairs an unpaired device with a registered device nearby; anything else it contradicts is
refused, named in a ``registration_mismatch`` tamper alert and a flag, and never applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from broker import Birth
from geo import distance_m

# A birth's position is a GPS fix or a configured value; a lamp does not move. 50 m is above
# a street-level GPS error (5-20 m) and below the spacing at which lamps would swap places
# in the lamp index (Seoul's alley lamps stand 20-40 m apart).
POSITION_TOLERANCE_M: Final = 50.0
# A blinker is mounted on its lamp's pole: a pairing farther apart than this is no pairing.
PAIR_MAX_DISTANCE_M: Final = 100.0


@dataclass(frozen=True, slots=True)
class BirthVerdict:
    """What to write for a birth of a registered device, and what it contradicted."""

    firmware: str
    model: str
    lat: float | None  # to fill in (the row had none), else None: leave as registered
    lon: float | None
    paired: str | None  # to fill in (the row had none and the claim holds), else None
    conflicts: tuple[str, ...] = ()  # "kind: lamp registered, blinker claimed", ...

    @property
    def detail(self) -> str:
        """The conflicts in one line, for the alert note and the log."""
        return "; ".join(self.conflicts)


def judge_birth(
    registered: dict[str, Any],
    district: str,
    birth: Birth,
    paired_row: dict[str, Any] | None,
) -> BirthVerdict:
    """Compare a birth (and the district of its topic) with the device's registered row.

    ``registered`` has ``kind``, ``district_code``, ``lat``, ``lon``, ``paired_device_id``;
    ``paired_row`` is the registered row of the device the birth names in ``paired`` (None when
    it names none, or one that is not registered)."""
    conflicts: list[str] = []
    if birth.kind != registered["kind"]:
        conflicts.append(f"kind: {registered['kind']} registered, {birth.kind} claimed")
    if district != registered["district_code"]:
        conflicts.append(f"district: {registered['district_code']} registered, {district} claimed")
    lat: float | None = None
    lon: float | None = None
    if registered["lat"] is None or registered["lon"] is None:
        lat, lon = birth.lat, birth.lon
    else:
        moved_m = float(distance_m(registered["lat"], registered["lon"], birth.lat, birth.lon))
        if moved_m > POSITION_TOLERANCE_M:
            conflicts.append(f"position: {moved_m:.0f} m from the registered one")
    paired: str | None = None
    claimed = birth.paired
    if claimed is not None and claimed != registered["paired_device_id"]:
        if registered["paired_device_id"] is not None:
            conflicts.append(f"paired: {registered['paired_device_id']} registered, {claimed} claimed")
        elif _near(
            paired_row, registered["lat"] if lat is None else lat, registered["lon"] if lon is None else lon
        ):
            paired = claimed
        else:
            conflicts.append(
                f"paired: {claimed} is not a registered device within {PAIR_MAX_DISTANCE_M:.0f} m"
            )
    return BirthVerdict(birth.firmware, birth.model, lat, lon, paired, tuple(conflicts))


def _near(row: dict[str, Any] | None, lat: float | None, lon: float | None) -> bool:
    if row is None or lat is None or lon is None or row.get("lat") is None or row.get("lon") is None:
        return False
    return bool(float(distance_m(lat, lon, row["lat"], row["lon"])) <= PAIR_MAX_DISTANCE_M)
