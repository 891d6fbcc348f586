"""The notes between the API and the controller: typed, round-tripped, and refused when malformed."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from store.notes import (
    ALERT_CHANNEL,
    CHANNELS,
    LAMP_CHANNEL,
    POSITIONS_HEAD,
    POSITIONS_TAIL,
    WALK_CHANNEL,
    AlertNote,
    BadNote,
    LampNote,
    Note,
    PositionNote,
    WalkEnded,
    WalkMoved,
    WalkPositions,
    WalkStarted,
    channel_of,
    decode,
    encode,
    encode_position,
)

ids = st.text(min_size=1, max_size=20)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
maybe = st.none() | finite
lamps = st.none() | st.lists(ids, max_size=5).map(tuple)
districts = st.none() | st.sampled_from(["11140", "11110", "11000"])
positions = st.builds(
    PositionNote, ids, st.integers(0, 2**53), finite, finite, maybe, maybe, maybe, districts, lamps
)
walk_fields = {
    "walk_id": ids,
    "district": districts,
    "lat": maybe,
    "lon": maybe,
    "accuracy_m": maybe,
    "heading_deg": maybe,
    "speed_mps": maybe,
    "ts_ms": st.none() | st.integers(0, 2**53),
    "lamps": lamps,
}
notes: st.SearchStrategy[Note] = st.one_of(
    st.builds(
        AlertNote,
        ids,
        st.none() | ids,
        st.none() | ids,
        st.lists(ids, max_size=3).map(tuple),
        st.none() | ids,
    ),
    st.builds(WalkStarted, **walk_fields),
    st.builds(WalkMoved, **walk_fields),
    st.builds(WalkEnded, **walk_fields),
    st.builds(WalkPositions, st.lists(positions, max_size=5).map(tuple)),
    st.builds(LampNote, ids, ids, st.integers(0, 100), st.integers(0, 86_400), ids, st.just("set_level")),
    st.builds(LampNote, ids, ids, st.none(), st.integers(0, 86_400), ids, st.just("clear")),
)


@given(notes)
def test_every_note_reads_back_as_itself_on_its_channel(note: Note) -> None:
    assert decode(channel_of(note), encode(note)) == note
    assert channel_of(note) in CHANNELS


@given(st.lists(positions, max_size=60))
def test_a_batch_framed_as_the_database_frames_it_reads_back_as_its_positions(
    batch: list[PositionNote],
) -> None:
    payload = POSITIONS_HEAD + ",".join(encode_position(p).decode() for p in batch) + POSITIONS_TAIL
    assert decode(WALK_CHANNEL, payload) == WalkPositions(tuple(batch))


def test_the_payloads_keep_the_documented_keys() -> None:
    """The console's stream spreads a lamp note's keys into its messages; docs/api.md lists them."""
    assert json.loads(encode(LampNote("l1", "11140", 80, 60, "op:kim", cmd_id="op.1"))) == {
        "device_id": "l1", "district": "11140", "level": 80, "ttl_s": 60, "source": "op:kim",
        "action": "set_level", "cmd_id": "op.1",
    }  # fmt: skip
    assert json.loads(encode(WalkEnded("w1", "11140", ts_ms=5)))["op"] == "end"
    assert json.loads(encode(AlertNote("a1", districts=("11140",)))) == {
        "alert_id": "a1", "kind": None, "state": None, "districts": ["11140"], "action": None,
    }  # fmt: skip
    assert POSITIONS_HEAD == '{"op":"positions","positions":[' and POSITIONS_TAIL == "]}"


@pytest.mark.parametrize(
    ("channel", "payload"),
    [
        (WALK_CHANNEL, "not json"),
        (WALK_CHANNEL, '{"walk_id": "w", "op": "position", "lat": "x", "lon": 127.0}'),
        (WALK_CHANNEL, '{"walk_id": "w", "op": "run"}'),
        (WALK_CHANNEL, '{"walk_id": "w"}'),
        (WALK_CHANNEL, '{"op": "positions", "positions": 3}'),
        (WALK_CHANNEL, "[1, 2]"),
        (ALERT_CHANNEL, '{"districts": ["11140"]}'),
        (ALERT_CHANNEL, '{"alert_id": 7}'),
        (LAMP_CHANNEL, '{"device_id": "l1", "district": "11140", "action": "set_level"}'),
        (LAMP_CHANNEL, '{"device_id": "l1", "district": "11140", "action": "blink", "level": 3}'),
        ("sl_other", '{"alert_id": "a"}'),
    ],
)
def test_a_payload_that_is_not_a_note_of_its_channel_is_refused(channel: str, payload: str) -> None:
    with pytest.raises(BadNote):
        decode(channel, payload)


def test_unreadable_entries_of_a_batch_are_left_out_and_counted_and_the_rest_is_kept() -> None:
    good = PositionNote("w1", 1, 37.56, 126.98, 5.0, None, None, "11140", ("l1",))
    payload = (
        POSITIONS_HEAD + f'{encode_position(good).decode()},["w2","x"],7,["w3",2,37.5,127.0]' + POSITIONS_TAIL
    )
    note = decode(WALK_CHANNEL, payload)
    assert isinstance(note, WalkPositions)
    assert note.positions == (good, PositionNote("w3", 2, 37.5, 127.0))
    assert note.unreadable == 2


def test_an_override_to_set_a_level_needs_the_level() -> None:
    with pytest.raises(ValueError, match="level"):
        LampNote("l1", "11140", None, action="set_level")
    assert LampNote("l1", "11140", None, action="clear").level is None


def test_an_alert_note_with_its_id_alone_still_reads() -> None:
    """Burst marking wakes the console with the id alone (store/bursts.py)."""
    assert decode(ALERT_CHANNEL, '{"alert_id": "a1"}') == AlertNote("a1")
