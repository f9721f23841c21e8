"""Optional inputs (availability channels, random dropping), required channels, real-rain examples (issue 15)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from nrt.degradation import Fallback
from nrt.errors import DataError
from nrt.grids import LatLonGrid
from nrt.model.conditioning import ChannelSet, Conditioning, raw_channels
from nrt.model.normalize import ChannelStats

GRID = LatLonGrid(0.05, 40.025, -95.975, 8, 12)
NEW = ChannelSet(geosfp_variables=("TQV", "PRECTOT"), random_error=True, dem=True, position=False, masks=True)
OLD = ChannelSet(geosfp_variables=("TQV",), random_error=True, dem=False, position=True)


def _cond(geosfp=True, dem=True, error=True):
    rain = np.arange(24, dtype=np.float32).reshape(4, 6)
    geo = xr.Dataset({v: (("lat", "lon"), np.full(GRID.shape, 3.0, np.float32)) for v in ("TQV", "PRECTOT")})
    relief = xr.Dataset({v: (("lat", "lon"), np.full(GRID.shape, 200.0, np.float32)) for v in ("elevation", "elevation_std")})
    return Conditioning(rain, GRID, random_error=np.ones((4, 6), np.float32) if error else None,
                        geosfp=geo if geosfp else None, dem=relief if dem else None)


def test_new_channel_sets_have_availability_channels_and_no_position():
    assert NEW.names() == ["precip", "precip_random_error", "geosfp_TQV", "geosfp_PRECTOT", "dem_mean", "dem_std",
                           "has_random_error", "has_geosfp", "has_dem"]
    assert NEW.describe() == {"usable": NEW.names(), "required": ["precip"]}
    # old checkpoints (no masks, position channels) still load and require every input they were trained with
    assert ChannelSet.from_dict(OLD.to_dict()) == OLD and OLD.required() == ["precip", "precip_random_error", "geosfp_TQV"]


def test_absent_groups_are_nan_with_their_availability_channel_zero():
    full = raw_channels(_cond(), NEW)[0]
    assert np.all(full[-3:] == 1.0) and np.all(full[2:4] == 3.0)
    radar_like = raw_channels(_cond(geosfp=False, dem=False), NEW)[0]
    names = NEW.names()
    assert np.all(np.isnan(radar_like[[names.index(n) for n in ("geosfp_TQV", "geosfp_PRECTOT", "dem_mean", "dem_std")]]))
    assert radar_like[names.index("has_geosfp")].max() == 0 and radar_like[names.index("has_dem")].max() == 0
    assert np.all(radar_like[names.index("has_random_error")] == 1)
    np.testing.assert_array_equal(radar_like[:2], full[:2])


def test_a_required_channel_missing_is_one_error_line():
    with pytest.raises(DataError) as err:
        raw_channels(_cond(geosfp=False), OLD)
    assert "geosfp_TQV" in str(err.value) and "\n" not in str(err.value)


def test_training_drops_groups_exactly_as_an_absent_input_looks():
    from nrt.model.networks import NetworkSpec
    from nrt.model.spec import ModelSpec
    from nrt.model.train import drop_groups
    from nrt.model.transforms import PrecipTransform

    present = raw_channels(_cond(), NEW)[0]
    absent = raw_channels(_cond(geosfp=False), NEW)[0]
    stats = ChannelStats.fit(NEW.names(), [present, absent])
    net = NetworkSpec(in_channels=len(NEW.names()), model_channels=8, channel_mult=(1,), num_blocks=1)
    spec = ModelSpec(NEW, PrecipTransform("power", 1.0, 0.5), stats, ChannelStats.fit(["precip"], [present[:1]]),
                     net, NetworkSpec(**{**net.to_dict(), "in_channels": net.in_channels + 2}))
    z_present = spec.normalize_inputs(torch.from_numpy(present[None].repeat(64, axis=0)))
    z_absent = spec.normalize_inputs(torch.from_numpy(absent[None]))[0]
    dropped = drop_groups(z_present.clone(), spec, 0.5, np.random.default_rng(1))
    names = list(NEW.names())
    hidden = (dropped[:, names.index("has_geosfp")] == z_absent[names.index("has_geosfp")]).all(dim=(1, 2))
    assert 16 < int(hidden.sum()) < 48  # about half of 64, per group and example
    torch.testing.assert_close(dropped[hidden][:, 2:4], z_absent[2:4].expand(int(hidden.sum()), -1, -1, -1))
    torch.testing.assert_close(dropped[~hidden][:, 2:4], z_present[~hidden][:, 2:4])
    torch.testing.assert_close(dropped[:, 0], z_present[:, 0])  # precipitation is never dropped


def test_real_rain_examples_pair_truth_tiles_with_degraded_input():
    from nrt.errormodel import load_error_model
    from nrt.model.realset import real_rain_samples

    from scipy import ndimage

    rng = np.random.default_rng(0)
    smooth = ndimage.gaussian_filter(rng.normal(size=(2, 70, 90)), (0, 6, 6))  # rain cells ~30 km across
    rain = np.maximum(smooth / smooth.std() - 0.3, 0.0).astype(np.float32) * 4.0
    rain[:, :6] = np.nan  # outside radar coverage
    frames = xr.DataArray(rain, dims=("time", "lat", "lon"), coords={
        "time": pd.date_range("2020-06-01", periods=2, freq="30min"), "lat": 45.025 + 0.05 * np.arange(70),
        "lon": 5.025 + 0.05 * np.arange(90)})
    samples = real_rain_samples(frames, load_error_model(), NEW, tile=32, per_frame=4, leads=[0, 3], seed=5)
    assert len(samples) == 8 and {s.lead for s in samples} <= {0, 3}
    names = NEW.names()
    for s in samples:
        assert s.channels.shape == (len(names), 32, 32)
        np.testing.assert_array_equal(s.mask, np.isfinite(s.truth))
        assert np.all(s.channels[names.index("has_geosfp")] == 0) and np.all(s.channels[names.index("has_random_error")] == 1)
    # the input is the truth degraded, not the truth: it correlates with it, but is not equal to its 2x2 mean
    truth = np.concatenate([s.truth[s.mask] for s in samples])
    given = np.concatenate([s.channels[0][s.mask] for s in samples])
    assert 0.2 < np.corrcoef(truth, np.nan_to_num(given))[0, 1] < 0.99


def _spec_for(channels: ChannelSet, conds):
    from nrt.model.networks import NetworkSpec
    from nrt.model.spec import ModelSpec
    from nrt.model.transforms import PrecipTransform

    raws = [raw_channels(c, channels)[0] for c in conds]
    transform = PrecipTransform("power", 1.0, 0.5)
    transformed = [np.concatenate([transform.forward(r[:2]), r[2:]]) for r in raws]
    net = NetworkSpec(in_channels=len(channels.names()), model_channels=8, channel_mult=(1,), num_blocks=1)
    return ModelSpec(channels, transform, ChannelStats.fit(channels.names(), transformed),
                     ChannelStats.fit(["precip"], [transform.forward(r[:1]) for r in raws]), net,
                     NetworkSpec(**{**net.to_dict(), "in_channels": net.in_channels + 2}))


def test_input_guard_flags_another_domain_for_position_channels_and_missing_required_inputs():
    from nrt.model.guard import channel_z, check_inputs

    rng = np.random.default_rng(3)
    iowa = [LatLonGrid(0.05, 40.025 + 0.3 * k, -95.975 + 0.4 * k, 8, 12) for k in range(6)]

    def cond(grid, scale=1.0):
        return Conditioning(rng.gamma(0.5, 2.0 * scale, (4, 6)).astype(np.float32), grid,
                            random_error=np.ones((4, 6), np.float32), geosfp=_cond().geosfp)

    spec = _spec_for(OLD, [cond(g) for g in iowa])
    home = check_inputs(spec, [cond(iowa[2])], max_z=4.0)
    assert home.reason is None and home.max_z < 4.0
    tropics = check_inputs(spec, [cond(LatLonGrid(0.05, 5.025, 100.025, 8, 12))], max_z=4.0)
    assert tropics.reason == Fallback.INPUTS_OUT_OF_DISTRIBUTION and "sin_lat" in tropics.detail and tropics.max_z > 6
    # z of the latitude channel, computed independently from the stored statistics
    z = (np.mean(np.sin(np.radians(LatLonGrid(0.05, 5.025, 100.025, 8, 12).lats))) - spec.input_stats.mean[OLD.names().index("sin_lat")]) \
        / spec.input_stats.std[OLD.names().index("sin_lat")]
    assert channel_z(spec, cond(LatLonGrid(0.05, 5.025, 100.025, 8, 12)))["sin_lat"] == pytest.approx(z, rel=1e-4)
    no_geos = Conditioning(np.ones((4, 6), np.float32), iowa[0], random_error=np.ones((4, 6), np.float32))
    assert check_inputs(spec, [no_geos], max_z=4.0).reason == Fallback.INPUTS_MISSING
    # a masked checkpoint takes the same inputs without GEOS-FP: absent groups are not scored
    masked = _spec_for(NEW, [_cond(), _cond(geosfp=False, dem=False)])
    assert check_inputs(masked, [_cond(geosfp=False, dem=False)], max_z=4.0).reason is None


def test_prepared_events_are_read_once_and_a_changed_event_is_prepared_again(tmp_path, monkeypatch):
    from datetime import datetime, timezone

    from nrt.realrain import cache
    from nrt.realrain.events import Event

    (tmp_path / "radar").mkdir()
    (tmp_path / "radar" / "a.h5").write_bytes(b"x" * 10)
    calls = []
    frames = xr.DataArray(np.arange(24, dtype=np.float32).reshape(2, 3, 4), dims=("time", "lat", "lon"), coords={
        "time": pd.date_range("2020-06-01", periods=2, freq="30min"), "lat": [1.025, 1.075, 1.125],
        "lon": [2.025, 2.075, 2.125, 2.175]}, attrs={"averaging_period_minutes": 30.0})

    def read(event, radar_dir, progress=None):
        calls.append(event.name)
        return frames

    monkeypatch.setattr(cache, "event_frames", read)
    event = Event("e", "knmi", ("*.h5",), datetime(2020, 6, 1, tzinfo=timezone.utc), datetime(2020, 6, 2, tzinfo=timezone.utc))
    cache.cached_event_frames(event, tmp_path / "radar", tmp_path / "cache")
    again = cache.cached_event_frames(event, tmp_path / "radar", tmp_path / "cache")
    assert calls == ["e"]
    np.testing.assert_array_equal(again.values, frames.values)
    np.testing.assert_array_equal(again.time.values, frames.time.values)
    np.testing.assert_allclose(again.lat, frames.lat)
    (tmp_path / "radar" / "a.h5").write_bytes(b"x" * 11)  # a replaced file is a new cache entry, never a stale hit
    cache.cached_event_frames(event, tmp_path / "radar", tmp_path / "cache")
    assert calls == ["e", "e"] and len(list((tmp_path / "cache").glob("e-*.npz"))) == 2
