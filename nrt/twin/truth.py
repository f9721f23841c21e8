"""The twin's world: synthetic relief and a rain field that lives, moves and responds to terrain and daylight.

Rain follows the recipe of pysteps' stochastic generators: a Gaussian field with a power-law spectrum,
thresholded and exponentiated. Here the field also evolves: each Fourier mode is an AR(1) process whose
memory grows with its scale (small cells die within the hour, large bands last many hours), and the whole
field is carried by the wind as an exact phase shift. A second, much larger-scale field is the envelope in
which rain systems grow and decay. The diurnal cycle and the orographic lift (wind blowing up the DEM's
slopes) shift the latent field before thresholding, so they change both where it rains and how hard.

Everything is a pure function of the settings, the grid and a seed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
from scipy import fft, special

from nrt.grids import KM_PER_DEGREE, LatLonGrid, cell_km, grid_for
from nrt.timeline import HALF_HOUR, utc
from nrt.twin.spec import WorldSettings

STEP_HOURS = HALF_HOUR.total_seconds() / 3600
EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)


def rng_for(seed: int, *stream: int | str) -> np.random.Generator:
    """An independent random stream per component, so changing one part of the twin leaves the others alike."""
    # Integers are taken modulo 2**64: SeedSequence wants them non-negative, and DPR granules before the
    # orbit's epoch (a twin of 2010 radar rain) have negative indices; non-negative keys stay as they were.
    keys = [int.from_bytes(str(s).encode(), "little") % (2**32) if isinstance(s, str) else int(s) % (2**64) for s in stream]
    return np.random.default_rng(np.random.SeedSequence([int(seed), *keys]))


class SpectralField:
    """A Gaussian random field with a power-law spectrum that evolves in time and is advected exactly.

    Hand-written rather than pysteps.noise: pysteps draws independent fields, while the twin needs each
    mode to keep memory (scale-dependent AR(1)) and to move with the wind (a phase shift per step).
    The field lives on a padded periodic grid: what leaves one side crosses the padding before it re-enters
    the crop (about half a day at the mean wind for the default buffer), by when most of it has decorrelated.
    """

    def __init__(
        self,
        shape: tuple[int, int],
        spacing_km: tuple[float, float],
        rng: np.random.Generator,
        slope: float,
        outer_scale_km: float,
        lifetime_h: float,
        lifetime_scale_km: float = 100.0,
        lifetime_exponent: float = 0.0,
        step_hours: float = STEP_HOURS,
        padding: float = 0.5,
    ):
        self.shape = shape
        self.padded = tuple(fft.next_fast_len(int(math.ceil(n * (1 + padding)))) for n in shape)
        self.rng = rng
        ky = np.fft.fftfreq(self.padded[0], d=spacing_km[0])[:, None]
        kx = np.fft.rfftfreq(self.padded[1], d=spacing_km[1])[None, :]
        self.ky, self.kx = ky, kx
        k = np.hypot(ky, kx)
        k0 = 1.0 / outer_scale_km
        power = (k0**2 + k**2) ** (-slope / 2)
        power[0, 0] = 0.0
        # Normalise to unit variance: var = sum over the full spectrum of |A|^2 / N (rfft counts the mirrored half twice).
        weights = np.full(kx.shape, 2.0)
        weights[0, 0] = 1.0
        if self.padded[1] % 2 == 0:
            weights[0, -1] = 1.0
        n = self.padded[0] * self.padded[1]
        self.amplitude = np.sqrt(power / (np.sum(power * weights) / n))
        scale_km = np.divide(1.0, k, out=np.full_like(k, np.inf), where=k > 0)
        lifetime = lifetime_h * (np.minimum(scale_km, 10 * outer_scale_km) / lifetime_scale_km) ** lifetime_exponent
        self.memory = np.exp(-step_hours / np.maximum(lifetime, 1e-6))
        self.innovation = np.sqrt(1.0 - self.memory**2) * self.amplitude
        self.state = self.amplitude * self._white()

    def _white(self) -> np.ndarray:
        return fft.rfft2(self.rng.standard_normal(self.padded))

    def step(self, shift_km: tuple[float, float] = (0.0, 0.0)) -> None:
        """Advance one time step: carry the field `shift_km` (north, east) and let each mode evolve."""
        phase = np.exp(-2j * np.pi * (self.ky * shift_km[0] + self.kx * shift_km[1]))
        self.state = self.memory * phase * self.state + self.innovation * self._white()

    def field(self) -> np.ndarray:
        full = fft.irfft2(self.state, s=self.padded)
        return full[: self.shape[0], : self.shape[1]]


# ---------------------------------------------------------------- relief


def dem_grid(truth_grid: LatLonGrid, res: float) -> LatLonGrid:
    """The DEM's grid: the truth grid's extent at `res` (an integer fraction of the truth cell)."""
    return grid_for(truth_grid.domain, res, snap=truth_grid.res)


def synthetic_relief(grid: LatLonGrid, settings: WorldSettings, seed: int) -> np.ndarray:
    """Elevation (m) on `grid`: a gentle regional slope, fractal hills and one long ridge, seeded."""
    rng = rng_for(seed, "relief")
    lon2d, lat2d = grid.lonlats()
    west, south, east, north = grid.extent
    base = 250.0 + 30.0 * (east - lon2d) + 10.0 * (lat2d - south)
    hills = SpectralField(grid.shape, cell_km(grid), rng, slope=3.5, outer_scale_km=80.0, lifetime_h=1.0, padding=0.1)
    relief = base + 45.0 * hills.field()
    # A ridge through the middle third of the region, at a random bearing, with a wavy crest height.
    bearing = rng.uniform(0, math.pi)
    lon_c = west + (east - west) * rng.uniform(0.35, 0.65)
    lat_c = south + (north - south) * rng.uniform(0.35, 0.65)
    km_x = (lon2d - lon_c) * KM_PER_DEGREE * np.cos(np.radians(lat2d))
    km_y = (lat2d - lat_c) * KM_PER_DEGREE
    across = km_x * math.cos(bearing) - km_y * math.sin(bearing)
    along = km_x * math.sin(bearing) + km_y * math.cos(bearing)
    crest = 0.7 + 0.3 * np.sin(along / 60.0 + rng.uniform(0, 2 * math.pi))
    relief += settings.ridge_height_m * crest * np.exp(-0.5 * (across / 25.0) ** 2)
    return np.maximum(relief, 20.0).astype(np.float32)


def block_mean(field: np.ndarray, factor: int) -> np.ndarray:
    """Mean over `factor` x `factor` blocks (the fine grid nests exactly in the coarse one)."""
    ny, nx = field.shape[0] // factor, field.shape[1] // factor
    return field[: ny * factor, : nx * factor].reshape(ny, factor, nx, factor).mean(axis=(1, 3))


# ---------------------------------------------------------------- wind and forcings


@dataclass(frozen=True)
class Wind:
    """A uniform advecting wind that turns and changes speed slowly; a function of absolute time."""

    mean_direction: float  # radians, the direction the wind blows towards (0 = east, pi/2 = north)
    speed_ms: float
    variability_ms: float
    turning: float  # radians
    period_h: float
    phase_speed: float
    phase_turn: float

    @classmethod
    def draw(cls, settings: WorldSettings, seed: int) -> Wind:
        rng = rng_for(seed, "wind")
        # Mid-latitude steering flow: mostly from the west-southwest.
        towards = math.radians(rng.normal(15.0, 20.0))
        return cls(
            towards,
            settings.wind_speed_ms,
            settings.wind_variability_ms,
            math.radians(settings.wind_turning_degrees),
            settings.wind_period_h,
            rng.uniform(0, 2 * math.pi),
            rng.uniform(0, 2 * math.pi),
        )

    def at(self, t: datetime) -> tuple[float, float]:
        """(u, v) in m/s: eastward and northward components."""
        hours = (utc(t) - EPOCH).total_seconds() / 3600
        omega = 2 * math.pi / self.period_h
        speed = self.speed_ms + self.variability_ms * math.sin(omega * hours + self.phase_speed)
        direction = self.mean_direction + self.turning * math.sin(0.61 * omega * hours + self.phase_turn)
        return speed * math.cos(direction), speed * math.sin(direction)


def diurnal_term(t: datetime, lons: np.ndarray, amplitude: float, peak_local_hour: float) -> np.ndarray:
    """Latent-field shift by local solar time: largest at `peak_local_hour`, per longitude."""
    t = utc(t)
    hours = t.hour + t.minute / 60 + t.second / 3600 + 15 / 60  # centre of the half-hour
    local = (hours + lons / 15.0) % 24
    return amplitude * np.cos(2 * np.pi * (local - peak_local_hour) / 24)


def upslope_lift(elevation: np.ndarray, grid: LatLonGrid, wind: tuple[float, float]) -> np.ndarray:
    """Vertical velocity (m/s) forced by the wind blowing over the terrain: V . grad(h)."""
    dy_km, dx_km = cell_km(grid)
    dh_dy, dh_dx = np.gradient(elevation.astype(np.float64), dy_km * 1000.0, dx_km * 1000.0)
    return wind[0] * dh_dx + wind[1] * dh_dy


def orographic_term(elevation: np.ndarray, grid: LatLonGrid, wind, strength: float, lift_ms: float) -> np.ndarray:
    """Latent-field shift: up to +strength on windward slopes and down to -strength in the lee."""
    return strength * np.tanh(upslope_lift(elevation, grid, wind) / lift_ms)


# ---------------------------------------------------------------- the rain field


@dataclass(frozen=True)
class TruthFrame:
    start: datetime  # the half-hour [start, start + 30 min) this rate stands for
    rain: np.ndarray  # float32 mm/h (lat, lon), latitude ascending
    wind: tuple[float, float]  # advecting wind (u, v) m/s


class World:
    """Generates the truth half-hour by half-hour on `grid` (0.05°, domain + buffer)."""

    def __init__(self, settings: WorldSettings, grid: LatLonGrid, elevation: np.ndarray, seed: int):
        if elevation.shape != grid.shape:
            raise ValueError(f"elevation shape {elevation.shape} does not match the grid {grid.shape}")
        self.settings, self.grid, self.elevation = settings, grid, elevation
        self.wind = Wind.draw(settings, seed)
        spacing = cell_km(grid)
        self.texture = SpectralField(
            grid.shape, spacing, rng_for(seed, "texture"), settings.spectral_slope, settings.outer_scale_km,
            settings.lifetime_100km_h, 100.0, settings.lifetime_exponent,
        )
        self.envelope = SpectralField(
            grid.shape, spacing, rng_for(seed, "envelope"), 4.0, settings.envelope_scale_km, settings.envelope_lifetime_h,
        )
        spread = math.sqrt(1.0 + settings.envelope_weight**2)
        self.threshold = spread * float(special.ndtri(1.0 - settings.wet_fraction))
        self.spread = spread

    def rain_rate(self, latent: np.ndarray) -> np.ndarray:
        """Threshold and exponentiate the latent field: zero below the rain edge, log-linear above it."""
        s = self.settings
        excess = np.maximum(latent - self.threshold, 0.0) / self.spread
        rate = np.minimum(s.min_rate_mmh * np.exp(s.log_rate_slope * excess), s.max_rate_mmh)
        return np.where(latent > self.threshold, rate, 0.0).astype(np.float32)

    def latent(self, t: datetime, wind: tuple[float, float]) -> np.ndarray:
        s = self.settings
        field = self.texture.field() + s.envelope_weight * self.envelope.field()
        field = field + diurnal_term(t, self.grid.lons, s.diurnal_amplitude, s.diurnal_peak_local_hour)[None, :]
        return field + orographic_term(self.elevation, self.grid, wind, s.orographic_strength, s.orographic_lift_ms)

    def frames(self, starts: list[datetime]) -> Iterator[TruthFrame]:
        """One frame per half-hour start, in order; the fields advance 30 min between consecutive starts."""
        previous = None
        for start in starts:
            if previous is not None:
                steps = int((start - previous) / HALF_HOUR)
                for k in range(steps):
                    u, v = self.wind.at(previous + (k + 0.5) * HALF_HOUR)
                    shift_km = (v * 1.8, u * 1.8)  # m/s over 1800 s, in km
                    self.texture.step(shift_km)
                    self.envelope.step(shift_km)
            wind = self.wind.at(start + HALF_HOUR / 2)
            yield TruthFrame(start, self.rain_rate(self.latent(start, wind)), wind)
            previous = start
