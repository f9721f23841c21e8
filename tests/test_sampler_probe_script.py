"""scripts/sampler_probe.py's measure: a candidate's ensemble spread against the reference's, by rain rate."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import script_module


@pytest.fixture(scope="module")
def probe():
    with script_module("sampler_probe") as module:
        yield module


def test_spread_by_rate_finds_a_sampler_narrow_in_light_rain_and_wide_in_heavy(probe):
    rng = np.random.default_rng(3)
    rate = np.where(np.arange(40 * 40).reshape(1, 40, 40) % 2, 0.5, 8.0)  # light and heavy cells, checkerboard-like
    reference = rate[:, None] + 0.3 * rng.normal(size=(2, 30, 40, 40)) * np.sqrt(rate[:, None])
    mean = reference.mean(axis=1, keepdims=True)
    candidate = mean + (reference - mean) * np.where(rate[:, None] < 1, 0.5, 1.25)
    candidate[0, :, 0, 0] = np.nan  # a gap counts for neither
    pooled, bins = probe.spread_by_rate(candidate, reference)
    shares = {label: (share, cells) for label, share, cells in bins}
    assert shares["0.2-1"][0] == pytest.approx(0.5, rel=1e-6) and shares["4-16"][0] == pytest.approx(1.25, rel=1e-6)
    assert shares["0.2-1"][1] + shares["4-16"][1] == 2 * 40 * 40 - 1 and np.isnan(shares["0-0.2"][0])
    variance, reference_variance = candidate.var(axis=1), reference.var(axis=1)
    valid = np.isfinite(variance)
    assert pooled == pytest.approx(np.sqrt(variance[valid].sum() / reference_variance[valid].sum()), rel=1e-9)
    assert 0.5 < pooled < 1.25


def test_candidates_parse_into_sampler_settings_and_bad_keys_are_named(probe):
    settings = probe.parse("solver=dpm2m,steps=6,sigma_max=30,rho=5,denoise_to_zero=false,residual_scale=1.1")
    assert (settings.solver, settings.steps, settings.sigma_max, settings.rho) == ("dpm2m", 6, 30.0, 5.0)
    assert settings.residual_scale == 1.1 and not settings.denoise_to_zero and settings.evaluations == 5
    with pytest.raises(SystemExit, match="'sigma' is not a SamplerSettings field"):
        probe.parse("solver=dpm2m,sigma=3")
    assert probe.parse("residual_scale_by_rate=0.1:1.9/32:1.05").residual_scale_by_rate == ((0.1, 1.9), (32.0, 1.05))
    with pytest.raises(SystemExit, match="takes rate:factor/rate:factor"):
        probe.parse("residual_scale_by_rate=0.1-1.9")
    with pytest.raises(SystemExit, match="takes true or false"):
        probe.parse("denoise_to_zero=yes")


def test_tiles_are_picked_evenly_or_by_the_wettest_input_never_by_truth(probe):
    from types import SimpleNamespace

    rates = [0.1, 5.0, 0.0, 2.0, np.nan, 9.0, 0.3, np.nan]
    found = [(SimpleNamespace(precip=np.full((1, 4, 4), r)), np.full((8, 8), 100.0 - k), k) for k, r in enumerate(rates)]
    found[1][0].precip[0, 0, 0] = np.nan  # a gap in the input does not hide its rain
    assert [case[2] for case in probe.pick_tiles(found, 3, wettest=False)] == [2, 4, 6]  # the quartiles
    assert [case[2] for case in probe.pick_tiles(found, 3, wettest=True)] == [5, 1, 3]
    assert [case[2] for case in probe.pick_tiles(found, 8, wettest=True)][-2:] == [4, 7]  # no input at all: last
