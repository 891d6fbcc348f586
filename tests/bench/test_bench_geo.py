"""``streetlight bench geo`` runs and its fast paths agree with the forms they replaced."""

from __future__ import annotations

import argparse

from devkit.bench import geo


def test_bench_geo_reports_both_forms_and_no_disagreement() -> None:
    parser = argparse.ArgumentParser()
    geo.add_arguments(parser)
    out = geo.run(parser.parse_args(["--queries", "300", "--lamps", "600", "--cameras", "5000"]))
    assert out["bench"] == "geo" and out["queries"] == 300
    assert out["mismatches"] == 0 and out["district_mismatches"] == 0 and out["ok"] is True
    assert out["cameras"] == 5000 and out["cameras_near_us"] > 0 and out["cameras_build_s"] > 0
    for key in ("walker_us", "walker_tree_us", "quick_district_us", "locate_us", "to_metric_point_us"):
        assert out[key] > 0
    assert 0.5 < out["quick_district_answered"] <= 1.0  # walkers near lamps are mostly inside a district
