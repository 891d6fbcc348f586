"""Walkers move along the lamp grid at walking speed, with noisy GPS and a hashed beacon token."""

from __future__ import annotations

import math
import random

import pytest

from firmware_sim.placement import place_lamps
from firmware_sim.residents import StreetGraph, Walker
from geo import distance_m


@pytest.fixture(scope="module")
def graph() -> StreetGraph:
    return StreetGraph(place_lamps(200, zones=["1"]))


def test_every_lamp_has_a_street_neighbour(graph: StreetGraph) -> None:
    assert all(graph.neighbours[i] for i in range(len(graph)))


def test_a_walker_walks_1_2_to_1_6_m_per_s_and_stays_on_the_streets(graph: StreetGraph) -> None:
    walker = Walker.start(1, graph, random.Random(5))
    assert 1.2 <= walker.speed_mps <= 1.6
    for _ in range(60):
        walker.step(1.0)
        nearest = float(graph.distances_from(walker.x, walker.y).min())
        assert nearest <= 36.0 / 2 + 1
    assert walker.walked_m == pytest.approx(60 * walker.speed_mps, rel=1e-6)


def test_gps_fixes_scatter_within_a_few_accuracies_and_report_heading_and_speed(graph: StreetGraph) -> None:
    walker = Walker.start(1, graph, random.Random(9))
    lat, lon = walker.true_latlon()
    errors = []
    for _ in range(200):
        fix = walker.gps_fix()
        errors.append(distance_m(lat, lon, fix.lat, fix.lon))
        assert 5.0 <= fix.accuracy_m <= 15.0 and 0 <= fix.heading_deg < 360
    assert max(errors) < 4 * walker.gps_error_m
    body = walker.gps_fix().as_json()
    assert set(body) == {"lat", "lon", "accuracy_m", "heading_deg", "speed_mps"}
    assert all(math.isfinite(v) for v in body.values())


def test_the_beacon_token_is_reported_only_as_a_hex_hash(graph: StreetGraph) -> None:
    walker = Walker.start(1, graph, random.Random(1))
    assert walker.token not in walker.token_hash
    assert len(walker.token_hash) == 32 and int(walker.token_hash, 16) >= 0
