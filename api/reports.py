"""An alert's incident report, for a supervisor to print (HTML with a print stylesheet) or to
file (CSV, UTF-8 with a byte-order mark so that Excel reads the Korean right).

`incident_report` gathers what the report says from the alert (the core's value), its stored
timeline, its track and the lamp register; `incident_html` and `incident_csv` lay it out. No I/O.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from datetime import datetime
from html import escape
from typing import Any

from alerts import Alert, EventAction, cap_msg_type, cap_reference, place_in_words, render_cap

KST_NOTE = "times in UTC (ISO 8601)"


def _iso(value: object) -> str:
    return value.isoformat() if isinstance(value, datetime) else ("" if value is None else str(value))


def incident_report(
    alert: Alert,
    events: Sequence[Mapping[str, Any]],
    track: Sequence[Mapping[str, Any]],
    register: Mapping[str, Mapping[str, Any]],
    *,
    printed_by: str,
) -> dict[str, Any]:
    """Everything the report shows, as plain values."""
    place = alert.place
    lamps: list[dict[str, str]] = []
    seen: set[str] = set()
    for lamp in sorted(place.nearest_lamps, key=lambda n: n.distance_m):
        seen.add(lamp.lamp_id)
        reg = register.get(lamp.lamp_id, {})
        lamps.append(
            {
                "lamp_id": lamp.lamp_id,
                "lamp_number": lamp.lamp_number or str(reg.get("lamp_number") or ""),
                "distance_m": f"{lamp.distance_m:.0f}",
                "address": lamp.address or str(reg.get("address") or ""),
                "role": "nearest",
            }
        )
    for device_id in alert.device_ids:
        if device_id in seen:
            continue
        reg = register.get(device_id, {})
        lamps.append(
            {
                "lamp_id": device_id,
                "lamp_number": str(reg.get("lamp_number") or ""),
                "distance_m": "",
                "address": str(reg.get("address") or ""),
                "role": "device",
            }
        )
    timeline = [
        {
            "at": _iso(e["ts"]),
            "actor": str(e["actor"]),
            "action": str(e["action"]),
            "note": str(e.get("note") or ""),
            "details": ", ".join(f"{k}={v}" for k, v in dict(e.get("details") or {}).items()),
        }
        for e in events
    ]
    units = [
        {"at": ev.at.isoformat(), "unit": ev.detail("unit") or "", "actor": ev.actor, "note": ev.note}
        for ev in alert.timeline
        if ev.action is EventAction.DISPATCHED
    ]
    cap = [
        {
            "number": str(n),
            "identifier": cap_reference(alert, n).identifier,
            "sender": cap_reference(alert, n).sender,
            "sent": cap_reference(alert, n).sent.isoformat(),
            "msg_type": cap_msg_type(alert, n).value,
            "event": alert.timeline[n - 1].action.value,
        }
        for n in range(1, len(alert.timeline) + 1)
    ]
    return {
        "alert": {
            "id": alert.id,
            "kind": alert.kind.value,
            "severity": alert.severity.value,
            "state": alert.state.value,
            "created_at": alert.created_at.isoformat(),
            "count": str(alert.count),
            "fault_code": alert.fault_code,
        },
        "place": {
            "ko": place_in_words(place, "ko"),
            "en": place_in_words(place, "en"),
            "district": f"{place.district_name} {place.district_name_en} ({place.district_code})".strip(),
            "dong": f"{place.dong_name} {place.dong_name_en} ({place.dong_code})".strip(),
            "address": place.address,
            "lat_lon": f"{place.lat:.6f}, {place.lon:.6f}",
        },
        "timeline": timeline,
        "lamps": lamps,
        "units": units,
        "track": [
            {
                "at": _iso(p["ts"]),
                "lat_lon": f"{float(p['lat']):.6f}, {float(p['lon']):.6f}",
                "accuracy_m": "" if p.get("accuracy_m") is None else f"{float(p['accuracy_m']):.0f}",
            }
            for p in track
        ],
        "cap": cap,
        "cap_xml": render_cap(alert).xml,
        "printed_by": printed_by,
    }


_PRINT_CSS = """
body { font: 11pt/1.4 "Noto Sans KR", "Malgun Gothic", system-ui, sans-serif; margin: 1.5em; color: #000; }
h1 { font-size: 16pt; margin: 0 0 .3em; }
h2 { font-size: 12.5pt; margin: 1.2em 0 .3em; border-bottom: 1px solid #888; }
table { border-collapse: collapse; width: 100%; }
th, td { border: 1px solid #aaa; padding: .2em .4em; text-align: left; vertical-align: top; }
th { background: #eee; } .meta { color: #444; }
pre { white-space: pre-wrap; font-size: 8pt; border: 1px solid #aaa; padding: .5em; }
.noprint { margin: .5em 0; }
@media print {
  @page { size: A4; margin: 15mm; }
  body { margin: 0; font-size: 10pt; }
  .noprint { display: none; }
  h2 { break-after: avoid; } tr, pre { break-inside: avoid; }
  th { background: #eee !important; -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"""


def _table(headers: Sequence[str], keys: Sequence[str], rows: Sequence[Mapping[str, str]], css: str) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(r[k]))}</td>" for k in keys) + "</tr>" for r in rows)
    empty = f'<tr><td colspan="{len(keys)}">—</td></tr>' if not rows else ""
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}{empty}</tbody></table>'


def incident_html(report: Mapping[str, Any]) -> str:
    """The report as one printable HTML page (its own print stylesheet, no scripts)."""
    a, p = report["alert"], report["place"]
    facts = [
        ("경보 번호 / Alert", a["id"]),
        ("종류 / Kind", a["kind"]),
        ("심각도 / Severity", a["severity"]),
        ("상태 / State", a["state"]),
        ("접수 / Created", a["created_at"]),
        ("건수 / Count", a["count"]),
        ("장소 / Place (ko)", p["ko"]),
        ("Place (en)", p["en"]),
        ("구 / District", p["district"]),
        ("동 / Neighbourhood", p["dong"]),
        ("주소 / Address", p["address"]),
        ("좌표 / Lat, lon", p["lat_lon"]),
    ]
    facts_html = "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in facts)
    parts = [
        '<!doctype html><html lang="ko"><head><meta charset="utf-8">',
        f"<title>사건 보고서 · Incident report {escape(a['id'])}</title>",
        f"<style>{_PRINT_CSS}</style></head><body>",
        '<p class="noprint"><button type="button" onclick="window.print()">인쇄 / Print</button></p>',
        f"<h1>사건 보고서 · Incident report {escape(a['id'])}</h1>",
        f'<p class="meta">{escape(report["printed_by"])} · {escape(KST_NOTE)}</p>',
        f'<h2 id="place">장소 · Place</h2><table class="facts">{facts_html}</table>',
        '<h2 id="timeline">경과 · Timeline</h2>',
        _table(
            ["시각 / Time", "행위 / Action", "담당 / Actor", "메모 / Note", "세부 / Details"],
            ["at", "action", "actor", "note", "details"],
            report["timeline"],
            "timeline",
        ),
        '<h2 id="units">출동 · Units dispatched</h2>',
        _table(
            ["시각 / Time", "출동 단위 / Unit", "담당 / Actor", "메모 / Note"],
            ["at", "unit", "actor", "note"],
            report["units"],
            "units",
        ),
        '<h2 id="lamps">보안등 · Lamps</h2>',
        _table(
            ["번호 / Lamp number", "기기 / Device", "거리 m / Distance", "주소 / Address", "구분 / Role"],
            ["lamp_number", "lamp_id", "distance_m", "address", "role"],
            report["lamps"],
            "lamps",
        ),
        '<h2 id="track">이동 경로 · Track</h2>',
        _table(
            ["시각 / Time", "좌표 / Lat, lon", "정확도 m / Accuracy"],
            ["at", "lat_lon", "accuracy_m"],
            report["track"],
            "track",
        ),
        '<h2 id="cap">CAP 메시지 · CAP messages</h2>',
        _table(
            ["#", "identifier", "sender", "sent", "msgType", "event"],
            ["number", "identifier", "sender", "sent", "msg_type", "event"],
            report["cap"],
            "cap",
        ),
        f'<pre class="cap-xml">{escape(report["cap_xml"])}</pre>',
        "</body></html>",
    ]
    return "\n".join(parts)


CSV_HEADER = ("section", "time", "item", "value", "actor", "note")


def incident_csv(report: Mapping[str, Any]) -> bytes:
    """The report as CSV rows (section, time, item, value, actor, note), UTF-8 with a BOM."""
    out = io.StringIO(newline="")
    w = csv.writer(out)
    w.writerow(CSV_HEADER)
    a, p = report["alert"], report["place"]
    for key in ("id", "kind", "severity", "state", "count", "fault_code"):
        w.writerow(("alert", a["created_at"] if key == "id" else "", key, a[key], "", ""))
    for key in ("ko", "en", "district", "dong", "address", "lat_lon"):
        w.writerow(("place", "", key, p[key], "", ""))
    for e in report["timeline"]:
        w.writerow(("timeline", e["at"], e["action"], e["details"], e["actor"], e["note"]))
    for u in report["units"]:
        w.writerow(("unit", u["at"], "dispatched", u["unit"], u["actor"], u["note"]))
    for lamp in report["lamps"]:
        where = " · ".join(
            x for x in (f"{lamp['distance_m']} m" if lamp["distance_m"] else "", lamp["address"]) if x
        )
        w.writerow(("lamp", "", lamp["lamp_number"] or lamp["lamp_id"], where, lamp["lamp_id"], lamp["role"]))
    for t in report["track"]:
        w.writerow(("track", t["at"], "position", t["lat_lon"], "", t["accuracy_m"]))
    for c in report["cap"]:
        w.writerow(("cap", c["sent"], c["msg_type"], c["identifier"], c["sender"], c["event"]))
    w.writerow(("report", "", "printed_by", report["printed_by"], "", ""))
    return out.getvalue().encode("utf-8-sig")
