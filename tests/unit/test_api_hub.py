"""The stream hub reads the notes it forwards with `store.notes.decode`, without a database: a
payload that is not a note is counted and skipped (the hub keeps listening); a lamp note reaches
the consoles of its district as the note's fields."""

from __future__ import annotations

from typing import Any

import pytest

from api.hub import StreamHub
from api.metrics import ApiMetrics
from store.notes import ALERT_CHANNEL, LAMP_CHANNEL, LampNote, encode


def _bad_notes(metrics: ApiMetrics) -> float:
    value = metrics.registry.get_sample_value("streetlight_api_stream_bad_notes_total")
    return value or 0.0


@pytest.fixture
def hub() -> StreamHub:
    return StreamHub("postgresql://nowhere/", ApiMetrics(), queue_size=10)


@pytest.mark.parametrize(
    ("channel", "payload"),
    [
        (LAMP_CHANNEL, "{not json"),
        (LAMP_CHANNEL, '{"device_id": "l1"}'),  # no district
        (LAMP_CHANNEL, "[1, 2]"),
        (ALERT_CHANNEL, '{"kind": "sos"}'),  # no alert id
        (ALERT_CHANNEL, "null"),
    ],
)
async def test_a_payload_that_is_not_a_note_is_counted_and_skipped(
    hub: StreamHub, channel: str, payload: str
) -> None:
    console = hub.subscribe(None, None)
    reader: Any = None  # never used: nothing is read for a note that cannot be read
    await hub._dispatch(reader, channel, payload)
    assert _bad_notes(hub._metrics) == 1
    assert console.queue.empty()


async def test_a_lamp_note_reaches_the_consoles_of_its_district_only(hub: StreamHub) -> None:
    here = hub.subscribe(["11140"], None)
    elsewhere = hub.subscribe(["11110"], None)
    note = LampNote("l1", "11140", 80, cmd_id="op.1")
    await hub._dispatch(None, LAMP_CHANNEL, encode(note))  # type: ignore[arg-type]
    assert here.queue.get_nowait() == {
        "type": "lamp",
        "device_id": "l1",
        "district": "11140",
        "level": 80,
        "ttl_s": 3600,
        "source": "operator",
        "action": "set_level",
        "cmd_id": "op.1",
    }
    assert elsewhere.queue.empty()
    assert _bad_notes(hub._metrics) == 0
