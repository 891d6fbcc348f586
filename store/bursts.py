"""SOS bursts from one source: the SQL that groups and flags them (never drops them).

Each new SOS alert carries a `source_key` (the API's HMAC of the client address: pseudonymous, and
the same across API instances). When other residents' SOS alerts came from the same source within
the window, the new one joins their group (`burst_group`: the id of the first alert of the group)
and every member is flagged `suspected_burst`, the first too: arrival order ranks nothing, so an
attacker's throw-away SOS sent first cannot put itself above a real resident's later SOS from the
same address. SOS from other sources stay unflagged, above the group.
"""

from __future__ import annotations

from dataclasses import dataclass

from store.notes import AlertNote, notify
from store.types import Conn


@dataclass(frozen=True, slots=True)
class BurstMark:
    """What `mark_sos_source` decided for one alert."""

    burst_group: str | None
    suspected_burst: bool
    flagged: int = 0  # alerts newly flagged by this one: 2 when it starts a group, else 1 or 0


def mark_sos_source(
    conn: Conn, alert_id: str, *, source_key: str, resident_id: str, window_s: float
) -> BurstMark:
    """Record the source of a new SOS alert and group it with the other residents' SOS from the same
    source within `window_s`. Call inside the transaction that saved the alert."""
    # Two SOS from one source racing on two API instances: the second waits for the first's commit.
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 7))", ("sos-source:" + source_key,))
    first = conn.execute(
        "SELECT alert_id, burst_group FROM alerts WHERE kind = 'sos' AND source_key = %s "
        "AND created_at > now() - make_interval(secs => %s) AND alert_id <> %s "
        "AND resident_id IS DISTINCT FROM %s ORDER BY created_at, alert_id LIMIT 1",
        (source_key, window_s, alert_id, resident_id),
    ).fetchone()
    if first is None:
        conn.execute("UPDATE alerts SET source_key = %s WHERE alert_id = %s", (source_key, alert_id))
        return BurstMark(None, False)
    group = str(first[1] or first[0])
    flagged = 1
    if first[1] is None:  # the group starts now: the first alert joins it, flagged like the rest
        conn.execute(
            "UPDATE alerts SET burst_group = %s, suspected_burst = true WHERE alert_id = %s",
            (group, first[0]),
        )
        notify(conn, AlertNote(alert_id=str(first[0])))
        flagged = 2
    conn.execute(
        "UPDATE alerts SET source_key = %s, burst_group = %s, suspected_burst = true WHERE alert_id = %s",
        (source_key, group, alert_id),
    )
    return BurstMark(group, True, flagged)
