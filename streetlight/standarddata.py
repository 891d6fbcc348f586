"""Reading a file of Korea's public standard data (공공데이터 표준데이터: the lamp register
전국보안등정보표준데이터, the camera register 전국CCTV표준데이터, ...): the encoding, the columns by
name, each row with the file line it starts on.

Encoding: the files are published in UTF-8 (with or without a BOM) or CP949. A strict UTF-8 decode
of CP949 Korean text fails on its first Hangul byte pair, so UTF-8 is tried first and CP949 second;
Python's codecs and csv module do the rest (a detection library would guess among dozens of
encodings where the standard allows two).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from broker.security import DeviceFileError

if TYPE_CHECKING:
    from geo import Gazetteer, Location

ENCODINGS: Final = ("utf-8-sig", "cp949")


@dataclass(frozen=True, slots=True)
class BadRow:
    """A row that was not imported, and why."""

    line: int  # the file's line the row starts on, counted from 1 (the header is line 1)
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


def decode(data: bytes, source: str = "register") -> tuple[str, str]:
    """The text of a standard-data file and the encoding it was in (UTF-8, else CP949)."""
    for encoding in ENCODINGS:
        try:
            return data.decode(encoding), "cp949" if encoding == "cp949" else "utf-8"
        except UnicodeDecodeError:
            continue
    raise DeviceFileError(source, "encoding", "neither UTF-8 nor CP949")


def header_line(text: str) -> str:
    """The first line of a file's text (its header), without a BOM."""
    return text.lstrip("\ufeff").split("\n", 1)[0]


@dataclass(frozen=True, slots=True)
class Row:
    """One data row: the line it starts on and its cells by column name ("" when absent)."""

    line: int
    cells: Sequence[str]
    columns: dict[str, int]

    def __getitem__(self, name: str) -> str:
        i = self.columns.get(name)
        return self.cells[i].strip() if i is not None and i < len(self.cells) else ""

    def first(self, *names: str) -> str:
        """The first of these columns that is present in the file (e.g. WGS84위도, else 위도)."""
        for name in names:
            if name in self.columns:
                return self[name]
        return ""


def read_rows(text: str, required: Sequence[Sequence[str]], source: str, what: str) -> Iterator[Row]:
    """The non-empty rows of a standard-data file's text, columns matched by name in any order.
    ``required``: for each needed column the names it may have (one of them must be in the
    header), else DeviceFileError naming ``what`` the file should have been."""
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff"), newline=""))
    try:
        header = [h.strip().lstrip("\ufeff") for h in next(reader)]
    except StopIteration:
        raise DeviceFileError(source, "line 1", "empty file") from None
    missing = [" or ".join(names) for names in required if not any(n in header for n in names)]
    if missing:
        raise DeviceFileError(source, "line 1", f"not a {what}: no column {', '.join(missing)}")
    columns = {name: i for i, name in enumerate(header)}
    next_line = 2
    for cells in reader:
        line, next_line = next_line, reader.line_num + 1
        if any(cell.strip() for cell in cells):
            yield Row(line, cells, columns)


def number(value: str) -> float | None:
    """A finite, non-zero number (0 is how the files say "no coordinates"), else None."""
    try:
        x = float(value.strip())
    except ValueError:
        return None
    return x if math.isfinite(x) and x != 0.0 else None


def positive_int(value: str) -> int | None:
    """A count above 0 (``2``, ``2.0``), else None."""
    try:
        n = int(float(value.strip()))
    except (ValueError, OverflowError):
        return None
    return n if n > 0 else None


def locate_row(
    gazetteer: Gazetteer, label: str, row: Row, lat_names: Sequence[str], lon_names: Sequence[str]
) -> tuple[float, float, Location] | BadRow:
    """A row's coordinates and where they are in the service area (inside a district), else the
    bad row saying why (no coordinates, out of range, outside the service area); ``label`` names
    the row in the reason."""
    lat_text, lon_text = row.first(*lat_names), row.first(*lon_names)
    lat, lon = number(lat_text), number(lon_text)
    if lat is None or lon is None:
        lat_name = next((n for n in lat_names if n in row.columns), lat_names[0])
        lon_name = next((n for n in lon_names if n in row.columns), lon_names[0])
        return BadRow(row.line, f"{label}: no coordinates ({lat_name} {lat_text!r}, {lon_name} {lon_text!r})")
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        return BadRow(row.line, f"{label}: coordinates out of range ({lat}, {lon})")
    where = gazetteer.locate(lat, lon)
    if not where.inside or where.district_code is None:
        return BadRow(
            row.line,
            f"{label}: outside the service area ({lat:.6f}, {lon:.6f}, "
            f"{where.distance_outside_m:.0f} m from Seoul)",
        )
    return lat, lon, where
