"""Residents' positions past their deadlines, deleted residents' alerts, and a resident's export:
the SQL around the pure rules of `alerts._privacy` (docs/privacy.md).

Every copy of an SOS position is rewritten here or in `store.jobs.run_retention`: the alert's
document (``alerts.data``: place, track, timeline), its timeline rows (``alert_events``), its track
(``alert_positions``) and the walk positions tied to it (``walk_positions.alert_id``). CAP messages
are rendered from the document on each request, never stored.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from alerts import (
    COARSE_DECIMALS,
    DELETED_SOURCE,
    Alert,
    InvalidAlertData,
    alert_from_dict,
    alert_to_dict,
    coarsen_alert,
    coarsen_details,
    coarsen_document,
    fully_coarse,
    unlink_alert,
    unlink_due,
)
from runtime.logs import get_logger
from store.types import Conn, Row

log = get_logger(__name__)

_RESIDENT_ACTOR = "resident:"
# The audit actions that used a resident's phone number: shown to an operator, dialled by the PBX.
PHONE_REVEAL_ACTION = "phone.reveal"
PHONE_DIAL_ACTION = "phone.dial"
PHONE_USES = (PHONE_REVEAL_ACTION, PHONE_DIAL_ACTION)


def _rewrite_events(conn: Conn, alert_id: str, cutoff: datetime | None, resident_id: str | None) -> int:
    """Coarsen the positions in an alert's timeline rows (all, or those before ``cutoff``) and,
    for an unlinked alert, name the resident `DELETED_SOURCE`."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT id, ts, actor, note, details FROM alert_events WHERE alert_id = %s ORDER BY id",
            (alert_id,),
        ).fetchall()
    changed = 0
    for r in rows:
        if cutoff is not None and r["ts"] >= cutoff:
            continue
        details: dict[str, Any] = coarsen_details(r["details"] or {})
        actor, note = r["actor"], r["note"]
        if resident_id is not None:
            if actor == _RESIDENT_ACTOR + resident_id:
                actor = _RESIDENT_ACTOR + DELETED_SOURCE
            note = note.replace(resident_id, DELETED_SOURCE) if note else note
            details = {
                k: v.replace(resident_id, DELETED_SOURCE) if isinstance(v, str) else v
                for k, v in details.items()
            }
        if (actor, note, details) != (r["actor"], r["note"], r["details"]):
            conn.execute(
                "UPDATE alert_events SET actor = %s, note = %s, details = %s WHERE id = %s",
                (actor, note, Jsonb(details), r["id"]),
            )
            changed += 1
    return changed


def coarsen_sos_documents(conn: Conn, *, cutoff: datetime) -> int:
    """Coarsen the positions taken before ``cutoff`` in SOS alerts' documents and timeline rows;
    an alert whose last change is before ``cutoff`` is marked and not read again. Returns alerts
    changed. Call inside the retention job's transaction."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT alert_id, data FROM alerts WHERE kind = 'sos' AND NOT positions_coarse "
            "AND created_at < %s ORDER BY created_at FOR UPDATE",
            (cutoff,),
        ).fetchall()
    changed = 0
    for r in rows:
        try:
            alert = alert_from_dict(r["data"])
        except InvalidAlertData as exc:
            # A document the model cannot read is coarsened whole, by shape.
            log.warning("retention_document_unreadable", alert_id=r["alert_id"], error=str(exc))
            conn.execute(
                "UPDATE alerts SET data = %s, positions_coarse = (updated_at < %s) WHERE alert_id = %s",
                (Jsonb(coarsen_document(r["data"])), cutoff, r["alert_id"]),
            )
            _rewrite_events(conn, str(r["alert_id"]), cutoff, None)
            changed += 1
            continue
        after = coarsen_alert(alert, cutoff)
        done = fully_coarse(after, cutoff)
        if after is not alert:
            conn.execute(
                "UPDATE alerts SET data = %s, positions_coarse = %s WHERE alert_id = %s",
                (Jsonb(alert_to_dict(after)), done, r["alert_id"]),
            )
            changed += 1
        elif done:
            conn.execute("UPDATE alerts SET positions_coarse = true WHERE alert_id = %s", (r["alert_id"],))
        _rewrite_events(conn, str(r["alert_id"]), cutoff, None)
    return changed


def _coarsen_all_points(conn: Conn, alert_id: str, accuracy_m: float) -> None:
    conn.execute(
        "UPDATE alert_positions SET lat = round(lat::numeric, %(d)s), lon = round(lon::numeric, %(d)s), "
        "accuracy_m = greatest(coalesce(accuracy_m, 0), %(acc)s), coarsened = true WHERE alert_id = %(a)s",
        {"d": COARSE_DECIMALS, "acc": accuracy_m, "a": alert_id},
    )
    conn.execute(
        "UPDATE walk_positions SET lat = round(lat::numeric, %(d)s), lon = round(lon::numeric, %(d)s), "
        "accuracy_m = greatest(coalesce(accuracy_m, 0), %(acc)s), heading_deg = NULL, speed_m_s = NULL, "
        "reason = 'coarsened' WHERE alert_id = %(a)s",
        {"d": COARSE_DECIMALS, "acc": accuracy_m, "a": alert_id},
    )


def unlink_deleted_residents(
    conn: Conn, *, hold: timedelta, now: datetime, accuracy_m: float
) -> dict[str, int]:
    """Deleted residents' alerts whose legal hold has passed (closed, ``hold`` after the close):
    unlinked from the resident, every position coarsened; a deleted resident with nothing left
    linked is removed, so no row keeps the id. Open incidents and those still on hold wait."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT a.alert_id, a.resident_id, a.data FROM alerts a JOIN residents r USING (resident_id) "
            "WHERE r.deleted_at IS NOT NULL ORDER BY a.created_at FOR UPDATE OF a"
        ).fetchall()
    unlinked = held = 0
    for r in rows:
        try:
            alert: Alert = alert_from_dict(r["data"])
        except InvalidAlertData as exc:
            # Unreadable: no close time to judge the hold by, so it is held (and said so).
            log.warning("retention_document_unreadable", alert_id=r["alert_id"], error=str(exc))
            held += 1
            continue
        if not unlink_due(alert, hold, now):
            held += 1
            continue
        rid = str(r["resident_id"])
        after = unlink_alert(alert, rid)
        conn.execute(
            "UPDATE alerts SET data = %s, resident_id = NULL, positions_coarse = true WHERE alert_id = %s",
            (Jsonb(alert_to_dict(after)), r["alert_id"]),
        )
        _rewrite_events(conn, str(r["alert_id"]), None, rid)
        _coarsen_all_points(conn, str(r["alert_id"]), accuracy_m)
        conn.execute("UPDATE walks SET resident_id = %s WHERE resident_id = %s", (DELETED_SOURCE, rid))
        unlinked += 1
    removed = conn.execute(
        "DELETE FROM residents r WHERE r.deleted_at IS NOT NULL "
        "AND NOT EXISTS (SELECT 1 FROM alerts a WHERE a.resident_id = r.resident_id)"
    ).rowcount
    return {"alerts_unlinked": unlinked, "alerts_on_hold": held, "deleted_residents_removed": removed}


# --------------------------------------------------------------------------- export


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _iso_row(row: Row) -> dict[str, Any]:
    return {k: _iso(v) for k, v in row.items()}


def resident_export(conn: Conn, resident_id: str, pseudonym: str) -> dict[str, Any]:
    """Everything held about a resident, as one JSON-able document: the account, the walks and
    their positions still held, the SOS alerts with what operators saw of them (the document,
    the track, the timeline), and the audit rows naming them (by ``pseudonym``)."""
    with conn.cursor(row_factory=dict_row) as cur:
        account = cur.execute(
            "SELECT resident_id, created_at FROM residents WHERE resident_id = %s", (resident_id,)
        ).fetchone()
        walks = cur.execute(
            "SELECT walk_id, district_code, started_at, ended_at, status FROM walks "
            "WHERE resident_id = %s ORDER BY started_at",
            (resident_id,),
        ).fetchall()
        positions = cur.execute(
            "SELECT p.walk_id, p.ts, p.lat, p.lon, p.accuracy_m, p.heading_deg, p.speed_m_s, p.accepted, "
            "p.reason, p.alert_id FROM walk_positions p JOIN walks w USING (walk_id) "
            "WHERE w.resident_id = %s ORDER BY p.walk_id, p.ts, p.id",
            (resident_id,),
        ).fetchall()
        alerts = cur.execute(
            "SELECT alert_id, status, created_at, updated_at, acknowledged_by, acknowledged_at, resolved_at, "
            "data FROM alerts WHERE resident_id = %s ORDER BY created_at",
            (resident_id,),
        ).fetchall()
        audit = cur.execute(
            "SELECT id, ts, actor, action, details FROM audit_log "
            "WHERE subject_kind = 'resident' AND subject_id = %s ORDER BY id",
            (pseudonym,),
        ).fetchall()
        registered = (
            cur.execute("SELECT 1 FROM resident_phones WHERE resident_id = %s", (resident_id,)).fetchone()
            is not None
        )
        by_walk: dict[str, list[dict[str, Any]]] = {}
        for p in positions:
            by_walk.setdefault(str(p["walk_id"]), []).append(
                {k: _iso(v) for k, v in p.items() if k != "walk_id"}
            )
        out_alerts = []
        for a in alerts:
            track = cur.execute(
                "SELECT ts, lat, lon, accuracy_m, coarsened FROM alert_positions WHERE alert_id = %s "
                "ORDER BY ts, id",
                (a["alert_id"],),
            ).fetchall()
            events = cur.execute(
                "SELECT ts, actor, action, note, details FROM alert_events WHERE alert_id = %s ORDER BY id",
                (a["alert_id"],),
            ).fetchall()
            reads = [
                _iso_row(e)
                for e in audit
                if isinstance(e["details"], dict) and a["alert_id"] in _alert_ids(e["details"])
            ]
            out_alerts.append(
                {
                    **{k: _iso(v) for k, v in a.items() if k != "data"},
                    "alert": a["data"],
                    "track": [_iso_row(t) for t in track],
                    "timeline": [_iso_row(e) for e in events],
                    "operator_reads": reads,
                }
            )
    return {
        "resident": None if account is None else _iso_row(account),
        "walks": [{**_iso_row(w), "positions": by_walk.get(str(w["walk_id"]), [])} for w in walks],
        "alerts": out_alerts,
        # The number itself is never exported (nor shown anywhere but in a reveal): only that one is
        # registered, and every time an operator saw it or had the centre's telephone system dial it.
        "phone_number": {"registered": registered},
        "phone_number_reveals": [_iso_row(e) for e in audit if e["action"] in PHONE_USES],
        "audit": [_iso_row(e) for e in audit],
    }


def _alert_ids(details: dict[str, Any]) -> list[str]:
    ids = details.get("alert_ids")
    if isinstance(ids, list):
        return [str(i) for i in ids]
    one = details.get("alert_id")
    return [str(one)] if one is not None else []
