"""`nrt twin generate`: run the world over a span and write the mirror tree of every source that observes it.

Frame by frame (one per half-hour) the truth advances; GEOS-FP forecast hours and DPR granules are written as
soon as the frames they need exist; at the end of each UTC day the truth file and that day's IMERG Early
granules are written (IMERG's error scale is solved from the whole day, see `nrt.twin.observe`). Memory stays
at about one day of frames on the truth grid.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from scipy import ndimage

from nrt import __version__
from nrt.errors import DataError
from nrt.grids import LatLonGrid, imerg_window, target_grid, upsample_factor
from nrt.io import atomic_path
from nrt.timeline import HALF_HOUR, floor_halfhour, floor_to, isoformat, utc
from nrt.twin import naming, observe, orbit, truth, writers
from nrt.twin.spec import MANIFEST_FORMAT, TwinSpec

log = logging.getLogger("nrt.twin")
SIX_HOURS = timedelta(hours=6)


@dataclass
class GenerateReport:
    out: Path
    files: dict[str, int] = field(default_factory=lambda: {"imerg": 0, "dpr": 0, "geosfp": 0, "dem": 0, "truth": 0})
    seconds: dict[str, float] = field(default_factory=dict)
    imerg_days: list[dict] = field(default_factory=list)
    geosfp_days: list[dict] = field(default_factory=list)

    def timed(self, stage: str, started: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - started

    def as_dict(self) -> dict:
        return {
            "files": dict(self.files),
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "imerg_days": self.imerg_days,
            "geosfp_days": self.geosfp_days,
        }


def region_grid(spec: TwinSpec) -> LatLonGrid:
    """The truth grid: 0.05° over the domain plus the world's buffer (edges on multiples of 0.1°)."""
    return target_grid(spec.domain.buffered(spec.world.buffer_degrees))


def work_units(spec: TwinSpec) -> int:
    """Progress units of a run: one per half-hour simulated and one per IMERG granule written."""
    return 2 * len(spec.half_hours)


def publish_copy(source: Path, dest: Path) -> None:
    """The GES DISC copy of a PPS granule: the same bytes under the archive's name (a hard link when possible)."""
    with atomic_path(dest) as tmp:
        try:
            os.link(source, tmp)
        except OSError:
            tmp.write_bytes(source.read_bytes())


class Generator:
    def __init__(self, spec: TwinSpec, out: Path, progress: Callable[[int], None] | None = None):
        self.spec, self.out = spec, Path(out)
        self.progress = progress or (lambda n: None)
        self.report = GenerateReport(self.out)
        self.grid = region_grid(spec)
        self.window = imerg_window(self.grid.domain)
        self.geos_window = observe.geosfp_window(self.grid)
        self.orbit = orbit.Orbit.from_settings(spec.dpr)
        self.recent: dict[datetime, truth.TruthFrame] = {}
        self.runs: dict[datetime, observe.GeosfpRun] = {}
        self.geosfp_agreement: dict[str, dict] = {}

    # -------------------------------------------------------------- stages

    def relief(self) -> None:
        """Write the DEM and keep it, with its means on the truth grid (0.05°) and the IMERG grid (0.1°)."""
        started = time.perf_counter()
        self.dem_grid = truth.dem_grid(self.grid, self.spec.world.dem_resolution)
        self.dem = truth.synthetic_relief(self.dem_grid, self.spec.world, self.spec.seed)
        writers.write_dem(self.out / naming.DEM_FILE, self.dem_grid, self.dem)
        self.elevation = truth.block_mean(self.dem, upsample_factor(self.grid, self.dem_grid))
        self.elevation_01 = truth.block_mean(self.elevation, 2)  # the 0.1° IMERG cells hold 2 x 2 truth cells
        # GEOS-FP's own, smoother relief: the 0.05° means smoothed to about its cell (Gaussian FWHM ~0.25°).
        smooth = ndimage.gaussian_filter(self.elevation.astype(np.float64), 0.25 / self.grid.res / 2.355, mode="nearest")
        self.geos_elevation = observe.to_geosfp(smooth, self.grid, self.geos_window)
        self.report.files["dem"] += 1
        self.report.timed("dem", started)

    def run(self) -> GenerateReport:
        spec = self.spec
        self.relief()
        world = truth.World(spec.world, self.grid, self.elevation, spec.seed)
        degrader = observe.ImergDegrader(spec.imerg, self.window.grid, spec.seed)
        started = time.perf_counter()
        (self.out / naming.DPR_FOLDER).mkdir(parents=True, exist_ok=True)  # listed even before the first overpass
        pending = orbit.granules_over(self.orbit, self.grid.domain, spec.start, spec.end, spec.dpr)
        self.report.timed("dpr", started)
        day: list[tuple[truth.TruthFrame, np.ndarray, np.ndarray, np.ndarray]] = []
        frames = world.frames(spec.half_hours)
        while True:
            started = time.perf_counter()
            frame = next(frames, None)
            self.report.timed("truth", started)
            if frame is None:
                break
            if day and frame.start.date() != day[-1][0].start.date():
                self.flush_day(day)
                day = []
            started = time.perf_counter()
            truth_01 = truth.block_mean(frame.rain, 2)
            degraded, normal = degrader.step(truth_01)
            day.append((frame, truth_01, degraded, normal))
            self.report.timed("imerg", started)
            self.recent[frame.start] = frame
            for t in [t for t in self.recent if t < frame.start - 2 * HALF_HOUR]:
                del self.recent[t]
            self.geosfp_for(frame)
            pending = self.dpr_for(frame, pending)
            self.progress(1)
        if day:
            self.flush_day(day)
        self.report.geosfp_days = [
            {"day": name, "correlation": round(a["fine"].correlation, 4),
             "correlation_beyond_300km": round(a["large"].correlation, 4), "leads_h": [min(a["leads"]), max(a["leads"])]}
            for name, a in self.geosfp_agreement.items()
        ]
        return self.report

    def flush_day(self, day) -> None:
        started = time.perf_counter()
        frames = [d[0] for d in day]
        rain = np.stack([f.rain for f in frames])
        winds = np.array([f.wind for f in frames])
        writers.write_truth(
            self.out / naming.truth_path(frames[0].start), self.grid, [f.start for f in frames], rain, winds,
            {"nrt_twin_seed": self.spec.seed, "nrt_version": __version__},
        )
        self.report.files["truth"] += 1
        self.report.timed("truth_files", started)
        started = time.perf_counter()
        truths = np.stack([d[1] for d in day])
        settings = self.spec.imerg
        precipitation, random_error, cal = observe.imerg_day(
            truths, np.stack([d[2] for d in day]), np.stack([d[3] for d in day]), settings,
        )
        if not cal.reachable:
            log.warning("IMERG correlation %.2f is out of reach of the other errors on %s; the nearest is used",
                        settings.correlation, frames[0].start.date())
        grid01 = self.window.grid
        for k, (frame, truth_01, _, normal) in enumerate(day):
            surface = observe.near_surface(frame.start, grid01.lats, grid01.lons, self.elevation_01, truth_01)
            fields = {
                "precipitation": precipitation[k],
                "randomError": random_error[k],
                "probabilityLiquidPrecipitation": np.round(observe.liquid_probability(surface["T2M"])).astype(np.int16),
                "precipitationQualityIndex": observe.quality_index(normal, cal.log_sigma),
            }
            pps = self.out / naming.imerg_pps_path(frame.start, settings.version)
            writers.write_imerg(pps, frame.start, self.window, fields, settings.version)
            if settings.gesdisc_copy:
                publish_copy(pps, self.out / naming.imerg_gesdisc_path(frame.start, settings.version))
            self.report.files["imerg"] += 1
            self.progress(1)
        estimate = precipitation.astype(np.float64)
        self.report.imerg_days.append({
            "day": frames[0].start.date().isoformat(),
            "bias": round(float(estimate.mean() / max(truths.mean(), 1e-12)), 4),
            "correlation": round(float(np.corrcoef(estimate.ravel(), truths.ravel())[0, 1]), 4),
            "log_sigma": round(cal.log_sigma, 4),
            "target_reachable": cal.reachable,
        })
        self.report.timed("imerg", started)

    def geosfp_for(self, frame: truth.TruthFrame) -> None:
        """Write every forecast hour whose mean (HH:00-HH+1:00, stamped HH:30) the frames now cover.

        Each run (00/06/12/18 UTC) keeps its own errors from hour to hour; the truth enters only through the
        hour's large scales (`observe.large_scales`), see `observe.GeosfpRun`.
        """
        if frame.start.minute != 30 or frame.start - HALF_HOUR not in self.recent:
            return
        started = time.perf_counter()
        spec, valid, settings = self.spec, frame.start, self.spec.geosfp
        hour_rain = 0.5 * (self.recent[valid - HALF_HOUR].rain + frame.rain)
        large = observe.large_scales(hour_rain, self.grid, settings.shared_scale_km)
        first_init = floor_to(spec.start, SIX_HOURS)
        init = newest = floor_to(valid - HALF_HOUR, SIX_HOURS)
        while init >= first_init:
            if (valid - init).total_seconds() / 3600 > settings.forecast_hours - 0.5:
                break
            if init not in self.runs:
                self.runs[init] = observe.GeosfpRun(settings, self.geos_window, init, spec.seed)
            run = self.runs[init]
            run.advance(valid, frame.wind)
            rain = run.rain(large, self.grid, valid)
            if init == newest:
                self.score_geosfp(rain, hour_rain, valid, run.lead_hours(valid))
            fields = observe.geosfp_fields(rain, self.geos_window, self.geos_elevation, valid, run.steering_wind(frame.wind), settings)
            for collection in naming.GEOSFP_COLLECTIONS:
                path = self.out / naming.geosfp_forecast_path(collection, init, valid)
                writers.write_geosfp(path, collection, init, valid, fields, self.geos_window)
                self.report.files["geosfp"] += 1
            init -= SIX_HOURS
        for old in [t for t in self.runs if valid - t > timedelta(hours=settings.forecast_hours)]:
            del self.runs[old]
        self.report.timed("geosfp", started)

    def score_geosfp(self, forecast: np.ndarray, hour_rain: np.ndarray, valid: datetime, lead: float) -> None:
        """Accumulate the day's agreement of the newest run's rain with the truth, at 0.05° and beyond 300 km."""
        block, fine = observe.from_geosfp(forecast, self.geos_window, self.grid)
        truth_block = hour_rain[block]
        day = self.geosfp_agreement.setdefault(
            valid.date().isoformat(), {"fine": observe.Agreement(), "large": observe.Agreement(), "leads": []},
        )
        day["fine"].add(fine, truth_block)
        day["large"].add(observe.large_scales(fine, self.grid, 300.0), observe.large_scales(truth_block, self.grid, 300.0))
        day["leads"].append(lead)

    def dpr_for(self, frame: truth.TruthFrame, pending: list[orbit.Granule]) -> list[orbit.Granule]:
        """Write the DPR granules whose last scan falls in this frame's half-hour; return those still waiting."""
        started = time.perf_counter()
        ready = [g for g in pending if floor_halfhour(g.end) <= frame.start]
        settings = self.spec.dpr
        for g in ready:
            scans = orbit.granule_scans(self.orbit, g, settings)
            rate = np.full(scans.lat.shape, np.nan, dtype=np.float32)
            half_hour_s = HALF_HOUR.total_seconds()
            slots = np.floor((self.orbit.epoch.timestamp() + scans.seconds) / half_hour_s).astype(np.int64)
            for slot in np.unique(slots):
                start = utc(datetime.fromtimestamp(int(slot) * half_hour_s, tz=frame.start.tzinfo))
                rows = slots == slot
                if start in self.recent:
                    rate[rows] = observe.sample_footprints(
                        self.recent[start].rain, self.grid, scans.lat[rows], scans.lon[rows], settings.footprint_km,
                    )
            rate = observe.dpr_rate(rate, settings, truth.rng_for(self.spec.seed, "dpr", g.index))
            elevation = self.dem_at(scans.lat, scans.lon)
            path = self.out / naming.dpr_pps_path(g.start, g.end, settings.version)
            writers.write_dpr(path, self.orbit, g, scans, rate, elevation, settings.version)
            self.report.files["dpr"] += 1
        self.report.timed("dpr", started)
        return [g for g in pending if g not in ready]

    def dem_at(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """Elevation (m) at footprint centres, bilinear in the DEM; NaN outside it."""
        g = self.dem_grid
        rows = (lat - g.lats[0]) / g.res
        cols = (lon - g.lons[0]) / g.res
        inside = (rows >= 0) & (rows <= g.nlat - 1) & (cols >= 0) & (cols <= g.nlon - 1)
        values = ndimage.map_coordinates(self.dem, [rows.ravel(), cols.ravel()], order=1, mode="nearest").reshape(lat.shape)
        return np.where(inside, values, np.nan)

    def write_manifest(self) -> None:
        manifest = {
            "format": MANIFEST_FORMAT,
            "nrt_version": __version__,
            "spec": self.spec.to_dict(),
            "truth_grid": {"res": self.grid.res, "extent": list(self.grid.extent), "shape": list(self.grid.shape)},
            "imerg_window": {"extent": list(self.window.grid.extent)},
            **self.report.as_dict(),
            "written_at": isoformat(datetime.now().astimezone()),
        }
        with atomic_path(self.out / naming.MANIFEST) as tmp:
            tmp.write_text(json.dumps(manifest, indent=2) + "\n")


def generate(spec: TwinSpec, out: str | os.PathLike, progress: Callable[[int], None] | None = None) -> GenerateReport:
    """Write the whole mirror tree for `spec` under `out` and return what was written and how long it took."""
    started = time.perf_counter()
    generator = Generator(spec, Path(out), progress)
    report = generator.run()
    report.seconds["total"] = time.perf_counter() - started
    generator.write_manifest()
    return report


def load_manifest(root: str | os.PathLike) -> dict:
    path = Path(root) / naming.MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(path, "no twin manifest (not a twin mirror tree)") from None
    except json.JSONDecodeError as exc:
        raise DataError(path, f"not valid JSON: {exc}") from None
