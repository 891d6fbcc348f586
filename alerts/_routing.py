"""Routing: which control centre(s) hear about an alert.

A control centre is named by a 5-digit code so that every centre, including the city-level
one, maps onto the contract topic `cc/v1/{d}/alerts` (DESIGN.md section 3). The city-level
centre uses "11000", the administrative code of Seoul itself (the 25 districts are
11110-11740 in the same scheme), so it never collides with a district.

Of an alert's centres one district controller acts on it (`responsible_centre`): the alert's own
district, or the city-level centre's controller for an alert outside every district.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from alerts._errors import InvalidAlertData
from alerts._model import Place

# Seoul Metropolitan Government's own code in the Korean administrative-code scheme.
CITY_CENTRE = "11000"

_CENTRE_RE = re.compile(r"[0-9]{5}")


def is_centre_code(code: str) -> bool:
    """True if `code` is a 5-digit centre code (a district's or the city's)."""
    return _CENTRE_RE.fullmatch(code) is not None


def _is_district(code: str) -> bool:
    return is_centre_code(code) and code != CITY_CENTRE


def route(place: Place) -> tuple[str, ...]:
    """The control centres for an alert at `place`: never empty, own district first.

    Inside Seoul: the point's district, then each neighbouring district near a border.
    Outside the service area, or with no usable district: the city-level centre, followed by
    the district `geo` snapped the point to, if any, so that district hears about it too.
    """
    centres: list[str] = []
    if place.inside and _is_district(place.district_code):
        centres.append(place.district_code)
        for code in sorted(set(place.neighbours)):
            if _is_district(code) and code not in centres:
                centres.append(code)
        return tuple(centres)
    centres.append(CITY_CENTRE)
    if _is_district(place.district_code):
        centres.append(place.district_code)
    return tuple(centres)


def responsible_centre(centres: Sequence[str]) -> str:
    """The centre whose district controller acts on an alert routed to `centres` (blinks, escalates,
    publishes): the first district among them, else the city-level centre."""
    for code in centres:
        if code != CITY_CENTRE:
            return code
    return CITY_CENTRE


def alerts_topic(centre: str) -> str:
    """The MQTT topic of a control centre, `cc/v1/{d}/alerts` (DESIGN.md section 3)."""
    if not is_centre_code(centre):
        raise InvalidAlertData(f"control centre code must be 5 digits, got {centre!r}")
    return f"cc/v1/{centre}/alerts"
