"""The camera register against the real services: ``streetlight provision --cameras`` reads the
national standard CCTV file (UTF-8 and CP949) into the cameras table with bad rows reported and the
same ids on a second import; an SOS near cameras lists them nearest first with their facing and a
stream link (``GET /v1/alerts/{id}/cameras``), only for the alert's centre, audited; a new track
position lists the cameras there."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import httpx
import psycopg
import pytest

from api.config import CameraStreams
from devkit.apiclient import fast_config, login, resident, seed, serve
from streetlight.cli import main as cli_main
from tests.helpers import cli_output, count

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[1] / "data" / "cctv"
JUNG_UTF8 = DATA / "junggu_utf8.csv"
MAPO_CP949 = DATA / "mapo_cp949.csv"
SOS = (37.5636, 126.9976)  # 을지로6가: four cameras of the 중구 file within 100 m
TEMPLATE = "https://vms.example/live/{management_no}?cam={camera_id}"


def import_cameras(db_url: str, *files: Path) -> str:
    args = ["provision", "--database-url", db_url]
    for f in files:
        args += ["--cameras", str(f)]
    return cli_output(args)


def camera_rows(db_url: str) -> dict[str, dict[str, object]]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT camera_id, management_no, district_code, facing, camera_count, road_address, lot_address "
            "FROM cameras ORDER BY camera_id"
        ).fetchall()
    keys = ("management_no", "district_code", "facing", "camera_count", "road_address", "lot_address")
    return {str(r[0]): dict(zip(keys, r[1:], strict=True)) for r in rows}


def test_cameras_are_provisioned_from_utf8_and_cp949_with_bad_rows_and_stable_ids(db_url: str) -> None:
    out = import_cameras(db_url, JUNG_UTF8, MAPO_CP949)
    assert "cameras: 8 cameras (8 new, 0 updated) into the cameras table" in out
    assert f"cameras    {JUNG_UTF8} (utf-8): 5 cameras, 3 rows skipped" in out
    assert f"cameras    {MAPO_CP949} (cp949): 3 cameras, 2 rows skipped" in out
    assert "line 6: JG-CCTV-0105: no coordinates (WGS84위도 '', WGS84경도 '')" in out
    assert "line 7: JG-CCTV-0101: duplicate of line 2 (same 관리번호 JG-CCTV-0101)" in out
    assert "line 9: JG-CCTV-0107: outside the service area" in out
    assert "line 5: 서울특별시 마포구 월드컵북로 100: no coordinates (위도 '0', 경도 '0')" in out
    assert "line 6: 서울특별시 마포구 동교로 240: duplicate of line 2" in out

    rows = camera_rows(db_url)
    assert len(rows) == 8 and all(re.fullmatch(r"cam-1[0-9]{4}-[0-9a-f]{12}", c) for c in rows)
    by_no = {r["management_no"]: r for r in rows.values() if r["management_no"]}
    assert by_no["JG-CCTV-0101"] == {
        "management_no": "JG-CCTV-0101",
        "district_code": "11020",
        "facing": "동",
        "camera_count": 2,
        "road_address": "서울특별시 중구 을지로 196",
        "lot_address": "서울특별시 중구 을지로6가 17-2",
    }
    mapo = [r for r in rows.values() if r["management_no"] is None]
    assert sorted(str(r["facing"]) for r in mapo) == ["골목 안쪽", "동서", "전방향"]
    assert {r["district_code"] for r in mapo} == {"11140"}

    # The same files again: the same ids, nothing new, nothing changed.
    again = import_cameras(db_url, JUNG_UTF8, MAPO_CP949)
    assert "cameras: 8 cameras (0 new, 0 updated)" in again
    assert camera_rows(db_url).keys() == rows.keys()


def test_a_file_that_is_not_a_camera_register_is_refused(tmp_path: Path, db_url: str) -> None:
    bad = tmp_path / "lamps.csv"
    bad.write_text("보안등위치명,위도,경도\n중구-1,37.56,126.99\n", encoding="utf-8")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert cli_main(["provision", "--database-url", db_url, "--cameras", str(bad)]) == 1
    assert "not a camera register" in err.getvalue() and "관리기관명" in err.getvalue()


def test_an_sos_lists_the_cameras_nearest_first_with_facing_and_follows_the_track(db_url: str) -> None:
    seed(db_url)
    import_cameras(db_url, JUNG_UTF8, MAPO_CP949)
    config = fast_config(db_url, camera_streams=CameraStreams(TEMPLATE), camera_refresh_s=0.0)
    with serve(config) as base, httpx.Client(base_url=base, timeout=10.0) as c:
        me = resident(c)
        r = c.post("/v1/sos", json={"lat": SOS[0], "lon": SOS[1], "accuracy_m": 5.0}, headers=me)
        assert r.status_code == 202, r.text
        alert_id = r.json()["alert_id"]
        jung = login(c, "op-jung")

        r = c.get(f"/v1/alerts/{alert_id}/cameras", headers=jung)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["radius_m"] == 100.0 and (body["lat"], body["lon"]) == SOS
        got = [
            (
                cam["management_no"],
                round(cam["distance_m"]),
                cam["facing"],
                cam["facing_known"],
                cam["looks_towards"],
            )
            for cam in body["cameras"]
        ]
        assert got == [
            ("JG-CCTV-0103", 15, "360도", True, True),  # all around
            ("JG-CCTV-0101", 30, "동", True, True),  # west of the resident, facing east
            ("JG-CCTV-0102", 60, "북", True, False),  # north of the resident, facing north
            ("JG-CCTV-0104", 80, "사거리 방면", False, None),  # free text: unknown
        ]
        first = body["cameras"][0]
        assert first["stream_url"] == f"https://vms.example/live/JG-CCTV-0103?cam={first['camera_id']}"
        assert first["address"] == "서울특별시 중구 을지로6가 18-41" and first["camera_count"] == 4
        assert round(body["cameras"][1]["bearing_deg"]) == 90  # from the camera to the resident

        # Other centres do not see the alert (404, as for an unknown id); maintenance neither.
        assert c.get(f"/v1/alerts/{alert_id}/cameras", headers=login(c, "op-gangnam")).status_code == 404
        assert c.get(f"/v1/alerts/{alert_id}/cameras", headers=login(c, "op-maint")).status_code == 404
        assert c.get("/v1/alerts/sos-nope/cameras", headers=jung).status_code == 404
        assert c.get(f"/v1/alerts/{alert_id}/cameras").status_code == 401
        assert c.get(f"/v1/alerts/{alert_id}/cameras", headers=login(c, "op-city")).status_code == 200

        # The resident moves on to 명동: the next press adds a track position, the list follows it.
        north = (37.5660, 126.9784)
        r = c.post("/v1/sos", json={"lat": north[0], "lon": north[1], "accuracy_m": 5.0}, headers=me)
        assert r.status_code == 202 and r.json()["alert_id"] == alert_id
        body = c.get(f"/v1/alerts/{alert_id}/cameras", headers=jung).json()
        assert (body["position"]["lat"], body["position"]["lon"]) == north
        assert [(cam["management_no"], cam["looks_towards"]) for cam in body["cameras"]] == [
            ("JG-CCTV-0106", True)
        ]

    # Every read is audited like a read of the track (the resident by pseudonym).
    assert count(db_url, "SELECT count(*) FROM audit_log WHERE action = 'read_cameras'") == 3
