"""The district's lamp register against the real services: ``streetlight provision --devices`` reads
the national standard CSV (UTF-8 and CP949) into the devices table, the lamps show in
``GET /v1/lamps`` before their controllers connect and keep their number and address after a
birth; an SOS and a maintenance alert near them name the place in words (API and CAP)."""

from __future__ import annotations

import csv
import functools
import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import psycopg
import pytest
import xmlschema
from paho.mqtt.enums import CallbackAPIVersion

from broker import parse_mqtt_url
from devkit.apiclient import fast_config, login, resident, seed, serve
from devkit.localservices import MqttService
from ingest import IngestWorker, WorkerConfig, raise_fault_alerts
from streetlight import bootstrap
from tests.helpers import count, provision, running, wait_for

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[1] / "data"
JUNG_UTF8 = DATA / "register" / "junggu_utf8.csv"
MAPO_CP949 = DATA / "register" / "mapo_cp949.csv"
CAP_SCHEMA = DATA / "cap" / "CAP-v1.2.xsd"
CAP = {"cap": "urn:oasis:names:tc:emergency:cap:1.2"}


def register_rows(db_url: str) -> dict[str, dict[str, object]]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT device_id, lamp_number, address, lamp_count, district_code, dong_code, provisioned "
            "FROM devices ORDER BY device_id"
        ).fetchall()
    keys = ("lamp_number", "address", "lamp_count", "district_code", "dong_code", "provisioned")
    return {str(r[0]): dict(zip(keys, r[1:], strict=True)) for r in rows}


def test_the_register_is_provisioned_from_utf8_and_cp949_files_with_bad_rows_reported(
    tmp_path: Path, db_url: str
) -> None:
    out = provision(tmp_path, db_url, JUNG_UTF8, MAPO_CP949)
    # Bad rows: reported with their line numbers, skipped.
    assert f"register   {JUNG_UTF8} (utf-8): 5 lamps, 3 rows skipped" in out
    assert f"register   {MAPO_CP949} (cp949): 3 lamps, 2 rows skipped" in out
    assert "line 6: 중구-필동-0002: no coordinates" in out
    assert "line 7: 중구-을지-0001: duplicate of line 2" in out
    assert "line 9: 중구-외부-0001: outside the service area" in out
    assert "line 5: 성산동 201-1 옆: no coordinates" in out
    assert "line 6: 연남동 239-5 앞: duplicate of line 2 (same 관리번호 MP-2019-0101)" in out

    rows = register_rows(db_url)
    assert len(rows) == 8 and all(re.fullmatch(r"lamp-1[0-9]{4}-[0-9a-f]{12}", d) for d in rows)
    by_number = {r["lamp_number"]: r for r in rows.values()}
    assert by_number["중구-을지-0002"] == {
        "lamp_number": "중구-을지-0002",
        "address": "서울특별시 중구 을지로 184",
        "lamp_count": 2,
        "district_code": "11020",
        "dong_code": "1102060",
        "provisioned": True,
    }
    # No road address: the lot address.
    assert by_number["중구-을지-0003"]["address"] == "서울특별시 중구 을지로6가 18-40"
    assert by_number["연남동 227-11 앞"]["district_code"] == "11140"
    assert by_number["성산동 200-3 옆"]["dong_code"] == "1114072"
    assert "중구-필동-0002" not in by_number and "중구-외부-0001" not in by_number

    # The list for the people who flash the controllers: device id next to the lamp number.
    with (tmp_path / "state" / "lamp-list.csv").open(encoding="utf-8") as fh:
        listed = {r["device_id"]: r["lamp_number"] for r in csv.DictReader(fh)}
    assert listed == {d: r["lamp_number"] for d, r in rows.items()}

    # The same files again: the same ids, nothing new.
    again = provision(tmp_path, db_url, JUNG_UTF8, MAPO_CP949)
    assert "(0 new, 0 updated, 0 revoked)" in again
    assert register_rows(db_url).keys() == rows.keys()


def test_a_file_of_only_bad_rows_imports_nothing(tmp_path: Path, db_url: str) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "보안등위치명,설치개수,소재지도로명주소,소재지지번주소,위도,경도,설치연도,설치형태,관리기관전화번호,관리기관명,데이터기준일자\n"
        "부산-0001,1,부산광역시 중구 중앙대로 1,,35.1796,129.0756,2020,한전주,,"
        "부산광역시 중구청,2024-01-01\n",
        encoding="cp949",
    )
    out = provision(tmp_path, db_url, bad)
    assert "0 lamps, 1 rows skipped" in out and "line 2: 부산-0001: outside the service area" in out
    assert count(db_url, "SELECT count(*) FROM devices") == 0


def _publish(svc: MqttService, messages: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{time.monotonic_ns()}")
    client.connect(svc.host, svc.port)
    client.loop_start()
    try:
        for topic, payload in messages:
            client.publish(topic, payload, qos=1).wait_for_publish(5)
    finally:
        client.loop_stop()
        client.disconnect()


def _cap_area(xml: str) -> tuple[list[str], dict[str, str]]:
    root = ET.fromstring(xml)
    descs = [e.text or "" for e in root.findall("cap:info/cap:area/cap:areaDesc", CAP)]
    geocodes = {
        g.findtext("cap:valueName", "", CAP): g.findtext("cap:value", "", CAP)
        for g in root.findall("cap:info[1]/cap:area/cap:geocode", CAP)
    }
    return descs, geocodes


def test_register_lamps_are_listed_before_connecting_and_alerts_name_their_place(
    tmp_path: Path, db_url: str, mqtt_service: MqttService
) -> None:
    seed(db_url)
    provision(tmp_path, db_url, JUNG_UTF8)
    schema = xmlschema.XMLSchema(str(CAP_SCHEMA))
    ids = {r["lamp_number"]: d for d, r in register_rows(db_url).items()}
    lamp = ids["중구-을지-0001"]  # 37.5609, 126.9948: 서울특별시 중구 을지로 170

    with serve(fast_config(db_url)) as base, httpx.Client(base_url=base, timeout=10.0) as c:
        ops = login(c, "op-jung")
        # Before any controller connected: listed, offline, with its number, address and dong.
        features = {f["id"]: f for f in c.get("/v1/lamps", headers=ops).json()["features"]}
        assert set(features) == set(ids.values())
        props = features[lamp]["properties"]
        assert props["online"] is False and props["state"] == "offline"
        assert props["lamp_number"] == "중구-을지-0001"
        assert props["address"] == "서울특별시 중구 을지로 170"
        assert (props["dong"], props["dong_code"], props["dong_en"]) == ("을지로동", "1102060", "Euljirodong")
        assert props["lamp_count"] == 1
        assert features[lamp]["geometry"]["coordinates"] == [126.9948, 37.5609]

        # The controller connects (a birth): the register's number and address stay.
        config = WorkerConfig(
            mqtt=parse_mqtt_url(mqtt_service.url),
            database_url=db_url,
            spool_path=tmp_path / "ingest.spool",
            client_id=f"ingest-{time.monotonic_ns()}",
            shared=False,
            max_delay_s=0.05,
        )
        gazetteer = bootstrap.load_gazetteer()
        worker = IngestWorker(
            config,
            on_faults=functools.partial(raise_fault_alerts, namer=bootstrap.gazetteer_namer(gazetteer)),
            locate=bootstrap.gazetteer_locator(gazetteer),
        )
        base_topic = f"sl/v1/11020/{lamp}"
        now_ms = int(time.time() * 1000)
        with running(worker):
            _publish(
                mqtt_service,
                [
                    (
                        f"{base_topic}/birth",
                        b'{"kind":"lamp","firmware":"2.0","model":"SL-40","lat":37.5609,"lon":126.9948,"bdseq":1}',
                    ),
                    (f"{base_topic}/state", b'{"state":"online","bdseq":1}'),
                    (f"{base_topic}/event", b'{"ts":%d,"seq":1,"type":"tamper"}' % now_ms),
                    # A device nobody provisioned: its registration gets the dong of its position.
                    (
                        "sl/v1/11020/unregistered-1/birth",
                        b'{"kind":"lamp","firmware":"2.0","model":"SL-40","lat":37.5660,"lon":126.9784,"bdseq":1}',
                    ),
                ],
            )
            wait_for(lambda: count(db_url, "SELECT count(*) FROM alerts WHERE kind = 'tamper'") == 1)
            wait_for(
                lambda: count(db_url, "SELECT count(*) FROM devices WHERE device_id = 'unregistered-1'") == 1
            )
        assert count(db_url, "SELECT count(*) FROM devices WHERE dong_code = '1102055'") == 2  # 명동
        props = {f["id"]: f for f in c.get("/v1/lamps", headers=ops).json()["features"]}[lamp]["properties"]
        assert props["online"] is True
        assert (props["lamp_number"], props["address"]) == ("중구-을지-0001", "서울특별시 중구 을지로 170")
        assert (
            count(db_url, "SELECT count(*) FROM devices WHERE device_id = %s AND firmware = '2.0'", lamp) == 1
        )

        # A maintenance alert names the place: district, dong, address and the lamp number.
        alerts = c.get("/v1/alerts", headers=login(c, "op-city")).json()
        items = alerts["alerts"] if isinstance(alerts, dict) else alerts
        tamper = next(a for a in items if a["kind"] == "tamper")
        assert (
            tamper["place_text_ko"] == "중구 을지로동, 서울특별시 중구 을지로 170 부근, 보안등 중구-을지-0001"
        )
        assert tamper["place_text_en"] == (
            "Jung-gu, Euljirodong, near 서울특별시 중구 을지로 170, security light 중구-을지-0001"
        )
        r = c.get(f"/v1/alerts/{tamper['id']}/cap", headers=login(c, "op-city"))
        assert r.status_code == 200
        schema.validate(r.text)
        descs, geocodes = _cap_area(r.text)
        assert descs == [tamper["place_text_ko"], tamper["place_text_en"]]
        assert geocodes == {"KOSTAT-SIGUNGU": "11020", "KOSTAT-ADM-DONG": "1102060"}

        # An SOS 15 m from the pole: the nearest lamps by their numbers, never their device ids.
        r = c.post("/v1/sos", json={"lat": 37.5610, "lon": 126.9947, "accuracy_m": 8.0}, headers=resident(c))
        assert r.status_code == 202, r.text
        sos = c.get(f"/v1/alerts/{r.json()['alert_id']}", headers=ops).json()
        sos = sos.get("alert", sos)
        assert sos["place_text_ko"].startswith(
            "중구 을지로동, 서울특별시 중구 을지로 170 부근, 보안등 중구-을지-0001 ("
        )
        assert sos["place_text_en"].startswith(
            "Jung-gu, Euljirodong, near 서울특별시 중구 을지로 170, security light 중구-을지-0001 ("
        )
        assert lamp not in sos["place_text_ko"] and "lamp-" not in sos["place_text_en"]
        nearest = sos["place"]["nearest_lamps"][0]
        assert (nearest["lamp_number"], nearest["address"]) == (
            "중구-을지-0001",
            "서울특별시 중구 을지로 170",
        )
        r = c.get(f"/v1/alerts/{sos['id']}/cap", headers=ops)
        schema.validate(r.text)
        descs, geocodes = _cap_area(r.text)
        assert descs == [sos["place_text_ko"], sos["place_text_en"]]
        assert geocodes == {"KOSTAT-SIGUNGU": "11020", "KOSTAT-ADM-DONG": "1102060"}
