"""``streetlight locate``: one JSON object on stdout, exit 0 inside or outside, 2 if invalid."""

from __future__ import annotations

import json

import pytest

from streetlight.cli import main


def _locate(capsys: pytest.CaptureFixture[str], lat: str, lon: str) -> tuple[int, dict[str, object], str]:
    rc = main(["locate", "--lat", lat, "--lon", lon])
    out, err = capsys.readouterr()
    return rc, (json.loads(out) if out.strip() else {}), err


def test_city_hall_is_in_jung_gu(capsys: pytest.CaptureFixture[str]) -> None:
    rc, got, err = _locate(capsys, "37.5663", "126.9779")
    assert rc == 0 and err == ""
    assert got["district_code"] == "11020"
    assert got["district"] == "중구"
    assert got["district_eng"] == "Jung-gu"
    assert got["dong_code"] == "1102055"
    assert got["dong"] == "명동"
    assert got["inside"] is True
    assert got["snapped"] is False
    assert got["neighbours"] == ["11010"]


def test_the_output_is_one_json_object_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["locate", "--lat", "37.4979", "--lon", "127.0276"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert json.loads(out)["district_code"] == "11220"


def test_a_point_outside_seoul_exits_0_with_inside_false(capsys: pytest.CaptureFixture[str]) -> None:
    rc, got, _ = _locate(capsys, "37.46", "126.44")  # Incheon airport
    assert rc == 0
    assert got["inside"] is False
    for field in ("district_code", "district", "dong_code", "dong"):
        assert got[field] is None
    assert got["neighbours"] == []


@pytest.mark.parametrize(
    ("lat", "lon", "message"),
    [
        ("nan", "126.97", "latitude must be finite"),
        ("37.5", "NaN", "longitude must be finite"),
        ("inf", "126.97", "latitude must be finite"),
        ("-inf", "126.97", "latitude must be finite"),
        ("90.5", "126.97", "latitude 90.5 is outside [-90, 90]"),
        ("-90.5", "126.97", "latitude -90.5 is outside [-90, 90]"),
        ("37.5", "180.1", "longitude 180.1 is outside [-180, 180]"),
        ("north", "126.97", "latitude must be a number, got 'north'"),
        ("37.5", "", "longitude must be a number"),
        ("37,5", "126.97", "latitude must be a number"),
    ],
)
def test_invalid_input_exits_2_with_a_message_on_stderr(
    capsys: pytest.CaptureFixture[str], lat: str, lon: str, message: str
) -> None:
    rc = main(["locate", f"--lat={lat}", f"--lon={lon}"])
    out, err = capsys.readouterr()
    assert rc == 2
    assert out == ""
    assert message in err
    assert err.startswith("streetlight locate: ")
