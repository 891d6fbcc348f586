"""EPSG:5186 (Korea 2000 / Central Belt 2010) in numpy, both directions, without pyproj.

Transverse Mercator on GRS80 with the Krüger series in the third flattening ``n`` carried to
``n**4``; that truncation is good to well under a millimetre within a few hundred kilometres
of the central meridian (the test compares with pyproj over Seoul: < 0.05 m asked, ~1e-6 m
measured). Axes are returned as (easting_m, northing_m), like pyproj with ``always_xy``.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

# GRS80 ellipsoid (EPSG:7019).
_A_M = 6_378_137.0
_F = 1.0 / 298.257222101

# EPSG:5186 projection parameters (EPSG registry, "Korea 2000 / Central Belt 2010").
_LAT0_DEG = 38.0
_LON0_DEG = 127.0
_K0 = 1.0
_FALSE_EASTING_M = 200_000.0
_FALSE_NORTHING_M = 600_000.0

_N = _F / (2.0 - _F)  # third flattening
_E = 2.0 * math.sqrt(_N) / (1.0 + _N)  # first eccentricity, written in n
# Rectifying radius (Krüger 1912, to n**4).
_RECT_A_M = _A_M / (1.0 + _N) * (1.0 + _N**2 / 4.0 + _N**4 / 64.0)

# Krüger series coefficients to n**4 (Krüger 1912; Karney 2011, "Transverse Mercator with an
# accuracy of a few nanometers", eqs. 35 and 36).
_ALPHA = (
    _N / 2.0 - 2.0 * _N**2 / 3.0 + 5.0 * _N**3 / 16.0 + 41.0 * _N**4 / 180.0,
    13.0 * _N**2 / 48.0 - 3.0 * _N**3 / 5.0 + 557.0 * _N**4 / 1440.0,
    61.0 * _N**3 / 240.0 - 103.0 * _N**4 / 140.0,
    49561.0 * _N**4 / 161280.0,
)
_BETA = (
    _N / 2.0 - 2.0 * _N**2 / 3.0 + 37.0 * _N**3 / 96.0 - _N**4 / 360.0,
    _N**2 / 48.0 + _N**3 / 15.0 - 437.0 * _N**4 / 1440.0,
    17.0 * _N**3 / 480.0 - 37.0 * _N**4 / 840.0,
    4397.0 * _N**4 / 161280.0,
)
# Conformal latitude -> geodetic latitude (same sources).
_DELTA = (
    2.0 * _N - 2.0 * _N**2 / 3.0 - 2.0 * _N**3 + 116.0 * _N**4 / 45.0,
    7.0 * _N**2 / 3.0 - 8.0 * _N**3 / 5.0 - 227.0 * _N**4 / 45.0,
    56.0 * _N**3 / 15.0 - 136.0 * _N**4 / 35.0,
    4279.0 * _N**4 / 630.0,
)

Float64Array = NDArray[np.float64]


def _conformal_tan(lat_rad: Float64Array) -> Float64Array:
    sin_lat = np.sin(lat_rad)
    return np.asarray(np.sinh(np.arctanh(sin_lat) - _E * np.arctanh(_E * sin_lat)), dtype=np.float64)


def _forward_xi_eta(lat_rad: Float64Array, dlon_rad: Float64Array) -> tuple[Float64Array, Float64Array]:
    t = _conformal_tan(lat_rad)
    xi_p = np.arctan2(t, np.cos(dlon_rad))
    eta_p = np.arctanh(np.sin(dlon_rad) / np.sqrt(1.0 + t * t))
    xi = xi_p.copy()
    eta = eta_p.copy()
    for j, alpha in enumerate(_ALPHA, start=1):
        xi += alpha * np.sin(2 * j * xi_p) * np.cosh(2 * j * eta_p)
        eta += alpha * np.cos(2 * j * xi_p) * np.sinh(2 * j * eta_p)
    return xi, eta


# Rectifying "xi" of the latitude of origin, so northings count from 38° N.
_XI0 = float(
    _forward_xi_eta(np.array([math.radians(_LAT0_DEG)]), np.zeros(1))[0][0],
)


def to_metric(lat_deg: ArrayLike, lon_deg: ArrayLike) -> tuple[Float64Array, Float64Array]:
    """Project latitude/longitude (degrees, GRS80/WGS84) to EPSG:5186 (easting_m, northing_m)."""
    lat_rad = np.radians(np.asarray(lat_deg, dtype=np.float64))
    dlon_rad = np.radians(np.asarray(lon_deg, dtype=np.float64) - _LON0_DEG)
    xi, eta = _forward_xi_eta(lat_rad, dlon_rad)
    easting_m = _FALSE_EASTING_M + _K0 * _RECT_A_M * eta
    northing_m = _FALSE_NORTHING_M + _K0 * _RECT_A_M * (xi - _XI0)
    return easting_m, northing_m


def to_metric_point(lat_deg: float, lon_deg: float) -> tuple[float, float]:
    """``to_metric`` for one point with ``math`` instead of numpy: the same series, about 5x
    faster on a scalar (numpy's per-call overhead dominates one point). The caller checks the
    input (no NaN, in range)."""
    lat_rad = math.radians(lat_deg)
    dlon_rad = math.radians(lon_deg - _LON0_DEG)
    sin_lat = math.sin(lat_rad)
    t = math.sinh(math.atanh(sin_lat) - _E * math.atanh(_E * sin_lat))
    xi_p = math.atan2(t, math.cos(dlon_rad))
    eta_p = math.atanh(math.sin(dlon_rad) / math.sqrt(1.0 + t * t))
    xi, eta = xi_p, eta_p
    for j, alpha in enumerate(_ALPHA, start=1):
        xi += alpha * math.sin(2 * j * xi_p) * math.cosh(2 * j * eta_p)
        eta += alpha * math.cos(2 * j * xi_p) * math.sinh(2 * j * eta_p)
    return (
        _FALSE_EASTING_M + _K0 * _RECT_A_M * eta,
        _FALSE_NORTHING_M + _K0 * _RECT_A_M * (xi - _XI0),
    )


def to_latlon(easting_m: ArrayLike, northing_m: ArrayLike) -> tuple[Float64Array, Float64Array]:
    """Unproject EPSG:5186 (easting_m, northing_m) to (lat_deg, lon_deg)."""
    eta = (np.asarray(easting_m, dtype=np.float64) - _FALSE_EASTING_M) / (_K0 * _RECT_A_M)
    xi = (np.asarray(northing_m, dtype=np.float64) - _FALSE_NORTHING_M) / (_K0 * _RECT_A_M) + _XI0
    xi_p = xi.copy()
    eta_p = eta.copy()
    for j, beta in enumerate(_BETA, start=1):
        xi_p -= beta * np.sin(2 * j * xi) * np.cosh(2 * j * eta)
        eta_p -= beta * np.cos(2 * j * xi) * np.sinh(2 * j * eta)
    chi = np.arcsin(np.sin(xi_p) / np.cosh(eta_p))  # conformal latitude
    lat_rad = chi.copy()
    for j, delta in enumerate(_DELTA, start=1):
        lat_rad += delta * np.sin(2 * j * chi)
    dlon_rad = np.arctan2(np.sinh(eta_p), np.cos(xi_p))
    return np.degrees(lat_rad), np.degrees(dlon_rad) + _LON0_DEG
