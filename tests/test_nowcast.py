"""Nowcast bridge on synthetic moving rain: motion, conservation, reproducibility and every degradation path."""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy.ndimage import gaussian_filter

from nrt import nowcast as nc
from nrt.nowcast.methods import AUTO_WORKERS_MAX, worker_count
from nrt.config import NowcastConfig
from nrt.degradation import NowcastReason
from nrt.errors import DataError
from nrt.grids import Domain

NY, NX = 80, 96
LAT0, LON0, RES = 40.05, -99.95, 0.1
T0 = pd.Timestamp("2024-06-01T10:00")


def rain_field(seed: int = 3, pad: int = 40) -> np.ndarray:
    """Smooth, patchy rain (about a third of the area wet, peaks of tens of mm/h) on a padded canvas."""
    rng = np.random.default_rng(seed)
    field = gaussian_filter(rng.normal(size=(NY + 2 * pad, NX + 2 * pad)), 4)
    field = np.clip(field / field.std() - 0.5, 0, None) * 8
    return field


def moving(field: np.ndarray, n: int, u: int, v: int, pad: int = 40) -> np.ndarray:
    """n frames of `field` moving u cells east (+lon) and v cells north (+lat) per frame, newest last."""
    return np.stack([field[pad - v * k : pad - v * k + NY, pad - u * k : pad - u * k + NX] for k in range(n)])


def as_frames(values: np.ndarray, times=None) -> xr.DataArray:
    times = times if times is not None else [T0 + pd.Timedelta(minutes=30 * k) for k in range(len(values))]
    return xr.DataArray(
        values.astype(np.float32),
        dims=("time", "lat", "lon"),
        coords={"time": pd.DatetimeIndex(times), "lat": LAT0 + RES * np.arange(NY), "lon": LON0 + RES * np.arange(NX)},
    )


def blob(cy: float, cx: float, radius: float = 4.0, peak: float = 12.0) -> np.ndarray:
    y, x = np.mgrid[:NY, :NX]
    field = peak * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * radius**2))
    return np.where(field >= 0.05, field, 0.0)


@pytest.fixture
def settings():
    return NowcastConfig(members=4, cascade_levels=5)


def expected_velocity_ms(u: float, v: float) -> tuple[float, float]:
    """Independent conversion of cells per 30 min to m/s at the fixture grid's central latitude."""
    lat_c = math.radians(LAT0 + RES * (NY - 1) / 2)
    metres_per_degree = 6371e3 * math.pi / 180
    return u * RES * metres_per_degree * math.cos(lat_c) / 1800, v * RES * metres_per_degree / 1800


def test_lucas_kanade_recovers_known_motion(settings):
    frames = as_frames(moving(rain_field(), 3, u=2, v=-1))
    result = nc.nowcast(frames, settings, method="extrapolation")
    assert result.method_used == "extrapolation" and result.degraded == []
    wet = frames.values[-1] > 1.0
    east, north = expected_velocity_ms(2, -1)
    assert float(np.median(result.velocity.sel(component="eastward").values[wet])) == pytest.approx(east, rel=0.05)
    assert float(np.median(result.velocity.sel(component="northward").values[wet])) == pytest.approx(north, rel=0.05)


def test_darts_is_selectable(settings):
    # VET is checked through the command (tests/test_nowcast_cli.py), in a single-threaded subprocess.
    frames = as_frames(moving(rain_field(), 3, u=2, v=1))
    settings.motion = "darts"
    result = nc.nowcast(frames, settings, method="extrapolation")
    assert result.method_used == "extrapolation"
    assert result.precip.attrs["nowcast_motion"] == "darts"
    east = result.velocity.sel(component="eastward").values[frames.values[-1] > 1.0]
    assert np.median(east) > 0  # the eastward drift is found (DARTS is coarse on 3 frames, see docs/nowcast.md)


def test_extrapolation_moves_and_conserves_rain_away_from_edges(settings):
    u, v = 2, 1
    frames = as_frames(np.stack([blob(30 + v * k, 25 + u * k) for k in range(3)]))
    result = nc.nowcast(frames, settings, method="extrapolation")
    assert result.method_used == "extrapolation"
    newest = frames.values[-1]
    y, x = np.mgrid[:NY, :NX]
    for lead in (1, 4, 8):
        field = result.precip.isel(member=0, time=lead - 1).values
        assert np.isfinite(field[20:60, 25:85]).all()
        assert np.nansum(field) == pytest.approx(newest.sum(), rel=0.02)
        total = np.nansum(field)
        centre = (np.nansum(field * y) / total, np.nansum(field * x) / total)
        assert centre == pytest.approx((32 + v * lead, 29 + u * lead), abs=0.3)


def test_motion_faster_than_the_buffer_allows_is_slowed_to_max_speed(settings):
    # 8 cells (about 67 km) per half-hour is ~135 km/h; the buffer of a 60 km/h setting holds half that distance,
    # so unclipped motion would carry the NaN from beyond the frames' edge deep inside them (the soak saw it).
    settings.max_speed_kmh = 60.0
    frames = as_frames(moving(rain_field(), 3, u=8, v=0))
    result = nc.nowcast(frames, settings, steps=2, method="extrapolation")
    assert NowcastReason.MOTION_CLIPPED in result.degraded
    east = result.velocity.sel(component="eastward").values
    north = result.velocity.sel(component="northward").values
    assert float(np.hypot(east, north).max()) * 3.6 <= 60.0 + 1e-3
    assert float(np.median(east[frames.values[-1] > 1.0])) * 3.6 > 55  # still eastward, at the limit
    buffer_cells = math.ceil(nc.buffer_degrees_for(60.0, 1.0, LAT0 + RES * NY) / RES)
    inner = result.precip.values[:, :, buffer_cells:-buffer_cells, buffer_cells:-buffer_cells]
    assert np.isfinite(inner).all()


def test_steps_members_whose_perturbed_motion_outruns_the_buffer_stay_finite(settings):
    # STEPS perturbs each member's motion (bps, Laplace-distributed, ~25 km/h at 2 h) on top of a motion already
    # clipped to max_speed_kmh, which the buffer is sized for: some members draw rain from beyond the frames' edge.
    # The soak saw such a member reach the domain as NaN, and the publisher refused the cycle on every attempt.
    settings.max_speed_kmh = 60.0
    frames = as_frames(moving(rain_field(), 3, u=8, v=0))
    result = nc.nowcast(frames, settings, steps=4, members=12, seed=5, method="steps")
    assert result.method_used == "steps"
    buffer_cells = math.ceil(nc.buffer_degrees_for(60.0, 2.0, LAT0 + RES * NY) / RES)
    assert np.isfinite(result.precip.values[:, :, :, buffer_cells:]).all()
    # what comes from beyond the frames is dry, as pysteps' outval="min" makes it: no rain is invented upwind
    assert float(np.nanmin(result.precip.values)) >= 0.0


def test_result_is_a_cf_dataarray_with_valid_times(settings):
    frames = as_frames(moving(rain_field(), 3, u=1, v=1))
    result = nc.nowcast(frames, settings, steps=8, members=3)
    da = result.precip
    assert da.dims == ("member", "time", "lat", "lon") and da.shape == (3, 8, NY, NX)
    assert da.dtype == np.float32 and da.name == "precipitation"
    assert da.attrs["units"] == "mm h-1" and da.attrs["standard_name"] == "lwe_precipitation_rate"
    assert da.attrs["nowcast_method"] == "steps" and da.attrs["nowcast_degraded"] == ""
    newest = T0 + pd.Timedelta(minutes=60)
    assert list(pd.DatetimeIndex(da["time"].values)) == [newest + pd.Timedelta(minutes=30 * k) for k in range(1, 9)]
    assert list(da["forecast_period"].values) == [30 * k for k in range(1, 9)]
    assert pd.Timestamp(da["forecast_reference_time"].values) == newest
    assert np.array_equal(da["lat"].values, frames["lat"].values)
    assert (np.nan_to_num(da.values) >= 0).all()


def test_steps_ensemble_reproduces_with_its_seed_and_spreads(settings):
    frames = as_frames(moving(rain_field(), 3, u=2, v=1))
    first = nc.nowcast(frames, settings, members=3, seed=11)
    again = nc.nowcast(frames, settings, members=3, seed=11)
    other = nc.nowcast(frames, settings, members=3, seed=12)
    assert first.method_used == "steps"
    np.testing.assert_array_equal(first.precip.values, again.precip.values)
    assert not np.allclose(np.nan_to_num(first.precip.values), np.nan_to_num(other.precip.values))
    last = np.nan_to_num(first.precip.values[:, -1])
    assert not np.allclose(last[0], last[1])  # members differ


def test_parallel_workers_give_the_serial_ensemble_bit_for_bit(settings, monkeypatch):
    import dask

    seen = []
    compute = dask.compute

    def spy(*args, **kwargs):  # pysteps' STEPS runs its members through dask.compute
        seen.append(kwargs.get("num_workers"))
        return compute(*args, **kwargs)

    monkeypatch.setattr(dask, "compute", spy)
    frames = as_frames(moving(rain_field(), 3, u=2, v=1))
    settings.num_workers = 1
    serial = nc.nowcast(frames, settings, members=4, seed=5)
    assert set(seen) == {1}
    seen.clear()
    settings.num_workers = 3
    parallel = nc.nowcast(frames, settings, members=4, seed=5)
    assert parallel.method_used == "steps" and max(seen) == 3
    # every member keeps its own seeded generator whichever thread runs it
    np.testing.assert_array_equal(serial.precip.values, parallel.precip.values)


def test_worker_count_defaults_to_the_usable_cores_up_to_the_cap(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(2)), raising=False)
    assert worker_count(0) == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert worker_count(0) == AUTO_WORKERS_MAX
    assert worker_count(12) == 12  # an explicit setting is taken as given
    with pytest.raises(ValueError, match="num_workers"):
        worker_count(-1)


def test_sprog_is_deterministic_and_follows_a_perfectly_advected_field(settings):
    frames = as_frames(moving(rain_field(), 3, u=2, v=1))
    result = nc.nowcast(frames, settings, members=2, method="sprog", seed=1)
    assert result.method_used == "sprog"
    np.testing.assert_array_equal(result.precip.values[0], result.precip.values[1])
    np.testing.assert_array_equal(result.precip.values, nc.nowcast(frames, settings, members=2, method="sprog", seed=2).precip.values)
    # The synthetic rain only moves, so every cascade level stays predictable and S-PROG keeps the advected pattern.
    extrapolated = nc.nowcast(frames, settings, members=1, method="extrapolation").precip.values[0, -1]
    sprog_last = result.precip.values[0, -1]
    both = np.isfinite(sprog_last) & np.isfinite(extrapolated)
    assert np.corrcoef(sprog_last[both], extrapolated[both])[0, 1] > 0.9


def test_missing_pixels_are_filled_then_remasked_along_the_motion(settings):
    u, v = 2, 1
    values = moving(rain_field(), 3, u=u, v=v)
    values[:, 30:40, 20:30] = np.nan
    result = nc.nowcast(as_frames(values), settings, steps=4)
    assert result.method_used == "steps"
    assert result.degraded == [NowcastReason.MISSING_PIXELS]
    assert result.precip.attrs["nowcast_degraded"] == NowcastReason.MISSING_PIXELS
    for lead in (1, 4):
        holes = np.isnan(result.precip.values[0, lead - 1])
        moved = np.zeros_like(holes)
        moved[30 + v * lead + 1 : 40 + v * lead - 1, 20 + u * lead + 1 : 30 + u * lead - 1] = True
        assert holes[moved].all()  # the missing area travels with the rain...
        interior = np.zeros_like(holes)
        interior[15:65, 20:80] = True
        interior[28 + v * lead : 42 + v * lead, 18 + u * lead : 32 + u * lead] = False
        assert not holes[interior].any()  # ...and nothing else inside the domain is lost


def test_missing_granule_uses_the_older_one_with_its_real_spacing(settings):
    u, v = 2, 1
    values = moving(rain_field(), 3, u=u, v=v)
    times = [T0, T0 + pd.Timedelta(minutes=60)]  # the 10:30 granule never came
    result = nc.nowcast(as_frames(values[[0, 2]], times), settings)
    assert NowcastReason.MISSING_GRANULE in result.degraded
    assert result.method_used == "extrapolation"  # STEPS needs two consecutive granules
    east, north = expected_velocity_ms(u, v)
    wet = values[-1] > 1.0
    assert float(np.median(result.velocity.sel(component="eastward").values[wet])) == pytest.approx(east, rel=0.05)
    assert float(np.median(result.velocity.sel(component="northward").values[wet])) == pytest.approx(north, rel=0.05)


def test_an_all_missing_granule_counts_as_missing(settings):
    values = moving(rain_field(), 4, u=2, v=1)
    values[1] = np.nan
    result = nc.nowcast(as_frames(values), settings)
    assert result.degraded == [NowcastReason.MISSING_GRANULE]
    assert result.method_used == "steps"  # the two newest granules are consecutive: AR(1) STEPS still runs


def test_missing_newest_granule_starts_from_the_older_one_with_extra_leads(settings):
    frames = as_frames(moving(rain_field(), 3, u=2, v=1))
    normal = nc.nowcast(frames, settings, steps=4, method="extrapolation")
    late = nc.nowcast(frames, settings, steps=3, method="extrapolation", lead_offset=1)
    assert late.degraded == [NowcastReason.MISSING_NEWEST]
    np.testing.assert_array_equal(late.precip["time"].values, normal.precip["time"].values[1:])
    assert list(late.precip["forecast_period"].values) == [60, 90, 120]
    np.testing.assert_allclose(late.precip.values, normal.precip.values[:, 1:], equal_nan=True)


def test_an_empty_newest_granule_shifts_the_start_but_not_the_valid_times(settings):
    values = moving(rain_field(), 4, u=2, v=1)
    expected = nc.nowcast(as_frames(values[:3]), settings, steps=3, method="extrapolation", lead_offset=1)
    values[3] = np.nan
    result = nc.nowcast(as_frames(values), settings, steps=2, method="extrapolation")
    assert result.degraded == [NowcastReason.MISSING_NEWEST]
    newest_given = T0 + pd.Timedelta(minutes=90)
    assert list(pd.DatetimeIndex(result.precip["time"].values)) == [newest_given + pd.Timedelta(minutes=m) for m in (30, 60)]
    np.testing.assert_allclose(result.precip.values, expected.precip.values[:, :2], equal_nan=True)


def test_dry_domain_gives_zero_rain(settings):
    result = nc.nowcast(as_frames(np.zeros((3, NY, NX))), settings, members=3)
    assert result.method_used == "zero" and result.degraded == [NowcastReason.DRY]
    assert result.precip.shape == (3, 8, NY, NX)
    assert (result.precip.values == 0).all()


def test_nearly_dry_domain_degrades_steps_to_extrapolation(settings):
    frames = as_frames(np.stack([blob(30 + k, 30 + 2 * k, radius=1.0) for k in range(3)]))
    assert 0 < (frames.values[-1] >= settings.rain_threshold_mmh).mean() < settings.min_wet_fraction
    result = nc.nowcast(frames, settings)
    assert result.method_used == "extrapolation" and result.degraded == [NowcastReason.NEARLY_DRY]
    assert np.nanmax(result.precip.values[0, 0]) > 1.0  # the little rain there is still moves on


def test_zero_motion_degrades_to_persistence(settings):
    still = np.repeat(rain_field()[np.newaxis, 40 : 40 + NY, 40 : 40 + NX], 3, axis=0)
    result = nc.nowcast(as_frames(still), settings, members=2)
    assert result.method_used == "persistence" and result.degraded == [NowcastReason.ZERO_MOTION]
    for lead in range(8):
        np.testing.assert_allclose(result.precip.values[1, lead], still[-1], rtol=1e-6)


def test_single_granule_gives_persistence(settings):
    values = moving(rain_field(), 1, u=0, v=0)
    result = nc.nowcast(as_frames(values), settings, steps=2)
    assert result.method_used == "persistence" and result.degraded == [NowcastReason.ZERO_MOTION]


def test_motion_failure_degrades_to_persistence(settings):
    # DARTS needs 3 or more consecutive frames; a gap leaves it two.
    settings.motion = "darts"
    values = moving(rain_field(), 3, u=2, v=1)
    result = nc.nowcast(as_frames(values[[0, 2]], [T0, T0 + pd.Timedelta(minutes=60)]), settings, steps=2)
    assert result.degraded == [NowcastReason.MISSING_GRANULE, NowcastReason.MOTION_FAILED]
    assert result.method_used == "persistence"
    np.testing.assert_allclose(result.precip.values[0, 1], values[-1], rtol=1e-6)


def test_method_failure_falls_back_to_extrapolation(settings):
    # A flat 3x3 shower: the motion is clear, but STEPS' AR fit finds a non-stationary process and raises.
    settings.min_wet_fraction = 0.0  # let it reach STEPS instead of stopping at the nearly-dry guard
    values = np.zeros((3, NY, NX))
    for k in range(3):
        values[k, 30:33, 30 + 2 * k : 33 + 2 * k] = 5.0
    result = nc.nowcast(as_frames(values), settings, steps=2)
    assert result.degraded == [NowcastReason.METHOD_FAILED]
    assert result.method_used == "extrapolation"
    assert np.nanmax(result.precip.values[:, 1, 30:33, 38:41]) == pytest.approx(5.0, rel=0.05)


def test_bad_input_is_refused(settings):
    frames = as_frames(moving(rain_field(), 3, u=1, v=1))
    with pytest.raises(ValueError, match="dims"):
        nc.nowcast(frames.transpose("time", "lon", "lat"), settings)
    with pytest.raises(ValueError, match="ascending"):
        nc.nowcast(frames.isel(lat=slice(None, None, -1)), settings)
    with pytest.raises(ValueError, match="unknown nowcast method"):
        nc.nowcast(frames, settings, method="magic")
    odd = as_frames(frames.values, [T0, T0 + pd.Timedelta(minutes=30), T0 + pd.Timedelta(minutes=75)])
    with pytest.raises(ValueError, match="multiples of 30 min"):
        nc.nowcast(odd, settings)
    with pytest.raises(DataError, match="every pixel"):
        nc.nowcast(frames * np.nan, settings)


def test_buffer_covers_the_distance_travelled():
    assert nc.buffer_degrees_for(80, 4, 0.0) == pytest.approx(320 / 111.195, rel=1e-4)
    assert nc.buffer_degrees_for(80, 4, 60.0) == pytest.approx(2 * 320 / 111.195, rel=1e-4)
    assert nc.buffer_degrees_for(80, 4, -60.0) == nc.buffer_degrees_for(80, 4, 60.0)
    iowa = Domain(-96.7, 40.3, -90.1, 43.6)
    grown = nc.nowcast_domain(iowa, NowcastConfig(max_speed_kmh=80, buffer_degrees=1.0), steps=8)
    needed = 320 / (111.195 * math.cos(math.radians(43.6)))
    assert grown.west == pytest.approx(iowa.west - needed) and grown.north == pytest.approx(iowa.north + needed)
    assert nc.nowcast_domain(iowa, NowcastConfig(max_speed_kmh=1, buffer_degrees=1.0), steps=8).south == pytest.approx(39.3)
