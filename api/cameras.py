"""The cameras near an alert (issue 21): ``GET /v1/alerts/{alert_id}/cameras``.

The camera register (``cameras`` table, written by ``streetlight provision --cameras``) is held in
memory as a `geo.CameraIndex` (``api.places.CameraDirectory``), rebuilt when the table changed
(checked at most every ``camera_refresh_s``); each request asks the index for the cameras within
``camera_radius_m`` of the alert's latest position (an SOS's newest track point, else its place),
so a new position of the track gives the cameras there. Reading it reads the resident's position:
audited.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from alerts import alert_from_dict
from api.config import CameraStreams
from api.schemas import AlertCamerasOut, CameraOut, TrackPointOut
from api.state import CurrentOperator, Db, State, may_see, resident_subject
from geo import CameraHit, parse_facing
from store.alerts import alert_track, get_alert
from store.operators import log_access
from store.types import Row

router = APIRouter(tags=["operators"])


def _camera(streams: CameraStreams | None, row: Row, hit: CameraHit) -> CameraOut:
    return CameraOut(
        camera_id=row["camera_id"],
        management_no=row["management_no"],
        distance_m=round(hit.distance_m, 1),
        bearing_deg=round(hit.bearing_deg, 1),
        facing=row["facing"],
        facing_known=parse_facing(row["facing"]) is not None,
        looks_towards=hit.looks_towards,
        lat=row["lat"],
        lon=row["lon"],
        organisation=row["organisation"],
        address=row["road_address"] or row["lot_address"],
        purpose=row["purpose"],
        camera_count=row["camera_count"],
        phone=row["phone"],
        stream_url=streams.link(row["camera_id"], row["management_no"]) if streams else None,
    )


@router.get("/v1/alerts/{alert_id}/cameras", summary="Cameras near the alert, nearest first")
def alert_cameras(alert_id: str, op: CurrentOperator, state: State, conn: Db) -> AlertCamerasOut:
    """The cameras within the configured radius of the alert's latest position (an SOS's newest
    track point), nearest first, with distance, whether they look towards the resident (null:
    the register does not say which way they face) and a stream link. Operators who see the
    alert; reading it is audited like the track."""
    row = get_alert(conn, alert_id)
    if row is None or not may_see(op, list(row["district_codes"]), str(row["kind"])):
        raise HTTPException(404, f"alert {alert_id!r} not found in your districts")
    track = alert_track(conn, alert_id)
    latest = track[-1] if track else None
    if latest is not None:
        lat, lon = float(latest["lat"]), float(latest["lon"])
    else:
        place = alert_from_dict(row["data"]).place
        lat, lon = place.lat, place.lon
    snapshot = state.cameras.current(conn, state.config.camera_refresh_s)
    radius = state.config.camera_radius_m
    try:
        hits = snapshot.index.near(lat, lon, radius)
    except ValueError:  # a place outside Korea (e.g. an alert raised at the sea): no cameras there
        hits = ()
    cameras = [_camera(state.config.camera_streams, snapshot.rows[h.camera_id], h) for h in hits]
    if row["resident_id"] is not None:
        log_access(
            conn,
            actor=op.actor,
            action="read_cameras",
            subject_kind="resident",
            subject_id=resident_subject(state, str(row["resident_id"])),
            details={"alert_id": alert_id, "cameras": len(cameras)},
        )
    position = (
        TrackPointOut(
            ts=latest["ts"].isoformat(),
            lat=latest["lat"],
            lon=latest["lon"],
            accuracy_m=latest["accuracy_m"],
            coarsened=latest["coarsened"],
        )
        if latest is not None
        else None
    )
    return AlertCamerasOut(
        alert_id=alert_id, position=position, lat=lat, lon=lon, radius_m=radius, cameras=cameras
    )
