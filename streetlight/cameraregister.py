"""The camera register in the national standard format (전국CCTV표준데이터).

Every Korean local government publishes its CCTV cameras as a CSV with these columns (matched by
name, in any order; older files say 위도/경도 where newer ones say WGS84위도/WGS84경도, and newer
files add 관리번호 and 개방자치단체코드)::

    관리기관명, 소재지도로명주소, 소재지지번주소, 설치목적구분, 카메라대수, 카메라화소수,
    촬영방면정보, 보관일수, 설치연월, 관리기관전화번호, WGS84위도, WGS84경도, 데이터기준일자

One row is one place with ``카메라대수`` cameras. Its id is derived (`camera_id`: the located
district and 관리번호 with 개방자치단체코드, else the organisation, purpose, address and coordinates),
so the same file imported again gives the same ids. Its district and neighbourhood come from the
gazetteer at its coordinates; 촬영방면정보 is kept as published (``geo.parse_facing`` reads it).

Bad rows (no coordinates, outside the service area, a row already listed) are returned with their
line numbers and never imported. Reading the file (UTF-8 or CP949, columns by name, line numbers)
is ``streetlight.standarddata``'s, shared with the lamp register.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from broker.security import ProvisioningError
from store.cameras import Camera
from streetlight.standarddata import BadRow, decode, header_line, locate_row, positive_int, read_rows

if TYPE_CHECKING:
    from geo import Gazetteer

ORG: Final = "관리기관명"
ROAD: Final = "소재지도로명주소"
LOT: Final = "소재지지번주소"
PURPOSE: Final = "설치목적구분"
COUNT: Final = "카메라대수"
PIXELS: Final = "카메라화소수"
FACING: Final = "촬영방면정보"
RETENTION: Final = "보관일수"
INSTALLED: Final = "설치연월"
PHONE: Final = "관리기관전화번호"
LATS: Final = ("WGS84위도", "위도")
LONS: Final = ("WGS84경도", "경도")
DATE: Final = "데이터기준일자"
MANAGEMENT_NO: Final = "관리번호"
GOV_CODE: Final = "개방자치단체코드"
REQUIRED: Final = ((ORG,), (COUNT,), LATS, LONS)


@dataclass(frozen=True, slots=True)
class CameraImport:
    """What a camera file gave: its cameras (in file order), the bad rows, the encoding found."""

    source: str
    encoding: str
    cameras: tuple[Camera, ...]
    bad: tuple[BadRow, ...]


def camera_id(district_code: str, key: str) -> str:
    """``cam-{district}-{12 hex}``: the first 48 bits of SHA-256 over ``district|key``."""
    digest = hashlib.sha256(f"{district_code}|{key}".encode()).hexdigest()[:12]
    return f"cam-{district_code}-{digest}"


def is_camera_register(text: str) -> bool:
    """True when the first line of ``text`` is the header of a camera register."""
    first = header_line(text)
    return COUNT in first and FACING in first


def parse_cameras(
    text: str, gazetteer: Gazetteer, source: str = "cameras", encoding: str = "utf-8"
) -> CameraImport:
    """The cameras of a register's text and its bad rows (see the module's docstring)."""
    cameras: list[Camera] = []
    bad: list[BadRow] = []
    seen: dict[str, int] = {}
    for row in read_rows(text, REQUIRED, source, "camera register (전국CCTV표준데이터)"):
        number, address = row[MANAGEMENT_NO], row[ROAD] or row[LOT]
        label = number or address or row[ORG] or "camera"
        placed = locate_row(gazetteer, label, row, LATS, LONS)
        if isinstance(placed, BadRow):
            bad.append(placed)
            continue
        lat, lon, where = placed
        district = where.district_code or ""
        if number:
            key = f"no:{row[GOV_CODE]}:{number}"
        else:
            key = f"at:{row[ORG]}|{row[PURPOSE]}|{address}|{lat:.6f}|{lon:.6f}"
        cid = camera_id(district, key)
        if cid in seen:
            what = f"{MANAGEMENT_NO} {number}" if number else "organisation, purpose, address and place"
            bad.append(BadRow(row.line, f"{label}: duplicate of line {seen[cid]} (same {what})"))
            continue
        seen[cid] = row.line
        cameras.append(
            Camera(
                camera_id=cid,
                lat=lat,
                lon=lon,
                district_code=district,
                dong_code=where.dong_code,
                management_no=number or None,
                gov_code=row[GOV_CODE] or None,
                organisation=row[ORG] or None,
                road_address=row[ROAD] or None,
                lot_address=row[LOT] or None,
                purpose=row[PURPOSE] or None,
                camera_count=positive_int(row[COUNT]),
                pixels=positive_int(row[PIXELS]),
                facing=row[FACING] or None,
                retention_days=positive_int(row[RETENTION]),
                installed=row[INSTALLED] or None,
                phone=row[PHONE] or None,
                data_date=row[DATE] or None,
            )
        )
    return CameraImport(source, encoding, tuple(cameras), tuple(bad))


def load_cameras(path: Path, gazetteer: Gazetteer) -> CameraImport:
    """Read and parse a camera register file (UTF-8 or CP949)."""
    text, encoding = decode(path.read_bytes(), str(path))
    return parse_cameras(text, gazetteer, str(path), encoding)


def import_cameras(paths: list[Path], database_url: str | None, gazetteer: Gazetteer) -> list[str]:
    """Read every file (all of them first: a file that cannot be read imports nothing) and write
    their cameras into the ``cameras`` table in one transaction; the report's lines, bad rows with
    their line numbers. ProvisioningError without a database or when it refuses."""
    if not database_url:
        raise ProvisioningError("--cameras needs a database: pass --database-url or set DATABASE_URL")
    from store.cameras import upsert_cameras
    from store.connections import connect
    from store.errors import DatabaseError
    from store.schema import apply_migrations

    imports = [load_cameras(path, gazetteer) for path in paths]
    try:
        with connect(database_url, connect_timeout_s=10) as conn:
            apply_migrations(conn)
            with conn.transaction():
                new, updated = upsert_cameras(conn, [c for i in imports for c in i.cameras])
    except DatabaseError as exc:
        raise ProvisioningError(
            f"the cameras were not imported ({exc}); re-run with the same arguments"
        ) from exc
    total = sum(len(i.cameras) for i in imports)
    lines = [f"cameras: {total} cameras ({new} new, {updated} updated) into the cameras table"]
    for imported in imports:
        lines.append(
            f"  cameras    {imported.source} ({imported.encoding}): {len(imported.cameras)} cameras, "
            f"{len(imported.bad)} rows skipped"
        )
        lines.extend(f"    skipped  {bad}" for bad in imported.bad)
    return lines
