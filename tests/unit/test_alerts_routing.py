"""Routing: every alert reaches at least one control centre, and border points reach both sides."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alerts import CITY_CENTRE, InvalidAlertData, NearestLamp, Place, alerts_topic, responsible_centre, route

TOPIC = re.compile(r"^cc/v1/[0-9]{5}/alerts$")
DISTRICT_CODES = [f"11{n:03d}" for n in range(110, 750, 10)]

codes = st.one_of(
    st.sampled_from(DISTRICT_CODES),
    st.sampled_from(["", CITY_CENTRE, "1114", "abcde", "11140/", "+", "#"]),
    st.text(max_size=8),
)
places = st.builds(
    Place,
    lat=st.floats(-90, 90),
    lon=st.floats(-180, 180),
    district_code=codes,
    district_name=st.text(max_size=5),
    dong_code=st.text(max_size=10),
    dong_name=st.text(max_size=5),
    inside=st.booleans(),
    neighbours=st.lists(codes, max_size=4).map(tuple),
    nearest_lamps=st.just((NearestLamp("l1", "11020-03-0042", 3.0),)),
)


@given(places)
def test_no_place_is_ever_unrouted_and_every_centre_has_a_valid_topic(place: Place) -> None:
    centres = route(place)
    assert centres
    assert len(set(centres)) == len(centres)
    assert all(TOPIC.match(alerts_topic(centre)) for centre in centres)


@given(st.sampled_from(DISTRICT_CODES), st.lists(st.sampled_from(DISTRICT_CODES), min_size=1, max_size=3))
def test_a_point_near_a_border_goes_to_its_own_district_first_and_to_every_neighbour(
    own: str, neighbours: list[str]
) -> None:
    place = Place(lat=37.55, lon=126.99, district_code=own, neighbours=tuple(neighbours))
    centres = route(place)
    assert centres[0] == own
    assert set(centres) == {own, *neighbours}
    assert CITY_CENTRE not in centres


@given(places)
def test_a_point_outside_the_service_area_always_reaches_the_city_centre(place: Place) -> None:
    if not place.inside:
        assert route(place)[0] == CITY_CENTRE


def test_a_point_inside_one_district_goes_to_that_district_only() -> None:
    assert route(Place(lat=37.5663, lon=126.9779, district_code="11140")) == ("11140",)


def test_a_point_snapped_from_outside_reaches_the_city_centre_and_the_snapped_district() -> None:
    assert route(Place(lat=37.43, lon=127.0, district_code="11650", inside=False)) == (CITY_CENTRE, "11650")


def test_an_inside_point_without_a_usable_district_falls_back_to_the_city_centre() -> None:
    assert route(Place(lat=37.5, lon=127.0, district_code="")) == (CITY_CENTRE,)


def test_the_city_centre_has_a_topic_like_any_district() -> None:
    assert alerts_topic(CITY_CENTRE) == "cc/v1/11000/alerts"
    assert alerts_topic("11230") == "cc/v1/11230/alerts"


@pytest.mark.parametrize("bad", ["", "1123", "11230/x", "11230\n", "+", "#", "１１２３０"])
def test_a_topic_is_refused_for_anything_but_a_five_digit_code(bad: str) -> None:
    with pytest.raises(InvalidAlertData):
        alerts_topic(bad)


def test_the_alerts_own_district_is_responsible_and_the_city_only_when_alone() -> None:
    assert responsible_centre(["11140", "11110"]) == "11140"
    assert responsible_centre(["11000", "11140"]) == "11140"
    assert responsible_centre(["11000"]) == "11000"
    assert responsible_centre([]) == CITY_CENTRE  # a wake-up that names no centre


@given(places)
def test_exactly_one_of_an_alerts_centres_is_responsible_and_it_is_its_own_district_if_any(
    place: Place,
) -> None:
    centres = route(place)
    responsible = responsible_centre(centres)
    assert responsible in centres
    districts = [c for c in centres if c != CITY_CENTRE]
    assert responsible == (districts[0] if districts else CITY_CENTRE)
