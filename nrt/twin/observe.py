"""How each source sees the truth: the DPR's footprints, GEOS-FP's forecast fields, and the surface state
IMERG's liquid probability comes from. IMERG Early's own errors are `nrt.errormodel.degrade`.

Pure functions; arrays in, arrays out. The writers put the results into the real file formats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
from pyresample import kd_tree
from pyresample.geometry import SwathDefinition
from scipy import ndimage, special

from nrt.grids import KM_PER_DEGREE, LatLonGrid, cell_km
from nrt.twin.truth import SpectralField, rng_for
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


def _multiplier(normal: np.ndarray, log_sigma: float) -> np.ndarray:
    """A mean-one lognormal factor exp(σz − σ²/2) from a unit normal field z."""
    return np.exp(log_sigma * normal - log_sigma**2 / 2)

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


def geosfp_cell_km(window: GeosfpWindow) -> tuple[float, float]:
    """(north-south, east-west) size in km of a GEOS-FP cell at the window's central latitude."""
    lat_c = math.radians(float(window.lats.mean()))
    return KM_PER_DEGREE * 0.25, KM_PER_DEGREE * 0.3125 * math.cos(lat_c)


def large_scales(rain: np.ndarray, grid: LatLonGrid, shared_scale_km: float) -> np.ndarray:
    """`rain` with the scales shorter than `shared_scale_km` removed: all a forecast can know of the truth.

    A Gaussian low-pass whose response is one half at that wavelength (0.84 at twice it, 0.06 at half of it).
    scipy's filter is used rather than an FFT so that the region's edges do not wrap around.
    """
    sigma_km = shared_scale_km * math.sqrt(math.log(2) / 2) / math.pi
    dy_km, dx_km = cell_km(grid)
    return ndimage.gaussian_filter(rain.astype(np.float64), (sigma_km / dy_km, sigma_km / dx_km), mode="reflect")


def from_geosfp(field: np.ndarray, window: GeosfpWindow, grid: LatLonGrid) -> tuple[tuple[slice, slice], np.ndarray]:
    """Bilinear interpolation from the window back to the truth-grid cells it surrounds: (that block, values)."""
    rows = (grid.lats - window.lats[0]) / (GEOSFP_LATS[1] - GEOSFP_LATS[0])
    cols = (grid.lons - window.lons[0]) / (GEOSFP_LONS[1] - GEOSFP_LONS[0])
    r_in = np.flatnonzero((rows >= 0) & (rows <= window.lats.size - 1))
    c_in = np.flatnonzero((cols >= 0) & (cols <= window.lons.size - 1))
    rr, cc = np.meshgrid(rows[r_in], cols[c_in], indexing="ij")
    block = (slice(int(r_in[0]), int(r_in[-1]) + 1), slice(int(c_in[0]), int(c_in[-1]) + 1))
    return block, ndimage.map_coordinates(field, [rr, cc], order=1)


class Agreement:
    """Pearson correlation of two fields pooled over every pair added (running sums, so a day needs no memory)."""

    def __init__(self):
        self.n = 0
        self.sums = np.zeros(5)  # x, y, xx, yy, xy

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        x, y = np.ravel(x).astype(np.float64), np.ravel(y).astype(np.float64)
        self.n += x.size
        self.sums += [x.sum(), y.sum(), x @ x, y @ y, x @ y]

    @property
    def correlation(self) -> float:
        sx, sy, sxx, syy, sxy = self.sums / max(self.n, 1)
        spread = math.sqrt(max(sxx - sx * sx, 0.0) * max(syy - sy * sy, 0.0))
        return (sxy - sx * sy) / spread if spread > 0 else math.nan


HOUR = timedelta(hours=1)
SYSTEM_EDGE = 0.25  # width, in standard deviations of its field, of the ramp at a missed or false system's edge


class GeosfpRun:
    """One forecast run's rain: the truth's large scales, with the errors the run draws at its initialisation.

    - position: a shift (RMS `initial_displacement_km` at lead 0) plus a steering-flow error that carries the rain
      `displacement_growth_km_per_h` further each hour of lead: RMS sqrt(d0² + (g·lead)²);
    - amplitude: a lognormal factor, mean `precip_bias`, correlated over `error_scale_km`;
    - missed systems: where one smooth field lies in its top `miss_fraction`, the truth's rain is dropped;
    - false systems: where another lies in its top `false_fraction`, rain is added that the truth does not have;
    - small scales: the run's own texture, an evolving lognormal field independent of the truth.
    The error fields move with the run's (wrong) steering wind and evolve hour by hour.
    """

    def __init__(self, settings: GeosfpSettings, window: GeosfpWindow, init: datetime, seed: int):
        self.settings, self.window, self.init = settings, window, init
        shape = (window.lats.size, window.lons.size)
        spacing = geosfp_cell_km(window)
        stamp = int(init.timestamp())

        def field(name, scale_km, lifetime_h, slope=4.0, exponent=0.0):
            rng = rng_for(seed, "geosfp", stamp, name)
            return SpectralField(shape, spacing, rng, slope, scale_km, lifetime_h, 100.0, exponent, step_hours=1.0)

        s = settings
        # Both position errors are uniform over the region (one rain-bearing system per run, as a displacement
        # verification would measure it); per component sigma/sqrt(2), so the vector's RMS length is the setting.
        draws = rng_for(seed, "geosfp", stamp, "position").standard_normal(4) / math.sqrt(2)
        self.offset_km = tuple(s.initial_displacement_km * draws[:2])  # (north, east) at lead 0
        self.steering_error_kmh = tuple(s.displacement_growth_km_per_h * draws[2:])  # (north, east)
        self.amplitude = field("amplitude", s.error_scale_km, s.error_lifetime_h)
        self.miss = field("miss", s.error_scale_km, s.error_lifetime_h)
        self.false = field("false", s.error_scale_km, s.error_lifetime_h)
        self.texture = field("texture", s.texture_scale_km, s.texture_lifetime_h, slope=3.3, exponent=0.8)
        self.miss_level = float(special.ndtri(1.0 - s.miss_fraction)) if s.miss_fraction > 0 else math.inf
        self.false_level = float(special.ndtri(1.0 - s.false_fraction)) if s.false_fraction > 0 else math.inf
        self.valid: datetime | None = None

    def steering_wind(self, wind: tuple[float, float]) -> tuple[float, float]:
        """The run's (u, v) in m/s: the true advecting wind plus the run's error."""
        return wind[0] + self.steering_error_kmh[1] / 3.6, wind[1] + self.steering_error_kmh[0] / 3.6

    def advance(self, valid: datetime, wind: tuple[float, float]) -> None:
        """Step the evolving errors on to `valid`, whole hours after the previous call, at the run's wind."""
        if self.valid is not None:
            u, v = self.steering_wind(wind)
            for _ in range(round((valid - self.valid) / HOUR)):
                for f in (self.amplitude, self.miss, self.false, self.texture):
                    f.step((v * 3.6, u * 3.6))
        self.valid = valid

    def lead_hours(self, valid: datetime) -> float:
        return (valid - self.init).total_seconds() / 3600

    def rain(self, large: np.ndarray, grid: LatLonGrid, valid: datetime) -> np.ndarray:
        """Forecast rain (mm/h) on the window from the truth's `large_scales` on `grid` at `valid`."""
        s, window = self.settings, self.window
        lead = self.lead_hours(valid)
        north_km = self.offset_km[0] + self.steering_error_kmh[0] * lead
        east_km = self.offset_km[1] + self.steering_error_kmh[1] * lead
        cos_lat = np.cos(np.radians(window.lats))[:, None]
        # The forecast at x shows the truth from x - d: its rain sits d away from where it falls.
        cols = (window.lons[None, :] - east_km / (KM_PER_DEGREE * cos_lat) - grid.lons[0]) / grid.res
        rows = np.broadcast_to((window.lats[:, None] - north_km / KM_PER_DEGREE - grid.lats[0]) / grid.res, cols.shape)
        shared = ndimage.map_coordinates(large, [rows, cols], order=1, mode="nearest")
        kept = shared * special.ndtr((self.miss_level - self.miss.field()) / SYSTEM_EDGE)
        spurious = s.false_system_mmh * special.ndtr((self.false.field() - self.false_level) / SYSTEM_EDGE)
        amplitude = s.precip_bias * _multiplier(self.amplitude.field(), s.amplitude_log_sigma)
        rain = (amplitude * kept + spurious) * _multiplier(self.texture.field(), s.texture_log_sigma)
        return np.where(rain < s.min_rate_mmh, 0.0, rain)


def geosfp_fields(
    forecast_rain: np.ndarray, window: GeosfpWindow, elevation: np.ndarray, valid: datetime,
    wind: tuple[float, float], settings: GeosfpSettings,
) -> dict[str, np.ndarray]:
    """Every variable of the slv and flx collections on the GEOS-FP window, float32, from the run's own rain.

    `elevation` and `wind` (the run's steering wind) are on the window too. Humidity, cloud water and pressure
    follow the forecast rain; the 10 m wind is the steering wind plus inflow towards the forecast rain
    (convergence where it rains); 500 hPa ascent where it rains. Nothing here sees the truth.
    """
    wetness = np.tanh(forecast_rain / 2.0)
    grad_y, grad_x = np.gradient(wetness)  # per cell
    surface = near_surface(valid, window.lats, window.lons, elevation, forecast_rain)
    convective_fraction = np.clip(forecast_rain / 10.0, 0.2, 0.9)
    fields = {
        **surface,
        "U10M": wind[0] + settings.convergence_ms * grad_x,
        "V10M": wind[1] + settings.convergence_ms * grad_y,
        "T850": surface["T2M"] - 11.0,
        "U850": np.full(forecast_rain.shape, wind[0]),
        "V850": np.full(forecast_rain.shape, wind[1]),
        "OMEGA500": -0.6 * wetness,
        "PRECTOT": forecast_rain / 3600.0,
        "PRECCON": convective_fraction * forecast_rain / 3600.0,
    }
    return {name: np.asarray(values, dtype=np.float32) for name, values in fields.items()}
