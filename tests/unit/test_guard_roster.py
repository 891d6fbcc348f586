"""The guards' roster file (`streetlight provision --guards`): columns, defaults, refusals."""

from __future__ import annotations

import datetime as dt

import pytest

from broker.security import ProvisioningError
from geo import load_safety_zones
from streetlight.guardroster import parse_roster

ZONES = load_safety_zones()
ZONE = ZONES.guard_zones[0]


def test_rows_get_the_zone_the_defaults_and_an_e164_phone() -> None:
    text = (
        "\ufeffZone,Username,Name,Phone,Weekdays,Starts,Ends,Password\n"
        f"{ZONE.dong_code},g-kim,김,010-2345-6789,,,,\n"
        f"{ZONE.dong_code},g-lee,이,,sun-thu,22:00,03:00,pw-lee-123\n"
        "\n"
    )
    kim, lee = parse_roster(text, ZONES)
    assert kim.zone == ZONE and kim.guard.zone_code == ZONE.dong_code and kim.phone == "+821023456789"
    assert kim.guard.shift.starts == dt.time(21) and kim.guard.shift.ends == dt.time(2, 30)
    assert kim.guard.shift.weekdays == frozenset(range(5)) and kim.password is None
    assert lee.guard.shift.weekdays == frozenset({6, 0, 1, 2, 3}) and lee.password == "pw-lee-123"
    assert lee.phone is None and lee.line == 3


def test_a_file_with_a_bad_row_is_refused_whole_naming_every_line() -> None:
    text = (
        "zone,username,phone,weekdays,starts\n"
        f"{ZONE.dong_code},ok-guard,,,\n"
        "1111111,g-x,,,\n"
        f"{ZONE.dong_code},Bad Name,,,\n"
        f"{ZONE.dong_code},g-y,1588-1234,,\n"
        f"{ZONE.dong_code},g-z,,someday,\n"
        f"{ZONE.dong_code},g-w,,,25:00\n"
        f"{ZONE.dong_code},ok-guard,,,\n"
    )
    with pytest.raises(ProvisioningError) as err:
        parse_roster(text, ZONES)
    message = str(err.value)
    for line in range(3, 9):
        assert f"line {line}:" in message
    assert "line 2:" not in message and "not one of the 15 guard zones" in message
    with pytest.raises(ProvisioningError, match="missing column"):
        parse_roster("name,phone\nx,y\n", ZONES)
