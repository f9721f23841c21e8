"""Statistics of the twin: IMERG's errors from the fitted error model, DPR coverage from the orbit geometry, the
world's forcings, and GEOS-FP fields that agree with their own rain. Values are recomputed here from the files and
from geometry."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import h5py
import netCDF4
import numpy as np
import pytest
import xarray as xr
from scipy.spatial import cKDTree

from nrt.errormodel import degrade, load_error_model
from nrt.grids import Domain, target_grid
from nrt.twin import naming, orbit, truth
from nrt.twin.generate import imerg_seed
from nrt.twin.spec import DprSettings, WorldSettings
from nrt.twin.writers import read_truth
from twin_helpers import IOWA, START, make_tree, small_spec

SEED = 11


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return make_tree(tmp_path_factory.mktemp("twin"), small_spec(START, START + timedelta(hours=6), seed=SEED))


def imerg_vs_truth(tree: Path, variable: str = "precipitation"):
    """(IMERG `variable`, truth averaged to 0.1°) over the truth region, read straight from the files."""
    rain = read_truth(tree)
    lat, lon = rain["lat"].values, rain["lon"].values
    t = rain.values.reshape(rain.shape[0], lat.size // 2, 2, lon.size // 2, 2).mean(axis=(2, 4))
    lat01, lon01 = lat.reshape(-1, 2).mean(axis=1), lon.reshape(-1, 2).mean(axis=1)
    estimates = []
    for start in rain["time"].values:
        when = datetime.fromisoformat(str(start)[:19]).replace(tzinfo=timezone.utc)
        path = next((tree / "pps/imerg/early").rglob(f"*{when:%Y%m%d}-S{when:%H%M%S}*.RT-H5"))
        with h5py.File(path, "r") as f:
            glat, glon = f["Grid/lat"][:], f["Grid/lon"][:]
            rows = np.flatnonzero(np.isclose(glat[:, None], lat01[None, :], atol=1e-3).any(axis=1))
            cols = np.flatnonzero(np.isclose(glon[:, None], lon01[None, :], atol=1e-3).any(axis=1))
            estimates.append(f[f"Grid/{variable}"][0, cols[0] : cols[-1] + 1, rows[0] : rows[-1] + 1].T)
    return np.stack(estimates).astype(np.float64), t, lat01, lon01


def test_imerg_is_the_fitted_error_model_applied_to_the_truth(tree):
    """The granules hold `degrade(truth)` with the built-in model and the day's seed, recomputed here from the
    truth file; so the twin's IMERG errs like real IMERG Early against Stage IV (see tests/test_errormodel.py)."""
    est, t, lat01, lon01 = imerg_vs_truth(tree)
    rain = read_truth(tree)
    model = load_error_model()
    expected = degrade(rain.values, 0.05, model, imerg_seed(SEED, START), 30.0, latitude=float(rain["lat"].mean()))
    assert est.shape == expected.precipitation.shape and (est >= 0).all()
    close = np.isclose(est, expected.precipitation, rtol=1e-3, atol=1e-3)
    assert close.mean() > 0.999  # the truth file is float32; a rare threshold may fall the other way
    # The same errors cost more correlation here than on Stage IV (0.54): the twin's half-hourly rain has
    # smaller, shorter-lived cells than hourly radar at 0.1°, so the displacement and smoothing bite harder.
    assert 0.2 < np.corrcoef(est.ravel(), t.ravel())[0, 1] < 0.7
    assert est.mean() / t.mean() == pytest.approx(model.bias, rel=0.3)


def test_imerg_misses_light_rain_and_has_false_alarms(tree):
    est, t, _, _ = imerg_vs_truth(tree)
    light = (t > 0) & (t < 0.3)
    missed = (est[light] < 0.1).mean()
    false_alarms = (est[t == 0] >= 0.1).mean()
    detected_heavy = (est[t > 5] > 0).mean()
    assert missed > 0.15 and detected_heavy > 0.8  # heavy cores are still seen, if displaced
    assert 0.003 < false_alarms < 0.2


def test_imerg_random_error_grows_with_the_rate_like_the_real_rms_error(tree):
    est, t, _, _ = imerg_vs_truth(tree)
    error = imerg_vs_truth(tree, "randomError")[0]
    model = load_error_model()
    raining = est > 0
    np.testing.assert_allclose(error[~raining], model.random_error_floor_mmh, rtol=1e-5)
    rms_actual = np.sqrt(np.mean((est[raining] - t[raining]) ** 2))
    assert 0.5 < np.sqrt(np.mean(error[raining] ** 2)) / rms_actual < 2.0
    bins = [(0.0, 1.0), (1.0, 5.0), (5.0, np.inf)]
    predicted = [np.mean(error[raining & (est >= lo) & (est < hi)]) for lo, hi in bins]
    assert predicted[0] < predicted[1] < predicted[2]  # larger rates, larger errors, as in IMERG


def test_imerg_liquid_probability_follows_the_season(tree):
    plp = imerg_vs_truth(tree, "probabilityLiquidPrecipitation")[0]
    assert (plp >= 0).all() and (plp <= 100).all() and np.median(plp) == 100  # June in Iowa: rain, not snow


def test_dpr_coverage_per_day_matches_the_orbit_geometry():
    """Fraction of domain cells inside the swath per day, from the simulated footprints, vs swath width x crossings."""
    settings = DprSettings()
    gpm = orbit.Orbit.from_settings(settings)
    grid = target_grid(IOWA)
    cells = unit_vectors(*grid.lonlats())
    reach = (settings.footprint_km / math.sqrt(2)) / 6371.0  # farthest a point inside the swath is from a footprint
    covered_fraction = []
    for k in range(60):  # every other day over four months: passes drift across the domain from day to day
        day = datetime(2024, 1, 1, tzinfo=timezone.utc) + timedelta(days=2 * k)
        covered = np.zeros(len(cells), bool)
        for g in orbit.granules_over(gpm, IOWA, day, day + timedelta(days=1), settings):
            scans = orbit.granule_scans(gpm, g, settings)
            near = orbit.in_region(scans.lat, scans.lon, IOWA.buffered(0.5))
            distance, _ = cKDTree(unit_vectors(scans.lon[near], scans.lat[near])).query(cells, distance_upper_bound=reach)
            covered |= np.isfinite(distance)
        covered_fraction.append(covered.mean())
    # Independent estimate. A strip of width W (swath + one footprint) crosses each latitude circle twice per
    # orbit, ascending and descending, covering W / |cos A| of the circle (A: ground-track azimuth from the
    # inclination and Earth's rotation). Per day each direction covers a fraction N/2; the two are independent.
    radius, period = 6371.0, 2 * math.pi * math.sqrt((6378.137 + settings.altitude_km) ** 3 / 398600.4418)
    lats = np.radians(np.linspace(IOWA.south, IOWA.north, 41))
    sin_a = math.cos(math.radians(settings.inclination_degrees)) / np.cos(lats)
    speed = 2 * math.pi * radius / period
    east = speed * sin_a - 7.292e-5 * radius * np.cos(lats)
    north = speed * np.sqrt(1 - sin_a**2)
    cos_azimuth = north / np.hypot(east, north)
    width = settings.swath_km + settings.footprint_km
    crossings = np.mean(2 * (86400 / period) * width / (cos_azimuth * 2 * math.pi * radius * np.cos(lats)))
    expected = 1 - (1 - crossings / 2) ** 2
    assert np.mean(covered_fraction) == pytest.approx(expected, rel=0.15)
    assert 0 == min(covered_fraction) < max(covered_fraction) < 1  # some days see no overpass, none sees it all


def unit_vectors(lon_degrees, lat_degrees) -> np.ndarray:
    lon, lat = np.radians(np.ravel(lon_degrees)), np.radians(np.ravel(lat_degrees))
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=-1)


def test_dpr_granule_samples_the_truth_with_small_noise(tree):
    spec = small_spec()
    gpm = orbit.Orbit.from_settings(spec.dpr)
    path = next((tree / naming.DPR_FOLDER).glob("*.RT-H5"))
    (g,) = [g for g in orbit.granules_over(gpm, IOWA, START, START + timedelta(hours=6), spec.dpr)
            if path.name == naming.dpr_pps_path(g.start, g.end, spec.dpr.version).name]
    scans = orbit.granule_scans(gpm, g, spec.dpr)
    rain = read_truth(tree)
    with h5py.File(path, "r") as f:
        assert np.allclose(f["FS/Latitude"][:], scans.lat, atol=1e-4)
        assert np.allclose(f["FS/Longitude"][:], scans.lon, atol=1e-4)
        rate = f["FS/SLV/precipRateNearSurface"][:]
        seconds = f["FS/ScanTime/SecondOfDay"][:]
    valid = rate != np.float32(-9999.9)
    assert 1000 < valid.sum() < rate.size  # only the twin's region has values
    rows, cols = np.nonzero(valid)
    step = (seconds[rows] // 1800).astype(int) - START.hour * 2
    lat, lon = rain["lat"].values, rain["lon"].values
    i = np.clip(np.round((scans.lat[rows, cols] - lat[0]) / 0.05).astype(int), 0, lat.size - 1)
    j = np.clip(np.round((scans.lon[rows, cols] - lon[0]) / 0.05).astype(int), 0, lon.size - 1)
    nearest = rain.values[step, i, j]
    observed = rate[valid]
    assert np.corrcoef(nearest, observed)[0, 1] > 0.85
    assert observed.mean() == pytest.approx(nearest.mean(), rel=0.2)


# ---------------------------------------------------------------- the world itself

SMALL = Domain(-96, 40, -92, 43)


def run_world(seed: int, hours: int = 48, **settings):
    world_settings = replace(WorldSettings(buffer_degrees=1.0), **settings)
    grid = target_grid(SMALL.buffered(world_settings.buffer_degrees))
    relief = truth.synthetic_relief(truth.dem_grid(grid, 0.01), world_settings, seed)
    elevation = truth.block_mean(relief, 5)
    starts = [datetime(2024, 6, 1, tzinfo=timezone.utc) + k * timedelta(minutes=30) for k in range(2 * hours)]
    return grid, elevation, list(truth.World(world_settings, grid, elevation, seed).frames(starts))


def test_world_is_reproducible_from_its_seed():
    _, _, a = run_world(5, hours=3)
    _, _, b = run_world(5, hours=3)
    _, _, c = run_world(6, hours=3)
    assert all(np.array_equal(x.rain, y.rain) for x, y in zip(a, b))
    assert not np.array_equal(a[-1].rain, c[-1].rain)
    assert 0.02 < np.mean([(f.rain > 0).mean() for f in a]) < 0.6


def test_world_rain_moves_with_the_wind():
    grid, _, frames = run_world(8, hours=6, diurnal_amplitude=0.0, orographic_strength=0.0, wind_speed_ms=15.0)
    dy, dx = truth.cell_km(grid)
    lagrangian, eulerian = [], []
    for a, b in zip(frames[:-1], frames[1:]):
        u, v = a.wind
        shift = (round(v * 1.8 / dy), round(u * 1.8 / dx))
        moved = np.roll(a.rain, shift, axis=(0, 1))[20:-20, 20:-20]
        lagrangian.append(np.corrcoef(moved.ravel(), b.rain[20:-20, 20:-20].ravel())[0, 1])
        eulerian.append(np.corrcoef(a.rain[20:-20, 20:-20].ravel(), b.rain[20:-20, 20:-20].ravel())[0, 1])
    assert np.mean(lagrangian) > np.mean(eulerian) + 0.05


def test_world_has_a_diurnal_cycle():
    _, _, frames = run_world(1, diurnal_amplitude=1.0, orographic_strength=0.0)
    wet = np.array([(f.rain > 0).mean() for f in frames])
    local = np.array([(f.start.hour + f.start.minute / 60 + 0.25 - 94 / 15) % 24 for f in frames])
    from_peak = np.abs((local - 17.0 + 12) % 24 - 12)
    assert wet[from_peak < 3].mean() > 3 * wet[from_peak > 9].mean()


@pytest.mark.parametrize("strength, low, high", [(0.5, 2.0, math.inf), (0.0, 0.7, 1.4)])
def test_world_rains_more_on_windward_slopes(strength, low, high):
    grid, elevation, frames = run_world(2, diurnal_amplitude=0.0, orographic_strength=strength)
    windward, lee = [], []
    for f in frames:
        lift = truth.upslope_lift(elevation, grid, f.wind)
        windward.append(f.rain[lift > 0.025].mean())
        lee.append(f.rain[lift < -0.025].mean())
    assert low < np.mean(windward) / np.mean(lee) < high


# ---------------------------------------------------------------- GEOS-FP: its state follows its own rain


def test_geosfp_state_follows_its_own_rain_not_the_truth(tree):
    """Humidity, cloud water, pressure, ascent and convergence sit under the forecast's rain; the truth shows through
    only as weakly as the forecast's rain itself does (tests/test_twin_geosfp_honest.py measures that)."""
    rain = read_truth(tree)
    valid = START + timedelta(hours=2, minutes=30)
    hour = rain.sel(time=[np.datetime64(valid.replace(tzinfo=None) - np.timedelta64(30, "m")),
                          np.datetime64(valid.replace(tzinfo=None))]).mean("time")
    init = START
    read = {}
    for collection in naming.GEOSFP_COLLECTIONS:
        with netCDF4.Dataset(tree / naming.geosfp_forecast_path(collection, init, valid)) as nc:
            lat, lon = nc["lat"][:], nc["lon"][:]
            rows = np.flatnonzero((lat > IOWA.south - 2) & (lat < IOWA.north + 2))
            cols = np.flatnonzero((lon > IOWA.west - 2) & (lon < IOWA.east + 2))
            for name in nc.variables:
                if nc[name].ndim == 3:
                    read[name] = np.ma.filled(nc[name][0, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], np.nan)
    truth_there = hour.interp(lat=lat[rows], lon=lon[cols]).values
    assert all(np.isfinite(v).all() for v in read.values())
    forecast = read["PRECTOT"] * 3600  # kg m-2 s-1 -> mm/h
    wet, dry = forecast > 1.0, forecast == 0
    assert wet.sum() >= 5 and dry.sum() >= 5
    assert read["TQV"][wet].mean() > read["TQV"][dry].mean() + 3  # moister where the forecast rains
    assert read["QV2M"][wet].mean() > read["QV2M"][dry].mean()
    assert read["TQL"][wet].mean() > read["TQL"][dry].mean() + 0.1
    assert read["SLP"][wet].mean() < read["SLP"][dry].mean() - 100
    assert read["OMEGA500"][wet].mean() < -0.3 < read["OMEGA500"][dry].mean() + 0.3  # ascent under its rain
    # Convergence where it rains: the divergence of the 10 m wind is negative on average there.
    dudx = np.gradient(read["U10M"], axis=1) / (0.3125 * 111.195 * np.cos(np.radians(lat[rows]))[:, None])
    dvdy = np.gradient(read["V10M"], axis=0) / (0.25 * 111.195)
    divergence = dudx + dvdy
    assert divergence[wet].mean() < 0 < divergence[dry].mean() + 1e-3
    # The state is a function of the forecast rain: cloud water tracks it closely, and the truth only as far as
    # the forecast rain does.
    r_forecast = np.corrcoef(read["TQL"].ravel(), forecast.ravel())[0, 1]
    r_truth = np.corrcoef(read["TQL"].ravel(), truth_there.ravel())[0, 1]
    assert r_forecast > 0.8 and r_truth < r_forecast - 0.3
    # The run's steering wind: the advecting wind plus an error of a few m/s that moves its rain off position.
    u, v = truth_wind(tree, valid)
    assert np.all(read["U850"] == read["U850"].flat[0]) and np.all(read["V850"] == read["V850"].flat[0])
    assert math.hypot(read["U850"].flat[0] - u, read["V850"].flat[0] - v) < 5.0
    assert np.mean(read["U10M"]) == pytest.approx(read["U850"].flat[0], abs=1.0)
    assert np.mean(read["V10M"]) == pytest.approx(read["V850"].flat[0], abs=1.0)


def truth_wind(tree: Path, valid: datetime) -> tuple[float, float]:
    with xr.open_dataset(tree / naming.truth_path(valid)) as ds:
        at = ds.sel(time=np.datetime64(valid.replace(tzinfo=None)))
        return float(at["u_wind"]), float(at["v_wind"])


def test_twin_for_a_config_covers_the_nowcast_upwind_buffer(cfg):
    """A twin narrower than the nowcast's reading area would leave NaN edges in every IMERG granule."""
    from datetime import datetime, timezone

    from nrt.nowcast import nowcast_domain
    from nrt.twin.spec import spec_for_config

    start = datetime(2024, 6, 1, tzinfo=timezone.utc)
    spec = spec_for_config(cfg, start, start.replace(hour=6))
    box = cfg.domain.box()
    covered = box.buffered(spec.world.buffer_degrees)
    wide = nowcast_domain(box, cfg.nowcast, steps=cfg.nowcast.steps + 1)
    assert covered.west <= wide.west and covered.east >= wide.east
    assert covered.south <= wide.south and covered.north >= wide.north
    assert spec.world.buffer_degrees > 3.0  # Iowa at 80 km/h over 4.5 h needs more than the 3° floor
