"""The lamp register's pure parts: decoding, column matching by name, bad rows with line numbers,
derived ids; the simulator's export read back; places in words from the register's data."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import xmlschema

from alerts import (
    AlertKind,
    AreaNames,
    NearestLamp,
    Place,
    device_place_of,
    named_place,
    new_alert,
    render_cap,
)
from alerts import place_in_words as words
from broker.security import DeviceFileError, identity_problem, register_device_id
from geo import Gazetteer
from streetlight.cli import main as cli_main
from streetlight.lampregister import (
    COLUMNS,
    is_register,
    lamp_list_csv,
    load_register,
    parse_register,
)
from streetlight.standarddata import decode

DATA = Path(__file__).resolve().parents[1] / "data"
HEADER = ",".join(COLUMNS)


@pytest.fixture(scope="module")
def gazetteer() -> Gazetteer:
    return Gazetteer.load()


def test_both_published_encodings_are_read(gazetteer: Gazetteer) -> None:
    utf8 = load_register(DATA / "register" / "junggu_utf8.csv", gazetteer)
    cp949 = load_register(DATA / "register" / "mapo_cp949.csv", gazetteer)
    assert (utf8.encoding, cp949.encoding) == ("utf-8", "cp949")
    assert [lamp.lamp_number for lamp in cp949.lamps] == [
        "연남동 239-5 앞",
        "연남동 227-11 앞",
        "성산동 200-3 옆",
    ]
    assert [str(b) for b in cp949.bad] == [
        "line 5: 성산동 201-1 옆: no coordinates (위도 '0', 경도 '0')",
        "line 6: 연남동 239-5 앞: duplicate of line 2 (same 관리번호 MP-2019-0101)",
    ]
    # A BOM and CRLF line ends (as spreadsheets save) change nothing.
    text = (DATA / "register" / "junggu_utf8.csv").read_text(encoding="utf-8")
    bom = decode(("\ufeff" + text.replace("\n", "\r\n")).encode("utf-8"))
    assert parse_register(bom[0], gazetteer).lamps == utf8.lamps


def test_columns_are_matched_by_name_in_any_order(gazetteer: Gazetteer) -> None:
    text = (
        "경도,위도,관리기관명,보안등위치명,소재지지번주소\n"
        "126.9948,37.5609,서울특별시 중구청,중구-1,서울특별시 중구 을지로4가 261\n"
    )
    got = parse_register(text, gazetteer)
    assert is_register(text) and got.bad == ()
    (lamp,) = got.lamps
    assert (lamp.lamp_number, lamp.lat, lamp.lon) == ("중구-1", 37.5609, 126.9948)
    assert (lamp.address, lamp.lamp_count, lamp.dong_code) == (
        "서울특별시 중구 을지로4가 261",
        None,
        "1102060",
    )


def test_a_file_without_the_registers_columns_is_refused(gazetteer: Gazetteer) -> None:
    with pytest.raises(DeviceFileError, match="no column 위도"):
        parse_register("보안등위치명,경도\n중구-1,126.99\n", gazetteer)
    assert not is_register("id,kind,district_code,lat,lon\n")


def test_a_multi_line_quoted_address_keeps_the_line_numbers_right(gazetteer: Gazetteer) -> None:
    text = f'{HEADER}\n중구-1,1,"서울특별시 중구\n을지로 170",,37.5609,126.9948,,,,,\n중구-2,1,,,,,,,,,\n'
    got = parse_register(text, gazetteer)
    assert [str(b) for b in got.bad] == ["line 4: 중구-2: no coordinates (위도 '', 경도 '')"]


def test_derived_ids_are_protocol_valid_and_stable() -> None:
    a = register_device_id("11020", "name:중구-을지-0001")
    assert a == register_device_id("11020", "name:중구-을지-0001")
    assert a != register_device_id("11140", "name:중구-을지-0001")
    assert identity_problem(a) is None and a.isascii() and a.startswith("lamp-11020-")


def test_the_lamp_list_names_each_device_with_its_lamp_number(gazetteer: Gazetteer) -> None:
    got = load_register(DATA / "register" / "junggu_utf8.csv", gazetteer)
    lines = lamp_list_csv(got.lamps).splitlines()
    assert lines[0] == "device_id,lamp_number,address,district_code,dong_code,lat,lon"
    assert lines[1].startswith(f"{got.lamps[0].id},중구-을지-0001,서울특별시 중구 을지로 170,11020,1102060,")


def test_the_simulators_placement_exports_as_a_register_that_imports_whole(
    tmp_path: Path, gazetteer: Gazetteer
) -> None:
    out = tmp_path / "register.csv"
    assert cli_main(["sim", "--export-register", str(out), "--lamps", "60", "--zones", "연남동"]) == 0
    got = load_register(out, gazetteer)
    assert len(got.lamps) == 60 and got.bad == ()
    assert all(lamp.dong_code == "1114071" and lamp.address for lamp in got.lamps)
    assert len({lamp.id for lamp in got.lamps}) == 60
    assert load_register(out, gazetteer).lamps == got.lamps  # the same file: the same ids


NAMES = AreaNames("11020", "중구", "Jung-gu", "1102060", "을지로동", "Euljirodong")


def test_a_device_alerts_place_names_the_pole_its_address_and_the_area() -> None:
    place = device_place_of(
        Place(lat=37.5609, lon=126.9948, district_code="11020", dong_code="1102060"),
        "lamp-11020-96d18d57c67e",
        "중구-을지-0001",
        "서울특별시 중구 을지로 170",
        lambda lat, lon, d, dong: NAMES,
    )
    assert words(place, "ko") == "중구 을지로동, 서울특별시 중구 을지로 170 부근, 보안등 중구-을지-0001"
    assert (
        words(place, "en")
        == "Jung-gu, Euljirodong, near 서울특별시 중구 을지로 170, security light 중구-을지-0001"
    )
    # Without a register entry, nothing is invented.
    bare = device_place_of(Place(lat=37.5609, lon=126.9948), "x-1", None, None, None)
    assert bare.nearest_lamps == () and bare.address == ""


def test_an_sos_place_takes_the_nearest_lamps_address_and_cap_carries_the_codes() -> None:
    place = named_place(
        Place(
            lat=37.561,
            lon=126.9947,
            nearest_lamps=(
                NearestLamp("lamp-b", "중구-을지-0002", 40.0, "서울특별시 중구 을지로 184"),
                NearestLamp("lamp-a", "중구-을지-0001", 14.2, "서울특별시 중구 을지로 170"),
            ),
        ),
        lambda lat, lon, d, dong: NAMES,
    )
    assert (place.district_code, place.dong_code, place.address) == (
        "11020",
        "1102060",
        "서울특별시 중구 을지로 170",
    )
    assert words(place, "ko") == (
        "중구 을지로동, 서울특별시 중구 을지로 170 부근, 보안등 중구-을지-0001 (14 m), 중구-을지-0002 (40 m)"
    )
    alert = new_alert(alert_id="sos-1", kind=AlertKind.SOS, place=place, source_id="r", now=datetime.now(UTC))
    xml = render_cap(alert).xml
    xmlschema.XMLSchema(str(DATA / "cap" / "CAP-v1.2.xsd")).validate(xml)
    assert "<valueName>KOSTAT-ADM-DONG</valueName><value>1102060</value>" in xml
    assert "<valueName>KOSTAT-SIGUNGU</valueName><value>11020</value>" in xml
    assert "lamp-a" not in xml.split("<area>")[1]


def test_a_place_standing_for_several_neighbourhoods_names_the_district_and_no_neighbourhood() -> None:
    outage = named_place(
        Place(lat=37.5609, lon=126.9948), lambda lat, lon, d, dong: NAMES, whole_district=True
    )
    assert (outage.district_code, outage.dong_code, outage.dong_name) == ("11020", "", "")
    assert words(outage, "ko").startswith("중구") and "을지로동" not in words(outage, "ko")
    assert "Euljirodong" not in words(outage, "en")
