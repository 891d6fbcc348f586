"""The privacy rules of the alerts core: coarsening, deadlines, unlinking, pseudonyms, the audit chain."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from alerts import (
    DELETED_SOURCE,
    GENESIS_HASH,
    Alert,
    AlertKind,
    AuditRow,
    CancelReason,
    NearestLamp,
    Place,
    Position,
    acknowledge,
    add_position,
    alert_to_dict,
    audit_row_hash,
    cancel,
    closed_at,
    coarsen,
    coarsen_alert,
    coarsen_details,
    coarsen_document,
    fully_coarse,
    is_coarse,
    new_alert,
    resident_pseudonym,
    resolve,
    unlink_alert,
    unlink_due,
    verify_chain,
)

T0 = datetime(2026, 3, 1, 21, 0, tzinfo=UTC)
LAT, LON = 37.5612345, 126.9781234
EXACT = ("37.56123", "126.97812")


def _sos(resident: str = "res-abc123") -> Alert:
    place = Place(
        lat=LAT,
        lon=LON,
        district_code="11140",
        nearest_lamps=(NearestLamp("lamp-1", "11140-01-0001", 12.0, "서울특별시 중구 을지로 1"),),
        address="서울특별시 중구 을지로 1",
    )
    alert = new_alert(
        alert_id="sos-1",
        kind=AlertKind.SOS,
        place=place,
        source_id=resident,
        now=T0,
        actor=f"resident:{resident}",
    )
    alert = add_position(alert, Position(LAT + 0.0001, LON + 0.0001, T0 + timedelta(minutes=1), 5.0), T0)
    return add_position(alert, Position(LAT + 0.0002, LON + 0.0002, T0 + timedelta(days=2), 5.0), T0)


def test_coarsening_rounds_to_about_100_m_and_is_idempotent() -> None:
    assert coarsen(LAT) == 37.561 and coarsen(LON) == 126.978
    assert coarsen(coarsen(LAT)) == coarsen(LAT)
    assert is_coarse(37.561) and not is_coarse(LAT)
    # one step of 0.001 degree is ~111 m of latitude and ~88 m of longitude in Seoul
    assert abs(coarsen(LAT) - LAT) * 111_000 <= 56


def test_points_before_the_cutoff_are_coarsened_in_place_track_and_timeline_and_later_ones_kept() -> None:
    alert = _sos()
    after = coarsen_alert(alert, T0 + timedelta(days=1))
    assert (after.place.lat, after.place.lon) == (37.561, 126.978)
    assert after.place.nearest_lamps == () and after.place.address == ""
    assert after.place.district_code == "11140"
    assert is_coarse(after.track[0].lat) and after.track[0].accuracy_m is not None
    assert after.track[0].accuracy_m >= 100
    assert not is_coarse(after.track[1].lat)  # taken after the cutoff: still exact
    assert not fully_coarse(after, T0 + timedelta(days=1))
    text = json.dumps(alert_to_dict(coarsen_alert(alert, T0 + timedelta(days=3))))
    assert not any(x in text for x in EXACT)
    assert fully_coarse(coarsen_alert(alert, T0 + timedelta(days=3)), T0 + timedelta(days=3))


def test_nothing_to_coarsen_returns_the_same_alert_and_lamp_alerts_are_never_coarsened() -> None:
    alert = _sos()
    assert coarsen_alert(alert, T0 - timedelta(days=1)) is alert
    lamp = new_alert(
        alert_id="f-1", kind=AlertKind.LAMP_FAULT, place=Place(LAT, LON), source_id="lamp-1", now=T0
    )
    assert coarsen_alert(lamp, T0 + timedelta(days=99)) is lamp


def test_position_details_are_rounded_and_keep_their_type() -> None:
    assert coarsen_details({"lat": "37.561234", "lon": 126.978123, "unit": "x"}) == {
        "lat": "37.561",
        "lon": 126.978,
        "unit": "x",
    }


def test_an_open_incident_is_never_unlinked_and_a_closed_one_after_its_hold() -> None:
    alert = _sos()
    hold = timedelta(days=30)
    assert closed_at(alert) is None
    assert not unlink_due(alert, hold, T0 + timedelta(days=999))
    acked = acknowledge(alert, T0 + timedelta(minutes=2), "op")
    done = resolve(acked, T0 + timedelta(days=3), "op", outcome="safe")
    assert closed_at(done) == T0 + timedelta(days=3)
    assert not unlink_due(done, hold, T0 + timedelta(days=32))
    assert unlink_due(done, hold, T0 + timedelta(days=33))
    cancelled = cancel(alert, T0 + timedelta(hours=1), "op", CancelReason.FALSE_ALARM)
    assert unlink_due(cancelled, hold, T0 + timedelta(days=31))


def test_an_unlinked_alert_names_no_resident_and_holds_no_exact_position() -> None:
    rid = "res-abc123"
    alert = _sos(rid)
    unlinked = unlink_alert(alert, rid)
    text = json.dumps(alert_to_dict(unlinked), ensure_ascii=False)
    assert rid not in text
    assert unlinked.source_id == DELETED_SOURCE
    assert unlinked.timeline[0].actor == f"resident:{DELETED_SOURCE}"
    assert not any(x in text for x in EXACT)


def test_a_pseudonym_is_stable_per_key_and_never_the_id() -> None:
    a = resident_pseudonym(b"k1", "res-1")
    assert a == resident_pseudonym(b"k1", "res-1") and a.startswith("rp_")
    assert "res-1" not in a
    assert a != resident_pseudonym(b"k2", "res-1") and a != resident_pseudonym(b"k1", "res-2")


def _chain(n: int) -> list[AuditRow]:
    rows, prev = [], GENESIS_HASH
    for i in range(n):
        fields: dict[str, Any] = {
            "ts": T0 + timedelta(seconds=i),
            "actor": "op",
            "action": "read_track",
            "subject_kind": "resident",
            "subject_id": f"rp_{i}",
            "details": {"alert_id": f"a{i}", "points": i},
        }
        digest = audit_row_hash(prev, **fields)
        rows.append(AuditRow(id=i + 1, prev_hash=prev, row_hash=digest, **fields))
        prev = digest
    return rows


def test_an_intact_chain_verifies() -> None:
    report = verify_chain(_chain(5), anchor=GENESIS_HASH)
    assert report.ok and report.rows == 5


def test_a_changed_removed_or_inserted_row_breaks_the_chain_at_that_row() -> None:
    rows = _chain(5)
    changed = [*rows[:2], dataclasses.replace(rows[2], actor="someone else"), *rows[3:]]
    assert verify_chain(changed).broken_at == 3
    removed = [*rows[:2], *rows[3:]]
    assert verify_chain(removed).broken_at == 4
    assert "previous" in verify_chain(removed).reason
    unhashed = [*rows[:1], dataclasses.replace(rows[1], row_hash=None)]
    assert verify_chain(unhashed).broken_at == 2
    # a trail whose oldest rows retention removed still verifies from where it starts
    assert verify_chain(rows[2:]).ok
    assert not verify_chain(rows[2:], anchor=GENESIS_HASH).ok


def test_a_document_the_model_cannot_read_is_coarsened_by_its_shape() -> None:
    doc = {
        "place": {"lat": LAT, "lon": LON, "address": "을지로 1", "nearest_lamps": [{"lamp_id": "x"}]},
        "track": [{"lat": LAT, "lon": LON}],
        "timeline": [{"details": {"lat": "37.561234", "lon": "126.978123"}}],
        "kind": "sos",
    }
    text = json.dumps(coarsen_document(doc))
    assert not any(x in text for x in EXACT)
    coarse = coarsen_document(doc)
    assert coarse["place"] == {"lat": 37.561, "lon": 126.978, "address": "", "nearest_lamps": []}
    assert coarse["timeline"][0]["details"] == {"lat": "37.561", "lon": "126.978"}
