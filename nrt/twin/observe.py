"""How each source sees the truth: the DPR's footprints, GEOS-FP's forecast fields, and the surface state
IMERG's liquid probability comes from. IMERG Early's own errors are `nrt.errormodel.degrade`.

Pure functions; arrays in, arrays out. The writers put the results into the real file formats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from pyresample import kd_tree
from pyresample.geometry import SwathDefinition
from scipy import ndimage

from nrt.grids import LatLonGrid
from nrt.twin.truth import cell_km
from nrt.twin.spec import DprSettings, GeosfpSettings

# ---------------------------------------------------------------- shared atmosphere


def saturation_specific_humidity(t_kelvin: np.ndarray, pressure_pa: np.ndarray) -> np.ndarray:
    """kg/kg over water (Magnus formula)."""
    t_c = t_kelvin - 273.15
    e_s = 611.2 * np.exp(17.67 * t_c / (t_c + 243.5))
    return 0.622 * e_s / (pressure_pa - 0.378 * e_s)


def near_surface(t: datetime, lats: np.ndarray, lons: np.ndarray, elevation: np.ndarray, rain: np.ndarray) -> dict:
    """T2M, QV2M, TQV, TQL, SLP, PS on a grid, consistent with the (smoothed) rain rate in mm/h.

    A climatological temperature (latitude, season, local time, altitude), cooled under rain; humidity
    rising from 55 % to saturation and precipitable water from ~2.3x the surface mixing ratio upwards
    where it rains; pressure lower under rain systems.
    """
    lat2d = np.broadcast_to(lats[:, None], rain.shape)
    lon2d = np.broadcast_to(lons[None, :], rain.shape)
    wet = np.tanh(rain / 2.0)
    day_of_year = t.timetuple().tm_yday
    local_hour = (t.hour + t.minute / 60 + lon2d / 15.0) % 24
    t2m = (
        288.0 + 12.0 * math.cos(2 * math.pi * (day_of_year - 200) / 365) - 0.7 * (np.abs(lat2d) - 40.0)
        + 5.0 * np.cos(2 * np.pi * (local_hour - 15.0) / 24) - 0.0065 * elevation - 3.0 * wet
    )
    slp = 101325.0 - 900.0 * np.tanh(rain / 5.0) + 300.0 * np.cos(np.radians(lat2d * 3))
    ps = slp * np.exp(-elevation / 8400.0)
    rh = 0.55 + 0.45 * wet
    qv2m = rh * saturation_specific_humidity(t2m, ps)
    tqv = 2.3 * qv2m * 1000.0 * (1.0 + 0.6 * wet)
    tql = 0.02 + 0.3 * wet
    return {"T2M": t2m, "QV2M": qv2m, "TQV": tqv, "TQL": tql, "SLP": slp, "PS": ps}


def liquid_probability(t2m: np.ndarray) -> np.ndarray:
    """Percent chance that precipitation falls as rain, from the 2 m temperature."""
    return 100.0 / (1.0 + np.exp(-(t2m - 274.15) / 1.2))


# ---------------------------------------------------------------- DPR


def sample_footprints(rain: np.ndarray, grid: LatLonGrid, lat: np.ndarray, lon: np.ndarray, footprint_km: float) -> np.ndarray:
    """The truth averaged over Gaussian footprints centred at (lat, lon); NaN outside the grid."""
    out = np.full(lat.shape, np.nan, dtype=np.float32)
    west, south, east, north = grid.extent
    inside = (lat >= south) & (lat <= north) & (lon >= west) & (lon <= east)
    if not inside.any():
        return out
    target = SwathDefinition(lons=lon[inside].astype(np.float64), lats=lat[inside].astype(np.float64))
    # pyresample weighs exp(-d²/σ²): this σ makes the footprint size the FWHM of the beam on the ground.
    sigma_m = footprint_km * 1000.0 / (2 * math.sqrt(math.log(2)))
    values = kd_tree.resample_gauss(
        grid.area_definition(), rain[::-1].astype(np.float64), target, radius_of_influence=2 * sigma_m,
        sigmas=sigma_m, neighbours=16, fill_value=np.nan,
    )
    out[inside] = values
    return out


def dpr_rate(sampled: np.ndarray, settings: DprSettings, rng: np.random.Generator) -> np.ndarray:
    """The retrieved near-surface rate: the sampled truth with small multiplicative noise, below detection -> 0."""
    noise = np.exp(settings.log_noise * rng.standard_normal(sampled.shape) - settings.log_noise**2 / 2)
    rate = sampled * noise
    return np.where(np.isnan(rate), np.nan, np.where(rate < settings.min_rate_mmh, 0.0, rate)).astype(np.float32)


# ---------------------------------------------------------------- GEOS-FP

GEOSFP_NLON, GEOSFP_NLAT = 1152, 721
GEOSFP_LONS = -180.0 + 0.3125 * np.arange(GEOSFP_NLON)
GEOSFP_LATS = -90.0 + 0.25 * np.arange(GEOSFP_NLAT)


@dataclass(frozen=True)
class GeosfpWindow:
    """The block of the 1152 x 721 grid whose cell centres lie inside the truth grid."""

    lat_slice: slice
    lon_slice: slice

    @property
    def lats(self) -> np.ndarray:
        return GEOSFP_LATS[self.lat_slice]

    @property
    def lons(self) -> np.ndarray:
        return GEOSFP_LONS[self.lon_slice]


def geosfp_window(grid: LatLonGrid) -> GeosfpWindow:
    lats, lons = grid.lats, grid.lons
    j = np.flatnonzero((GEOSFP_LATS >= lats[0]) & (GEOSFP_LATS <= lats[-1]))
    i = np.flatnonzero((GEOSFP_LONS >= lons[0]) & (GEOSFP_LONS <= lons[-1]))
    return GeosfpWindow(slice(int(j[0]), int(j[-1]) + 1), slice(int(i[0]), int(i[-1]) + 1))


def to_geosfp(field: np.ndarray, grid: LatLonGrid, window: GeosfpWindow) -> np.ndarray:
    """Bilinear interpolation from the truth grid to the GEOS-FP cell centres in `window`."""
    rows = (window.lats - grid.lats[0]) / grid.res
    cols = (window.lons - grid.lons[0]) / grid.res
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    return ndimage.map_coordinates(field.astype(np.float64), [rr, cc], order=1, mode="nearest")


def geosfp_fields(
    hour_rain: np.ndarray, grid: LatLonGrid, elevation: np.ndarray, valid: datetime, lead_hours: float,
    drift_direction: float, wind: tuple[float, float], settings: GeosfpSettings, window: GeosfpWindow,
) -> dict[str, np.ndarray]:
    """Every variable of the slv and flx collections on the GEOS-FP window, float32.

    The forecast rain is the hour's truth displaced by a drift that grows with lead time, smoothed to the
    model's scale and biased. Humidity, cloud water and pressure follow the forecast rain; the 10 m wind is the
    advecting wind plus inflow towards the rain (convergence where it rains); 500 hPa ascent where it rains.
    """
    dy_km, dx_km = cell_km(grid)
    drift_km = settings.drift_km_per_hour * lead_hours
    shifted = ndimage.shift(
        hour_rain.astype(np.float64),
        (drift_km * math.sin(drift_direction) / dy_km, drift_km * math.cos(drift_direction) / dx_km),
        order=1, mode="nearest",
    )
    sigma = (settings.smoothing_km / dy_km / 2.355, settings.smoothing_km / dx_km / 2.355)
    forecast_rain = settings.precip_bias * ndimage.gaussian_filter(shifted, sigma, mode="nearest")
    wetness = np.tanh(forecast_rain / 2.0)
    grad_y, grad_x = np.gradient(wetness, dy_km, dx_km)
    inflow = settings.convergence_ms * settings.smoothing_km  # m/s per unit wetness gradient per km
    u10 = wind[0] + inflow * grad_x
    v10 = wind[1] + inflow * grad_y
    surface = near_surface(valid, grid.lats, grid.lons, elevation, forecast_rain)
    convective_fraction = np.clip(forecast_rain / 10.0, 0.2, 0.9)
    on_grid = {
        **surface,
        "U10M": u10,
        "V10M": v10,
        "T850": surface["T2M"] - 11.0,
        "U850": np.full(grid.shape, wind[0]),
        "V850": np.full(grid.shape, wind[1]),
        "OMEGA500": -0.6 * wetness,
        "PRECTOT": forecast_rain / 3600.0,
        "PRECCON": convective_fraction * forecast_rain / 3600.0,
    }
    return {name: to_geosfp(values, grid, window).astype(np.float32) for name, values in on_grid.items()}

