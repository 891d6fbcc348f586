"""A district's lamp register in the national standard format (전국보안등정보표준데이터).

Every Korean local government publishes its security lamps as a CSV with these columns (matched
by name, in any order; newer files add 관리번호 and 개방자치단체코드)::

    보안등위치명, 설치개수, 소재지도로명주소, 소재지지번주소, 위도, 경도, 설치연도, 설치형태,
    관리기관전화번호, 관리기관명, 데이터기준일자

One row is one pole with one controller: a lamp whose ``lamp_number`` is 보안등위치명, whose
``address`` is the road address (else the lot address) and whose ``lamp_count`` is 설치개수. Its
device id is derived (``broker.security.register_device_id``: the located district and 관리번호,
else 보안등위치명), so the same file imported again gives the same ids. Its district and
neighbourhood come from the gazetteer at its coordinates.

Bad rows (no coordinates, outside the service area, a pole already listed) are returned with
their line numbers and never imported; the good ones are imported together or not at all (the
caller's one transaction).

Reading the file (UTF-8 or CP949, columns by name, line numbers) is ``streetlight.standarddata``'s.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from broker.security import DeviceSpec, register_device_id
from streetlight.standarddata import BadRow, decode, header_line, locate_row, positive_int, read_rows

if TYPE_CHECKING:
    from geo import Gazetteer

NAME: Final = "보안등위치명"
COUNT: Final = "설치개수"
ROAD: Final = "소재지도로명주소"
LOT: Final = "소재지지번주소"
LAT: Final = "위도"
LON: Final = "경도"
YEAR: Final = "설치연도"
FORM: Final = "설치형태"
PHONE: Final = "관리기관전화번호"
ORG: Final = "관리기관명"
DATE: Final = "데이터기준일자"
MANAGEMENT_NO: Final = "관리번호"
GOV_CODE: Final = "개방자치단체코드"
COLUMNS: Final = (NAME, COUNT, ROAD, LOT, LAT, LON, YEAR, FORM, PHONE, ORG, DATE)
REQUIRED: Final = (NAME, LAT, LON)


@dataclass(frozen=True, slots=True)
class RegisterImport:
    """What a register file gave: its lamps (in file order), the bad rows, the encoding found."""

    source: str
    encoding: str
    lamps: tuple[DeviceSpec, ...]
    bad: tuple[BadRow, ...]
    lines: dict[str, int]  # device id -> line


def is_register(text: str) -> bool:
    """True when the first line of ``text`` is the header of a lamp register."""
    first = header_line(text)
    return NAME in first and LAT in first and LON in first


def parse_register(
    text: str, gazetteer: Gazetteer, source: str = "register", encoding: str = "utf-8"
) -> RegisterImport:
    """The lamps of a register's text and its bad rows (see the module's docstring)."""
    lamps: list[DeviceSpec] = []
    bad: list[BadRow] = []
    lines: dict[str, int] = {}
    seen: dict[str, int] = {}
    for row in read_rows(text, [(c,) for c in REQUIRED], source, "lamp register"):
        line, number = row.line, row[NAME]
        if not number:
            bad.append(BadRow(line, f"no {NAME} (the lamp number on the pole)"))
            continue
        placed = locate_row(gazetteer, number, row, (LAT,), (LON,))
        if isinstance(placed, BadRow):
            bad.append(placed)
            continue
        lat, lon, where = placed
        key = f"no:{row[MANAGEMENT_NO]}" if row[MANAGEMENT_NO] else f"name:{number}"
        device_id = register_device_id(where.district_code or "", key)
        if device_id in seen:
            what = f"{MANAGEMENT_NO} {row[MANAGEMENT_NO]}" if key.startswith("no:") else f"{NAME} {number}"
            bad.append(BadRow(line, f"{number}: duplicate of line {seen[device_id]} (same {what})"))
            continue
        seen[device_id] = line
        lines[device_id] = line
        lamps.append(
            DeviceSpec(
                id=device_id,
                kind="lamp",
                district_code=where.district_code or "",
                dong_code=where.dong_code,
                lamp_number=number,
                lat=lat,
                lon=lon,
                address=row[ROAD] or row[LOT] or None,
                lamp_count=positive_int(row[COUNT]),
            )
        )
    return RegisterImport(source, encoding, tuple(lamps), tuple(bad), lines)


def load_register(path: Path, gazetteer: Gazetteer) -> RegisterImport:
    """Read and parse a register file (UTF-8 or CP949)."""
    text, encoding = decode(path.read_bytes(), str(path))
    return parse_register(text, gazetteer, str(path), encoding)


def register_csv(
    rows: Iterable[dict[str, object]], *, organisation: str = "", phone: str = "", date: str = ""
) -> str:
    """A register file's text (UTF-8, the standard's columns plus 관리번호) for ``rows`` of
    ``lamp_number``, ``address``, ``lat``, ``lon``, ``lamp_count``, optional ``management_no``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow([*COLUMNS, MANAGEMENT_NO])
    for r in rows:
        writer.writerow(
            [
                r["lamp_number"],
                r.get("lamp_count", 1),
                r.get("address", ""),
                r.get("lot_address", ""),
                f"{float(str(r['lat'])):.7f}",
                f"{float(str(r['lon'])):.7f}",
                r.get("year", ""),
                r.get("form", "한전주"),
                phone,
                organisation,
                date,
                r.get("management_no", ""),
            ]
        )
    return buf.getvalue()


def lamp_list_csv(lamps: Sequence[DeviceSpec]) -> str:
    """The list for the people who flash the controllers: device id next to the lamp number."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["device_id", "lamp_number", "address", "district_code", "dong_code", "lat", "lon"])
    for d in lamps:
        writer.writerow(
            [d.id, d.lamp_number or "", d.address or "", d.district_code, d.dong_code or "", d.lat, d.lon]
        )
    return buf.getvalue()
