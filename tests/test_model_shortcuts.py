"""Shortcut guards on the shipped checkpoint (issue 15, item 6): the model must follow IMERG, not an auxiliary input.

Small synthetic inputs on a 64 x 64 (0.05°) domain, 8 members and the default (4-evaluation) sampler keep each
test to seconds; the last test scores held-out real rain (skipped without ../shared/data).
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from nrt.grids import LatLonGrid
from nrt.model.conditioning import Conditioning, upsample
from nrt.model.inference import Downscaler

GRID = LatLonGrid(0.05, 35.025, 10.025, 64, 64)  # away from the twin's Iowa: the model keeps no position
MEMBERS = 8


@pytest.fixture(scope="module")
def model():
    from nrt import config

    return Downscaler.load("builtin:demo", "cpu", config.ModelConfig(device="cpu", patch_size=64, patch_overlap=8))


def _mean(model, coarse, seed=0, **inputs):
    cond = Conditioning(coarse[None].astype(np.float32), GRID, lead=0, **inputs)
    return model.sample(cond, members=MEMBERS, seed=seed).mean(axis=0)


def _blob(row, col, peak=6.0, width=3.0):
    r, c = np.mgrid[0:32, 0:32]
    return peak * np.exp(-((r - row) ** 2 + (c - col) ** 2) / (2 * width**2))


def _centroid(field):
    r, c = np.mgrid[0 : field.shape[0], 0 : field.shape[1]]
    return np.array([(field * r).sum(), (field * c).sum()]) / field.sum()


def test_moving_the_rain_in_imerg_moves_the_ensemble_mean_with_it(model):
    here, there = _mean(model, _blob(10, 10)), _mean(model, _blob(18, 22))
    moved = _centroid(there) - _centroid(here)
    expected = np.array([16.0, 24.0])  # 8 x 12 IMERG cells = 16 x 24 cells at 0.05°
    assert np.all(np.abs(moved - expected) <= 2.0), f"centroid moved {moved}, IMERG moved {expected}"


def test_the_ensemble_mean_rises_with_the_input_rate(model):
    r, c = np.mgrid[0:32, 0:32]
    ramp = (0.05 * np.exp(np.log(12 / 0.05) * c / 31) * (1 + 0.1 * np.sin(r / 3))).astype(np.float32)  # 0.05..13 mm/h
    mean = _mean(model, ramp)
    given = upsample(ramp)
    edges = [0.0, 0.1, 0.5, 1.0, 2.0, 5.0, 20.0]
    binned = [float(mean[(given >= lo) & (given < hi)].mean()) for lo, hi in zip(edges[:-1], edges[1:])]
    assert np.all(np.diff(binned) > 0), f"ensemble mean by input bin {edges}: {binned}"


def test_no_imerg_rain_under_wet_geosfp_stays_dry(model):
    stats = model.spec.input_stats
    wet = {"PRECTOT": 3.0, "TQV": 2.0, "TQL": 3.0, "QV2M": 2.0}  # standard deviations above the training mean
    variables = model.spec.channels.geosfp_variables
    assert "PRECTOT" in variables
    geosfp = xr.Dataset({
        v: (("lat", "lon"), np.full(GRID.shape, stats.mean[stats.names.index(f"geosfp_{v}")]
                                    + wet.get(v, 0.0) * stats.std[stats.names.index(f"geosfp_{v}")], np.float32))
        for v in variables})
    mean = _mean(model, np.zeros((32, 32)), geosfp=geosfp, random_error=np.zeros((32, 32), np.float32))
    assert float(mean.mean()) < 0.02, f"domain mean {mean.mean():.4f} mm/h from dry IMERG under wet GEOS-FP"


def test_without_geosfp_the_ensemble_beats_its_input_on_held_out_real_rain(model, shared_data):
    from pysteps.verification import probscores

    from nrt.errormodel import load_error_model
    from nrt.model.realset import real_rain_cases
    from nrt.realrain.events import event_frames, load_catalogue

    event = load_catalogue().events["mch-20170131"]  # held out: the only cold-season event
    assert load_catalogue().is_held_out(event.name)
    frames = event_frames(event, shared_data / "radar")
    cases = real_rain_cases(frames, load_error_model(), tile=64, per_frame=2, seed=99)[:6]
    crps, abs_err, n = probscores.CRPS_init(), 0.0, 0
    for k, (cond, truth, _) in enumerate(cases):
        assert cond.geosfp is None and cond.dem is None
        members = model.sample(cond, members=MEMBERS, seed=k)
        bilinear = upsample(cond.precip)[0]
        valid = np.isfinite(truth) & np.isfinite(bilinear)
        probscores.CRPS_accum(crps, members[:, valid][:, :, None], truth[valid][:, None])
        abs_err += float(np.abs(bilinear[valid] - truth[valid]).sum())
        n += int(valid.sum())
    assert n > 5000
    assert probscores.CRPS_compute(crps) < abs_err / n
