"""Synthetic placement: stable for a seed, inside the zone polygons, street-like spacing, importable."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import shapely

from broker import is_valid_device_id
from broker.security import Registry, load_device_file
from firmware_sim.placement import (
    MAX_SPACING_M,
    MIN_SPACING_M,
    export_geojson,
    place_lamps,
    select_zones,
    zone_quotas,
)
from geo import Gazetteer


@pytest.fixture(scope="module")
def gazetteer() -> Gazetteer:
    return Gazetteer.load()


def test_the_same_seed_gives_the_same_lamps_and_another_seed_moves_them(gazetteer: Gazetteer) -> None:
    a = place_lamps(300, seed=7, gazetteer=gazetteer)
    b = place_lamps(300, seed=7, gazetteer=gazetteer)
    c = place_lamps(300, seed=8, gazetteer=gazetteer)
    assert a.lamps == b.lamps
    assert [lamp.lamp_id for lamp in a.lamps] == [lamp.lamp_id for lamp in c.lamps]
    assert [lamp.lat_deg for lamp in a.lamps] != [lamp.lat_deg for lamp in c.lamps]


def test_default_fleet_is_the_3500_lamps_of_the_2022_zones_inside_their_dongs(gazetteer: Gazetteer) -> None:
    placement = place_lamps(gazetteer=gazetteer)
    assert len(placement) == 3500
    assert len({lamp.dong_code for lamp in placement.lamps}) == 14
    for lamp in placement.lamps[::25]:
        dong = gazetteer.dong(lamp.dong_code)
        assert dong.polygon_m.contains(shapely.Point(lamp.easting_m, lamp.northing_m))
        assert gazetteer.locate(lamp.lat_deg, lamp.lon_deg).dong_code == lamp.dong_code


def test_lamps_stand_20_to_35_m_from_their_nearest_neighbour(gazetteer: Gazetteer) -> None:
    placement = place_lamps(1500, gazetteer=gazetteer)
    points = shapely.points(np.array([[lamp.easting_m, lamp.northing_m] for lamp in placement.lamps]))
    _, distances = shapely.STRtree(points).query_nearest(points, exclusive=True, return_distance=True)
    assert distances.min() >= MIN_SPACING_M - 1e-6
    assert distances.max() <= MAX_SPACING_M + 1e-6


def test_ids_are_valid_device_ids_and_lamp_numbers_read_district_zone_sequence(gazetteer: Gazetteer) -> None:
    placement = place_lamps(40, zones=["연남동"], id_prefix="t1-", gazetteer=gazetteer)
    assert {lamp.dong_code for lamp in placement.lamps} == {"1114071"}
    for lamp in placement.lamps:
        assert is_valid_device_id(lamp.lamp_id) and is_valid_device_id(lamp.blinker_id)
        assert re.fullmatch(r"11140-03-\d{4}", lamp.lamp_number)
    assert placement.lamps[0].lamp_number == "11140-03-0001"
    assert len({lamp.lamp_id for lamp in placement.lamps}) == 40


def test_a_fleet_larger_than_the_zones_spills_into_the_same_districts() -> None:
    placement = place_lamps(25_000)
    assert len(placement) == 25_000
    zone_districts = {z.district_code for z in select_zones()[0]}
    assert {lamp.district_code for lamp in placement.lamps} <= zone_districts


def test_quotas_split_exactly_in_proportion() -> None:
    zones, weights = select_zones()
    quotas = zone_quotas(zones, 3500, weights)
    assert sum(quotas) == 3500
    assert set(quotas[:8]) <= {236, 237} and set(quotas[8:]) <= {267, 268}


def test_unknown_zone_selector_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="batch1"):
        select_zones(["nowhere"])


def test_export_round_trips_through_provisioning(tmp_path: Path, gazetteer: Gazetteer) -> None:
    placement = place_lamps(20, seed=3, gazetteer=gazetteer)
    path = tmp_path / "lamps.geojson"
    export_geojson(placement, path)
    specs = load_device_file(path)
    assert len(specs) == 40
    by_id = {spec.id: spec for spec in specs}
    for lamp in placement.lamps:
        spec = by_id[lamp.lamp_id]
        assert (spec.kind, spec.district_code, spec.dong_code) == ("lamp", lamp.district_code, lamp.dong_code)
        assert (spec.lamp_number, spec.paired) == (lamp.lamp_number, lamp.blinker_id)
        assert (spec.lat, spec.lon) == (lamp.lat_deg, lamp.lon_deg)
        assert by_id[lamp.blinker_id].kind == "blinker"
    report = Registry().provision(specs[:4])
    assert {spec.id for spec in specs[:4]} <= set(report.secrets)
