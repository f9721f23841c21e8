"""What a twin run is made of: the domain, the span, the seed and the knobs of the world and its observers.

Everything here is plain data; `TwinSpec.to_dict()` is what `twin.json` records, so a mirror tree says
exactly how it was made.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

from nrt.errors import ConfigError
from nrt.grids import Domain
from nrt.timeline import HALF_HOUR, floor_halfhour, isoformat, utc

MANIFEST_FORMAT = "nrt-twin/1"


@dataclass(frozen=True)
class WorldSettings:
    """The synthetic atmosphere: rain texture, its motion and life cycle, and the forcings that shape it."""

    buffer_degrees: float = 3.0  # at least this far beyond the domain; `spec_for_config` widens it to the nowcast buffer
    wet_fraction: float = 0.18  # expected raining fraction of cells before forcings
    spectral_slope: float = 3.3  # rain texture power spectrum P(k) ~ k^-slope
    outer_scale_km: float = 250.0  # texture spectrum flattens above this scale
    lifetime_100km_h: float = 4.0  # e-folding lifetime of 100 km features; smaller ones live shorter
    lifetime_exponent: float = 0.8  # lifetime ~ scale^exponent
    envelope_scale_km: float = 700.0  # synoptic envelope that makes rain systems grow and decay
    envelope_lifetime_h: float = 15.0
    envelope_weight: float = 0.9
    min_rate_mmh: float = 0.2  # rate at the edge of a rain area
    log_rate_slope: float = 2.0  # ln(rate) per standard deviation of the latent field above the rain edge
    max_rate_mmh: float = 100.0
    wind_speed_ms: float = 12.0  # mean speed of the advecting wind
    wind_variability_ms: float = 4.0
    wind_turning_degrees: float = 35.0  # the wind direction swings this much either side of its mean
    wind_period_h: float = 40.0
    diurnal_amplitude: float = 0.5  # in standard deviations of the latent field
    diurnal_peak_local_hour: float = 17.0
    orographic_strength: float = 0.5  # in standard deviations of the latent field, at full upslope lift
    orographic_lift_ms: float = 0.05  # upslope vertical velocity that counts as full lift
    dem_resolution: float = 0.01
    ridge_height_m: float = 350.0


@dataclass(frozen=True)
class ImergSettings:
    """How IMERG Early sees the truth: the error model fit to real IMERG / Stage IV pairs (`nrt.errormodel`)."""

    error_model: str = "builtin:imerg-early"  # or the path of a JSON written by `nrt errormodel fit`
    version: str = "V07B"
    gesdisc_copy: bool = True  # also publish each granule under the GES DISC tree (.HDF5)


@dataclass(frozen=True)
class DprSettings:
    """The GPM core satellite's orbit and the DPR Ku/Ka full swath."""

    inclination_degrees: float = 65.0
    altitude_km: float = 407.0
    swath_km: float = 245.0
    rays: int = 49
    footprint_km: float = 5.0
    scan_period_s: float = 0.7
    granule_minutes: float = 30.0
    log_noise: float = 0.1  # multiplicative noise of the retrieved rate (natural-log standard deviation)
    min_rate_mmh: float = 0.2  # detection threshold of the radar
    version: str = "V07A"


@dataclass(frozen=True)
class GeosfpSettings:
    """GEOS-FP forecasts: hourly means that share only the truth's large scales, with a forecast's errors.

    Magnitudes follow published verification of global-model rain forecasts (docs/twin.md cites them); the
    small scales are the forecast's own, independent of the truth.
    """

    forecast_hours: int = 15  # hourly files per initialisation (00/06/12/18 UTC)
    shared_scale_km: float = 250.0  # the truth is low-passed to wavelengths beyond this (half amplitude here)
    initial_displacement_km: float = 100.0  # RMS position error of rain systems at lead 0
    displacement_growth_km_per_h: float = 6.0  # RMS speed error of the steering flow: position error grows with lead
    precip_bias: float = 1.15  # mean amplitude factor (global models rain too often and too widely)
    amplitude_log_sigma: float = 0.4  # natural-log spread of the amplitude error (about x/÷ 1.5)
    error_scale_km: float = 500.0  # correlation scale of the amplitude, missed- and false-system fields
    error_lifetime_h: float = 12.0
    miss_fraction: float = 0.2  # fraction of the area whose rain systems the forecast drops
    false_fraction: float = 0.1  # fraction of the area given rain systems the truth does not have
    false_system_mmh: float = 0.3  # large-scale rate of a false system
    texture_log_sigma: float = 1.3  # natural-log spread of the forecast's own small-scale texture
    texture_scale_km: float = 150.0  # outer scale of that texture
    texture_lifetime_h: float = 3.0  # e-folding lifetime of its 100 km features
    min_rate_mmh: float = 0.05  # the model's smallest rain rate; below it, dry
    convergence_ms: float = 2.0  # inflow wind towards rain areas, per unit change of wetness across a cell


@dataclass(frozen=True)
class TwinSpec:
    domain: Domain
    start: datetime
    end: datetime
    seed: int = 20250101
    world: WorldSettings = field(default_factory=WorldSettings)
    imerg: ImergSettings = field(default_factory=ImergSettings)
    dpr: DprSettings = field(default_factory=DprSettings)
    geosfp: GeosfpSettings = field(default_factory=GeosfpSettings)

    def __post_init__(self):
        start, end = floor_halfhour(utc(self.start)), utc(self.end)
        if end <= start:
            raise ConfigError("twin", f"end {isoformat(end)} must be after start {isoformat(start)}")
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)

    @property
    def half_hours(self) -> list[datetime]:
        """Start times of the half-hours simulated: every S with start <= S < end."""
        n = int((self.end - self.start + HALF_HOUR - timedelta(microseconds=1)) / HALF_HOUR)
        return [self.start + k * HALF_HOUR for k in range(n)]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["domain"] = asdict(self.domain)
        data["start"], data["end"] = isoformat(self.start), isoformat(self.end)
        return data


def spec_for_config(cfg, start: datetime, end: datetime, seed: int = 20250101, domain: Domain | None = None) -> TwinSpec:
    """The twin of `cfg`'s domain (or `domain`), its world wide enough for the nowcast's upwind buffer.

    The nowcast reads IMERG over the domain plus speed x horizon; a twin narrower than that leaves the edges
    of each granule missing and every cycle degraded. One extra lead is covered, so that a single late
    granule (the nowcast then runs one step longer) still reads only simulated rain.
    """
    from nrt.grids import IMERG_RES
    from nrt.nowcast import nowcast_domain

    box = domain or cfg.domain.box()
    wide = nowcast_domain(box, cfg.nowcast, steps=cfg.nowcast.steps + 1)
    needed = max(box.west - wide.west, box.south - wide.south, wide.east - box.east, wide.north - box.north)
    buffer = max(WorldSettings().buffer_degrees, round(needed + IMERG_RES, 1))
    return TwinSpec(box, start, end, seed, world=WorldSettings(buffer_degrees=buffer))
