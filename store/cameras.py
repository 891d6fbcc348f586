"""The camera register (the national standard CCTV data, 전국CCTV표준데이터) in the ``cameras``
table: written by ``streetlight provision --cameras``, read by the API's camera index.

A camera's id is derived from the file's row (the shell's ``streetlight.cameraregister``), so a
file imported again updates the same rows; cameras missing from a later file are kept (one file is
one organisation's or one district's cameras, never the whole register).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import astuple, dataclass, fields

from psycopg.rows import dict_row

from store.types import Conn, Row


@dataclass(frozen=True, slots=True)
class Camera:
    """One row of the camera register."""

    camera_id: str
    lat: float
    lon: float
    district_code: str
    dong_code: str | None = None
    management_no: str | None = None  # 관리번호
    gov_code: str | None = None  # 개방자치단체코드
    organisation: str | None = None  # 관리기관명
    road_address: str | None = None  # 소재지도로명주소
    lot_address: str | None = None  # 소재지지번주소
    purpose: str | None = None  # 설치목적구분
    camera_count: int | None = None  # 카메라대수
    pixels: int | None = None  # 카메라화소수 (in ten thousands, as published)
    facing: str | None = None  # 촬영방면정보, as published
    retention_days: int | None = None  # 보관일수
    installed: str | None = None  # 설치연월 (YYYY-MM)
    phone: str | None = None  # 관리기관전화번호
    data_date: str | None = None  # 데이터기준일자


COLUMNS = tuple(f.name for f in fields(Camera))


def upsert_cameras(conn: Conn, cameras: Iterable[Camera]) -> tuple[int, int]:
    """Insert or update cameras by id; (new, updated). Rows whose data did not change are left
    alone (neither counted nor touched)."""
    rows = [astuple(c) for c in cameras]
    if not rows:
        return 0, 0
    cols = ", ".join(COLUMNS)
    changed = " OR ".join(f"cameras.{c} IS DISTINCT FROM EXCLUDED.{c}" for c in COLUMNS[1:])
    sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS[1:])
    with conn.cursor() as cur:
        cur.execute(
            "CREATE TEMP TABLE camera_import (LIKE cameras INCLUDING DEFAULTS) ON COMMIT DROP",
        )
        with cur.copy(f"COPY camera_import ({cols}) FROM STDIN") as copy:
            for r in rows:
                copy.write_row(r)
        cur.execute(
            f"INSERT INTO cameras ({cols}) SELECT {cols} FROM camera_import "
            f"ON CONFLICT (camera_id) DO UPDATE SET {sets}, updated_at = now() WHERE {changed} "
            "RETURNING (xmax = 0)"
        )
        inserted = [bool(r[0]) for r in cur.fetchall()]
        cur.execute("DROP TABLE camera_import")
    return sum(inserted), len(inserted) - sum(inserted)


def camera_version(conn: Conn) -> tuple[int, str]:
    """How many cameras and when the newest change was: changes when the register changes."""
    row = conn.execute("SELECT count(*), coalesce(max(updated_at)::text, '') FROM cameras").fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def list_cameras(conn: Conn) -> list[Row]:
    """Every camera (for the API's index), in id order."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(f"SELECT {', '.join(COLUMNS)} FROM cameras ORDER BY camera_id").fetchall()
