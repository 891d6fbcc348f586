"""The controller's handling of notes, without a database or a broker: a payload that is not a note
is counted and the controller goes on; a note is acted on only for a district it owns."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from broker import ConnectionParams
from controller import Controller, ControllerConfig
from store.notes import LAMP_CHANNEL, WALK_CHANNEL, LampNote, WalkMoved, WalkPositions, encode

DISTRICT = "11140"


@pytest.fixture
def controller() -> Iterator[Controller]:
    # Nothing here reaches the database: the thread's connection is opened on a first call only.
    cfg = ControllerConfig(
        mqtt=ConnectionParams("127.0.0.1"),
        database_url="postgresql://nowhere/",
        districts=(DISTRICT,),
        owner="test-notes",
    )
    ctl = Controller(cfg)
    yield ctl
    ctl._db.close()


async def test_a_payload_that_is_not_a_note_is_counted_and_the_next_one_is_still_read(
    controller: Controller,
) -> None:
    for payload in ["not json", '{"walk_id": "w", "op": "position", "lat": "x"}', '{"op": "fly"}']:
        await controller._on_notify(WALK_CHANNEL, payload)
    await controller._on_notify("sl_elsewhere", "{}")
    assert controller.stats["notify_handler_errors"] == 4
    controller.owned.add(DISTRICT)
    await controller._on_notify(WALK_CHANNEL, encode(WalkMoved("w-ok", DISTRICT, lat=None, lon=None)))
    assert controller.snapshot()["walks"] == 1
    assert controller.stats["notify_handler_errors"] == 4


async def test_notes_of_districts_another_controller_owns_are_left_alone(controller: Controller) -> None:
    controller.owned.add("11110")
    await controller._on_notify(
        WALK_CHANNEL, encode(WalkMoved("w1", DISTRICT, lat=37.56, lon=126.98, ts_ms=1))
    )
    await controller._on_notify(LAMP_CHANNEL, encode(LampNote("l1", DISTRICT, 80)))
    await controller._on_notify(WALK_CHANNEL, encode(WalkPositions(())))
    snap = controller.snapshot()
    assert snap["walks"] == 0 and snap["pending_commands"] == 0
    assert not snap["stats"].get("notify_handler_errors")
