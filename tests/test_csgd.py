"""The CSGD statistical ensemble: distribution, fit, parameter files, noise and calibration."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import integrate, special

from nrt.cli import main
from nrt.csgd import csgd_ensemble, distribution, load_params, save_params
from nrt.csgd.fit import fit_climatology, fit_csgd, fit_regression
from nrt.csgd.regression import Climatology, CsgdParams, NoiseSettings, Regression
from nrt.errors import NrtError

CASES = [(1.3, 2.1, -0.7), (0.2, 1.0, -0.06), (4.0, 3.0, -0.5), (0.06, 0.51, -0.06)]


@pytest.mark.parametrize("mu,sigma,delta", CASES)
@pytest.mark.parametrize("y", [0.0, 0.05, 0.3, 2.0, 12.0])
def test_crps_closed_form_matches_integral_of_squared_cdf_differences(mu, sigma, delta, y):
    cdf = lambda x: float(distribution.cdf(x, mu, sigma, delta))  # noqa: E731
    below = integrate.quad(lambda x: cdf(x) ** 2, 0.0, y, limit=200)[0] if y > 0 else 0.0
    above = integrate.quad(lambda x: (1.0 - cdf(x)) ** 2, y, np.inf, limit=400)[0]
    assert float(distribution.crps(y, mu, sigma, delta)) == pytest.approx(below + above, rel=1e-6, abs=1e-9)


def test_crps_matches_ensemble_crps_of_many_draws():
    from nrt.verify.scores import crps_ensemble

    mu, sigma, delta = 1.3, 2.1, -0.7
    k, theta = distribution.shape_scale(mu, sigma)
    draws = np.maximum(np.random.default_rng(3).gamma(k, theta, (20000, 1)) + delta, 0.0)
    for y in (0.0, 0.5, 4.0):
        assert crps_ensemble(draws, np.array([y]))[0] == pytest.approx(float(distribution.crps(y, mu, sigma, delta)), rel=0.02)


@pytest.mark.parametrize("mu,sigma,delta", CASES)
def test_quantile_inverts_cdf_above_the_point_mass_and_is_zero_below(mu, sigma, delta):
    p0 = float(distribution.probability_of_zero(mu, sigma, delta))
    u = np.linspace(p0 + 1e-6, 1 - 1e-6, 50)
    assert distribution.cdf(distribution.quantile(u, mu, sigma, delta), mu, sigma, delta) == pytest.approx(u, abs=1e-9)
    assert np.all(distribution.quantile(np.linspace(0, p0, 10), mu, sigma, delta) == 0.0)
    y = np.array([0.01, 0.5, 3.0, 20.0])
    assert distribution.quantile(distribution.cdf(y, mu, sigma, delta), mu, sigma, delta) == pytest.approx(y, rel=1e-6)


def _params(noise=NoiseSettings(40.0, 90.0)) -> CsgdParams:
    return CsgdParams(Climatology(0.2, 1.0, -0.08), Regression(0.07, 0.33, 1.3, 0.86, rate_mean=0.2), noise)


def test_ensemble_shapes_nan_and_seed():
    rate = np.random.default_rng(0).gamma(0.5, 1.0, (3, 20, 30)).astype(np.float32)
    rate[1, 4, 5] = np.nan
    ens = csgd_ensemble(rate, _params(), members=8, cell_km=(5.5, 4.5), seed=7)
    assert ens.shape == (8, 3, 20, 30) and ens.dtype == np.float32
    assert np.isnan(ens[:, 1, 4, 5]).all() and np.isfinite(np.delete(ens.reshape(8, -1), 1 * 600 + 4 * 30 + 5, axis=1)).all()
    assert np.array_equal(ens, csgd_ensemble(rate, _params(), members=8, cell_km=(5.5, 4.5), seed=7), equal_nan=True)
    assert not np.array_equal(ens, csgd_ensemble(rate, _params(), members=8, cell_km=(5.5, 4.5), seed=8), equal_nan=True)
    per_member = np.stack([rate, np.zeros_like(rate)])
    two = csgd_ensemble(per_member, _params(), members=2, cell_km=(5.5, 4.5))
    assert np.nanmean(two[0]) > 3 * np.nanmean(two[1])
    with pytest.raises(ValueError, match="members"):
        csgd_ensemble(per_member, _params(), members=3, cell_km=(5.5, 4.5))


def test_builtin_params_load_and_round_trip(tmp_path):
    params = load_params("builtin:csgd")
    assert params.provenance["hours_utc"] == list(range(12))
    out = save_params(params, tmp_path / "p.json")
    assert load_params(out) == params


@pytest.mark.parametrize(
    "content,reason",
    [
        (None, "not found"),
        ("{not json", "not valid JSON"),
        ('{"format": "other"}', "not a CSGD parameter file"),
        ('{"format": "nrt-csgd", "version": 99}', "version 99"),
        ('{"format": "nrt-csgd", "version": 1, "climatology": {}}', "lacks"),
    ],
)
def test_bad_parameter_files_name_the_file_and_reason(tmp_path, content, reason):
    path = tmp_path / "params.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(NrtError, match=reason) as err:
        load_params(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_bad_values_are_refused(tmp_path):
    doc = json.loads(load_params.__globals__["builtin_path"]("builtin:csgd").read_text())
    doc["climatology"]["sigma"] = -1.0
    path = tmp_path / "neg.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(NrtError, match="sigma must be positive"):
        load_params(path)
    doc["climatology"]["sigma"] = float("nan")
    path.write_text(json.dumps(doc))
    with pytest.raises(NrtError, match="not a finite number"):
        load_params(path)


def test_fit_refuses_data_without_rain():
    rate = np.zeros((4, 20, 20))
    with pytest.raises(NrtError, match="too little rain"):
        fit_csgd(rate, rate, cell_km=(10.0, 10.0), step_minutes=60.0)
