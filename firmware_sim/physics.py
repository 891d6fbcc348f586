"""Physical models behind the simulated telemetry: LED driver power, mains, heat, daylight, radio.

Every function is pure; randomness comes in as a seeded `random.Random`, so the same seed
gives the same readings. The models are deliberately simple but keep the relations a
backend can check: power follows level, P = V * I * PF, the driver is warmer when it works
harder, ambient light follows the sun, and a beacon's signal falls with distance.
"""

from __future__ import annotations

import math
import random
from datetime import datetime

from geo.solar import sun_elevation_deg

from .schedule import KST

__all__ = [
    "BEACON_DETECT_THRESHOLD_DBM",
    "MAINS_NOMINAL_V",
    "STANDBY_POWER_W",
    "ambient_lux",
    "ambient_temp_c",
    "beacon_detect_range_m",
    "driver_temp_c",
    "lamp_power_w",
    "mains_voltage_v",
    "power_factor",
    "rssi_at_distance_dbm",
    "supply_current_a",
]

# Korean low-voltage mains: 220 V single phase, +/- 13 V allowed (Enforcement Rule of the
# Electricity Business Act, art. 18, table 3).
MAINS_NOMINAL_V = 220.0
MAINS_TOLERANCE_V = 13.0
# Short-term noise of the reading; a few volts is typical at the end of a street feeder.
MAINS_NOISE_SIGMA_V = 1.5
# Control node + driver no-load draw with the LED off; smart-lighting nodes and dimmable
# drivers are typically specified at 0.3-1 W standby.
STANDBY_POWER_W = 0.5
# Driver efficiency is best near full load (about 90 % for a 40 W class LED driver,
# datasheet typical) and falls when dimmed deep; the linear fall-off is an approximation.
DRIVER_EFFICIENCY_FULL = 0.90
DRIVER_EFFICIENCY_LOSS_AT_MIN = 0.15
# Active PFC drivers reach PF >= 0.95 at full load (IEC 61000-3-2 class C territory) and
# lose it at light load; at standby the node is a small capacitive load.
POWER_FACTOR_FULL = 0.96
POWER_FACTOR_STANDBY = 0.5
# Driver case temperature rise per watt dissipated in a closed luminaire head; chosen so a
# 40 W lamp runs about 25 K above ambient, a usual figure for a pole-top LED luminaire.
DRIVER_THERMAL_RESISTANCE_K_PER_W = 0.6
# Seoul monthly mean air temperature (deg C), KMA 1991-2020 climate normals, rounded.
SEOUL_MONTHLY_MEAN_C = (-2.0, 0.7, 6.1, 12.6, 18.2, 22.7, 25.3, 26.1, 21.6, 14.8, 7.2, 0.4)
# Half the typical daily range; warmest about 15:00, coolest before dawn.
SEOUL_DIURNAL_HALF_RANGE_K = 4.0
# Extraterrestrial solar illuminance (lux) and a clear-sky extinction coefficient for the
# simple Beer-Lambert model E = E0 * sin(h) * exp(-c / sin(h)) (direct + diffuse, clear sky).
SOLAR_ILLUMINANCE_LUX = 128_000.0
CLEAR_SKY_EXTINCTION = 0.21
# Twilight illuminance on the ground: about 400 lx at sunrise/sunset and 3.4 lx at the end
# of civil twilight (sun at -6 deg), decaying roughly exponentially in between (USNO).
HORIZON_LUX = 400.0
CIVIL_DUSK_LUX = 3.4
# Night floor: urban sky glow over Seoul, no moon.
NIGHT_FLOOR_LUX = 0.05
# BLE beacon link budget: -59 dBm measured at 1 m is the iBeacon default calibration; a
# path-loss exponent of 2.5 fits an alley with walls; a receiver sensitivity of -97 dBm
# then gives a detect range of about 33 m.
RSSI_AT_1M_DBM = -59.0
PATH_LOSS_EXPONENT = 2.5
BEACON_DETECT_THRESHOLD_DBM = -97.0


def _clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


def _driver_efficiency(fraction: float) -> float:
    return DRIVER_EFFICIENCY_FULL - DRIVER_EFFICIENCY_LOSS_AT_MIN * (1.0 - fraction)


def lamp_power_w(level: int, rated_power_w: float) -> float:
    """Input power (W) of an LED lamp at `level` percent; `rated_power_w` is its draw at 100 %."""
    fraction = _clamp(level / 100.0, 0.0, 1.0)
    if fraction == 0.0:
        return STANDBY_POWER_W
    led_full_w = (rated_power_w - STANDBY_POWER_W) * DRIVER_EFFICIENCY_FULL
    return STANDBY_POWER_W + led_full_w * fraction / _driver_efficiency(fraction)


def power_factor(power_w: float, rated_power_w: float) -> float:
    """Power factor of the lamp's supply current at `power_w` input."""
    load = _clamp(power_w / rated_power_w, 0.0, 1.0) if rated_power_w > 0 else 0.0
    return POWER_FACTOR_STANDBY + (POWER_FACTOR_FULL - POWER_FACTOR_STANDBY) * math.sqrt(load)


def supply_current_a(power_w: float, voltage_v: float, rated_power_w: float) -> float:
    """RMS supply current (A) for real power `power_w` at `voltage_v`: I = P / (V * PF)."""
    if voltage_v <= 0.0:
        return 0.0
    return power_w / (voltage_v * power_factor(power_w, rated_power_w))


def mains_voltage_v(rng: random.Random) -> float:
    """One reading of the mains voltage: 220 V with noise, within the legal tolerance."""
    reading = rng.gauss(MAINS_NOMINAL_V, MAINS_NOISE_SIGMA_V)
    return _clamp(reading, MAINS_NOMINAL_V - MAINS_TOLERANCE_V, MAINS_NOMINAL_V + MAINS_TOLERANCE_V)


def ambient_temp_c(when: datetime) -> float:
    """Typical Seoul air temperature (deg C) at an instant: monthly normal plus a daily cycle."""
    local = when.astimezone(KST)
    hour = local.hour + local.minute / 60.0
    diurnal = SEOUL_DIURNAL_HALF_RANGE_K * math.cos(2.0 * math.pi * (hour - 15.0) / 24.0)
    return SEOUL_MONTHLY_MEAN_C[local.month - 1] + diurnal


def driver_temp_c(power_w: float, ambient_c: float) -> float:
    """Steady-state driver temperature (deg C): ambient plus the rise from the power it sheds."""
    # The thermal resistance above is stated per watt of input power (light that leaves the
    # head is folded into it), so no efficiency term is needed here.
    return ambient_c + DRIVER_THERMAL_RESISTANCE_K_PER_W * power_w


def ambient_lux(lat_deg: float, lon_deg: float, when: datetime) -> float:
    """Clear-sky horizontal illuminance (lux) at the place and instant, from the sun's elevation."""
    elevation_deg = sun_elevation_deg(lat_deg, lon_deg, when)
    if elevation_deg > 0.0:
        sin_h = math.sin(math.radians(elevation_deg))
        return HORIZON_LUX + SOLAR_ILLUMINANCE_LUX * sin_h * math.exp(-CLEAR_SKY_EXTINCTION / sin_h)
    # Exponential decay from the horizon value through the civil dusk value.
    decay_per_deg = math.log(HORIZON_LUX / CIVIL_DUSK_LUX) / 6.0
    return max(NIGHT_FLOOR_LUX, HORIZON_LUX * math.exp(decay_per_deg * elevation_deg))


def rssi_at_distance_dbm(distance_m: float) -> float:
    """Mean received signal strength (dBm) of an app beacon at `distance_m` (log-distance path loss)."""
    # Below 10 cm the far-field model means nothing; clamp rather than return +inf.
    distance_m = max(distance_m, 0.1)
    return RSSI_AT_1M_DBM - 10.0 * PATH_LOSS_EXPONENT * math.log10(distance_m)


def beacon_detect_range_m() -> float:
    """Distance (m) at which the mean rssi reaches the detect threshold."""
    return float(10.0 ** ((RSSI_AT_1M_DBM - BEACON_DETECT_THRESHOLD_DBM) / (10.0 * PATH_LOSS_EXPONENT)))
