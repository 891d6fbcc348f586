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

Encoding: the files are published in UTF-8 (with or without a BOM) or CP949. A strict UTF-8 decode
of CP949 Korean text fails on its first Hangul byte pair, so UTF-8 is tried first and CP949 second;
Python's codecs and csv module do the rest (a detection library would guess among dozens of
encodings where the standard allows two).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from broker.security import DeviceFileError, DeviceSpec, register_device_id

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
ENCODINGS: Final = ("utf-8-sig", "cp949")


@dataclass(frozen=True, slots=True)
class BadRow:
    """A row that was not imported, and why."""

    line: int  # the file's line the row starts on, counted from 1 (the header is line 1)
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass(frozen=True, slots=True)
class RegisterImport:
    """What a register file gave: its lamps (in file order), the bad rows, the encoding found."""

    source: str
    encoding: str
    lamps: tuple[DeviceSpec, ...]
    bad: tuple[BadRow, ...]
    lines: dict[str, int]  # device id -> line


def decode(data: bytes, source: str = "register") -> tuple[str, str]:
    """The text of a register file and the encoding it was in (UTF-8, else CP949)."""
    for encoding in ENCODINGS:
        try:
            return data.decode(encoding), "cp949" if encoding == "cp949" else "utf-8"
        except UnicodeDecodeError:
            continue
    raise DeviceFileError(source, "encoding", "neither UTF-8 nor CP949")


def is_register(text: str) -> bool:
    """True when the first line of ``text`` is the header of a lamp register."""
    first = text.lstrip("\ufeff").split("\n", 1)[0]
    return NAME in first and LAT in first and LON in first


def _number(value: str) -> float | None:
    try:
        x = float(value.strip())
    except ValueError:
        return None
    return x if math.isfinite(x) and x != 0.0 else None


def _count(value: str) -> int | None:
    try:
        n = int(float(value.strip()))
    except ValueError:
        return None
    return n if n > 0 else None


def parse_register(
    text: str, gazetteer: Gazetteer, source: str = "register", encoding: str = "utf-8"
) -> RegisterImport:
    """The lamps of a register's text and its bad rows (see the module's docstring)."""
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff"), newline=""))
    try:
        header = [h.strip().lstrip("\ufeff") for h in next(reader)]
    except StopIteration:
        raise DeviceFileError(source, "line 1", "empty file") from None
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise DeviceFileError(source, "line 1", f"not a lamp register: no column {', '.join(missing)}")
    col = {name: i for i, name in enumerate(header)}
    lamps: list[DeviceSpec] = []
    bad: list[BadRow] = []
    lines: dict[str, int] = {}
    seen: dict[str, int] = {}
    next_line = 2
    for row in reader:
        line, next_line = next_line, reader.line_num + 1
        if not any(cell.strip() for cell in row):
            continue

        def cell(name: str, row: Sequence[str] = row) -> str:
            i = col.get(name)
            return row[i].strip() if i is not None and i < len(row) else ""

        number = cell(NAME)
        lat, lon = _number(cell(LAT)), _number(cell(LON))
        if not number:
            bad.append(BadRow(line, f"no {NAME} (the lamp number on the pole)"))
            continue
        if lat is None or lon is None:
            bad.append(BadRow(line, f"{number}: no coordinates ({LAT} {cell(LAT)!r}, {LON} {cell(LON)!r})"))
            continue
        if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
            bad.append(BadRow(line, f"{number}: coordinates out of range ({lat}, {lon})"))
            continue
        where = gazetteer.locate(lat, lon)
        if not where.inside or where.district_code is None:
            bad.append(
                BadRow(
                    line,
                    f"{number}: outside the service area ({lat:.6f}, {lon:.6f}, "
                    f"{where.distance_outside_m:.0f} m from Seoul)",
                )
            )
            continue
        key = f"no:{cell(MANAGEMENT_NO)}" if cell(MANAGEMENT_NO) else f"name:{number}"
        device_id = register_device_id(where.district_code, key)
        if device_id in seen:
            what = f"{MANAGEMENT_NO} {cell(MANAGEMENT_NO)}" if key.startswith("no:") else f"{NAME} {number}"
            bad.append(BadRow(line, f"{number}: duplicate of line {seen[device_id]} (same {what})"))
            continue
        seen[device_id] = line
        lines[device_id] = line
        lamps.append(
            DeviceSpec(
                id=device_id,
                kind="lamp",
                district_code=where.district_code,
                dong_code=where.dong_code,
                lamp_number=number,
                lat=lat,
                lon=lon,
                address=cell(ROAD) or cell(LOT) or None,
                lamp_count=_count(cell(COUNT)),
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
