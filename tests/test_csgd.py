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


def test_fit_refuses_data_without_rain_or_without_consecutive_frames():
    rate = np.zeros((4, 20, 20))
    with pytest.raises(NrtError, match="too little rain"):
        fit_csgd(rate, rate, cell_km=(10.0, 10.0), step_minutes=60.0)
    wet = np.random.default_rng(1).gamma(0.5, 1.0, (1, 30, 30))
    with pytest.raises(NrtError, match="in time"):
        fit_csgd(wet, wet, cell_km=(10.0, 10.0), step_minutes=60.0)


def test_fit_recovers_a_known_climatology():
    clim = Climatology(0.8, 1.6, -0.3)
    k, theta = distribution.shape_scale(clim.mu, clim.sigma)
    truth = np.maximum(np.random.default_rng(5).gamma(k, theta, 6000) + clim.delta, 0.0)
    fitted = fit_climatology(truth)
    assert (fitted.mu, fitted.sigma, fitted.delta) == pytest.approx((clim.mu, clim.sigma, clim.delta), rel=0.12)


def test_fit_recovers_a_known_regression():
    clim = Climatology(0.3, 1.2, -0.1)
    true = Regression(0.5, 0.3, 1.5, 0.8, rate_mean=0.4)
    rng = np.random.default_rng(11)
    rate = np.round(np.where(rng.random(5000) < 0.4, rng.gamma(0.6, 1.5, 5000), 0.0), 1)
    mu, sigma, delta = true and CsgdParams(clim, true, NoiseSettings(1, 1)).distribution(rate)
    k, theta = distribution.shape_scale(mu, sigma)
    truth = np.maximum(rng.gamma(k, theta) + delta, 0.0)
    fitted, fitted_crps = fit_regression(rate, truth, clim)
    true_crps = float(distribution.crps(truth, mu, sigma, delta).mean())
    assert fitted_crps <= true_crps + 1e-9  # the optimum is at least as good as the generating parameters...
    grid = np.array([0.0, 0.5, 2.0, 6.0])
    for fitted_values, true_values in zip(CsgdParams(clim, fitted, NoiseSettings(1, 1)).distribution(grid),
                                          CsgdParams(clim, true, NoiseSettings(1, 1)).distribution(grid)):
        assert fitted_values == pytest.approx(true_values, rel=0.2)  # ...and close to them across rates


def _lag_correlation(z: np.ndarray, axis: int, lag: int) -> float:
    """Pearson correlation of z with itself shifted by `lag` along `axis` (independent of nrt's estimator)."""
    a = np.moveaxis(z, axis, 0)
    return float(np.corrcoef(a[lag:].ravel(), a[:-lag].ravel())[0, 1])


def test_members_have_the_noise_settings_space_and_time_correlation():
    from nrt.csgd.correlation import error_correlation

    noise = NoiseSettings(correlation_length_km=30.0, decorrelation_minutes=90.0)
    params = _params(noise)
    rate = np.full((12, 64, 64), 20.0, dtype=np.float32)  # wet enough that almost no member value is censored
    ens = csgd_ensemble(rate, params, members=8, cell_km=(5.0, 5.0), seed=2, frame_minutes=30.0)
    mu, sigma, delta = params.distribution(rate)
    assert (ens > 0).mean() > 0.995
    z = special.ndtri(np.clip(distribution.cdf(ens, mu, sigma, delta), 1e-9, 1 - 1e-9))  # back to the latent noise
    lags = np.arange(1, 9)
    corr = np.array([np.mean([_lag_correlation(z[m], axis, int(lag)) for m in range(8) for axis in (1, 2)]) for lag in lags])
    length = -np.polyfit(lags * 5.0, np.log(corr), 1)[0] ** -1
    assert length == pytest.approx(30.0, rel=0.15)
    lag1 = np.mean([_lag_correlation(z[m], 0, 1) for m in range(8)])
    assert lag1 == pytest.approx(np.exp(-30.0 / 90.0), abs=0.05)
    # The estimator used on the real pairs recovers the settings too (hourly frames: every other one), on
    # average over members: one 320 km member is a small sample of a 30 km field.
    estimates = [error_correlation(ens[m, ::2], mu[::2], sigma[::2], delta[::2], (5.0, 5.0), 60.0, max_lag_km=40.0).noise
                 for m in range(8)]
    assert np.mean([e.correlation_length_km for e in estimates]) == pytest.approx(30.0, rel=0.12)
    assert np.mean([e.decorrelation_minutes for e in estimates]) == pytest.approx(90.0, rel=0.12)
    # With hours skipped (as a cross-validation fold's training set), only frames truly 1-3 h apart pair up.
    kept = np.array([0, 2, 4, 6, 8, 10])[[0, 1, 2, 4, 5]]
    skipped = [error_correlation(ens[m, kept], mu[kept], sigma[kept], delta[kept], (5.0, 5.0), 60.0, max_lag_km=40.0,
                                 minutes=kept * 30.0).noise.decorrelation_minutes for m in range(8)]
    assert np.mean(skipped) == pytest.approx(90.0, rel=0.15)


def test_ensemble_is_calibrated_on_truth_drawn_from_its_own_csgd():
    from nrt.verify.scores import score_overpass

    params = _params(NoiseSettings(correlation_length_km=8.0, decorrelation_minutes=10.0))
    rng = np.random.default_rng(4)
    rate = np.where(rng.random((20, 50, 50)) < 0.5, rng.gamma(0.7, 2.0, (20, 50, 50)), 0.0).astype(np.float32)
    truth = csgd_ensemble(rate, params, members=1, cell_km=(5.0, 5.0), seed=1234)[0]
    ens = csgd_ensemble(rate, params, members=20, cell_km=(5.0, 5.0), seed=1)
    members, obs = ens.transpose(0, 2, 1, 3).reshape(20, 50, -1), truth.transpose(1, 0, 2).reshape(50, -1)
    rows = score_overpass(members, None, obs, np.ones_like(obs, dtype=bool), rank_min=0.1)
    values = {row["metric"]: row["value"] for row in rows if row["threshold"] in (None, 0.1)}
    assert values["spread_skill"] == pytest.approx(1.0, abs=0.08)
    ranks = np.array([values[f"rank_{k:02d}"] for k in range(21)])
    assert ranks.max() / ranks.mean() < 1.3 and ranks.min() / ranks.mean() > 0.7


def _write_pairs(folder, rate, truth):
    import pandas as pd
    import xarray as xr

    coords = {"time": pd.date_range("2017-08-01", periods=rate.shape[0], freq="h"),
              "lat": 40.0 - 0.1 * np.arange(rate.shape[1]), "lon": -100.0 + 0.1 * np.arange(rate.shape[2])}
    paths = []
    for name, values in (("imerg.nc", rate), ("truth.nc", truth)):
        da = xr.DataArray(values.astype(np.float32), coords, ("time", "lat", "lon"))
        da.transpose("lat", "lon", "time").to_dataset(name="prcp").to_netcdf(folder / name)
        paths.append(str(folder / name))
    return paths


def test_cli_fit_writes_a_loadable_file_with_provenance(tmp_path, capsys):
    rng = np.random.default_rng(8)
    rate = np.round(np.where(rng.random((6, 25, 25)) < 0.3, rng.gamma(0.6, 2.0, (6, 25, 25)), 0.0), 1)
    truth = np.round(np.maximum(rate * rng.lognormal(0.0, 0.6, rate.shape) + rng.normal(0.0, 0.3, rate.shape), 0.0), 1)
    imerg, truth_path = _write_pairs(tmp_path, rate, truth)
    out = tmp_path / "fit.json"
    assert main(["csgd", "fit", "--imerg", imerg, "--truth", truth_path, "--out", str(out), "--hours", "0-3", "5"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    params = load_params(out)
    assert params.provenance["hours_utc"] == [0, 1, 2, 3, 5] and params.provenance["imerg"]["path"] == imerg
    assert summary["mean_crps_mm_h"] < summary["imerg_mae_mm_h"]
    assert main(["csgd", "show", str(out)]) == 0


def test_cli_bad_inputs_exit_2_with_one_line(tmp_path, capsys):
    zeros = np.zeros((3, 10, 10))
    imerg, truth = _write_pairs(tmp_path, zeros, zeros)
    cases = [
        (["csgd", "fit", "--imerg", str(tmp_path / "absent.nc"), "--truth", truth, "--out", str(tmp_path / "o.json")], "absent.nc: file not found"),
        (["csgd", "fit", "--imerg", imerg, "--truth", truth, "--out", str(tmp_path / "o.json")], "too little rain"),
        (["csgd", "show", str(tmp_path / "nothing.json")], "nothing.json: CSGD parameter file not found"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("nrt: error:")]
        assert len(errors) == 1 and message in errors[0]
    assert not (tmp_path / "o.json").exists()


def test_shipped_params_beat_imerg_on_held_out_real_hours(shared_data):
    """Skill on truth the fit never saw: the shipped fit used 00-11 UTC; score 12-23 UTC of the real pairs."""
    from nrt.csgd.pairs import read_pairs
    from nrt.verify.scores import crps_ensemble

    params = load_params("builtin:csgd")
    test_hours = list(range(12, 24))
    assert not set(params.provenance["hours_utc"]) & set(test_hours)
    folder = shared_data / "imerg-stageiv" / "20170801"
    pairs = read_pairs(folder / "IMERGE.hourly.d1.nc", folder / "StageIV_0.1deg.hourly.d1.nc", test_hours)
    imerg_mae = float(np.abs(pairs.rate - pairs.truth).mean())
    closed_form = float(distribution.crps(pairs.truth, *params.distribution(pairs.rate)).mean())
    ens = csgd_ensemble(pairs.rate, params, members=30, cell_km=pairs.cell_km, seed=0, frame_minutes=pairs.step_minutes)
    ensemble = float(crps_ensemble(ens.reshape(30, -1), pairs.truth.ravel()).mean())
    assert closed_form < 0.85 * imerg_mae and ensemble < 0.85 * imerg_mae
    assert ensemble == pytest.approx(closed_form, rel=0.05)  # 30 members sample the distribution they come from


def test_fast_inverse_gamma_matches_scipy():
    from nrt.csgd.gammainv import gammaincinv

    rng = np.random.default_rng(9)
    k = np.exp(rng.uniform(-7.0, 5.0, 20000))
    u = np.concatenate([rng.uniform(0.0, 1.0, 19990), [1e-300, 1e-12, 0.5, 1 - 1e-12, 1e-20, 0.999999, 1e-5, 0.3, 0.7, 0.9]])
    expected = special.gammaincinv(k, u)
    assert gammaincinv(k, u) == pytest.approx(expected, rel=1e-8, abs=1e-300)


def test_a_certainly_dry_regression_keeps_a_valid_distribution():
    """A fit may drive mu toward zero where IMERG is dry; the floor keeps the CRPS of rain there equal to the rain."""
    params = CsgdParams(Climatology(0.2, 1.0, -0.08), Regression(0.2, 1e-300, 1.3, 0.86, rate_mean=0.2), NoiseSettings(1, 1))
    mu, sigma, delta = params.distribution(np.zeros(3))
    y = np.array([0.0, 0.5, 16.0])
    assert distribution.crps(y, mu, sigma, delta) == pytest.approx(y, abs=1e-3)


def test_crps_matches_pysteps_ensemble_crps_away_from_ties():
    with __import__("contextlib").redirect_stdout(__import__("io").StringIO()):
        from pysteps.verification.probscores import CRPS

    mu, sigma, delta = 0.6, 1.4, -0.2
    k, theta = distribution.shape_scale(mu, sigma)
    draws = np.maximum(np.random.default_rng(6).gamma(k, theta, (4000, 1)) + delta, 0.0)
    for y in (0.3, 3.0):  # pysteps drops members tied with the observation, so not at y = 0
        assert CRPS(draws, np.array([y])) == pytest.approx(float(distribution.crps(y, mu, sigma, delta)), rel=0.04)


def test_an_error_covariate_is_fit_and_then_required():
    clim = Climatology(0.3, 1.2, -0.1)
    true = Regression(0.5, 0.3, 1.5, 0.5, rate_mean=0.4, covariate="random_error", a5=0.8, covariate_mean=1.0)
    rng = np.random.default_rng(12)
    rate = np.round(np.where(rng.random(4000) < 0.5, rng.gamma(0.6, 1.5, 4000), 0.0), 1)
    error = np.round(rng.uniform(0.0, 2.0, 4000), 1)
    params = CsgdParams(clim, true, NoiseSettings(20.0, 60.0))
    mu, sigma, delta = params.distribution(rate, error)
    k, theta = distribution.shape_scale(mu, sigma)
    truth = np.maximum(rng.gamma(k, theta) + delta, 0.0)
    fitted, _ = fit_regression(rate, truth, clim, error)
    assert fitted.covariate == "random_error" and fitted.a5 == pytest.approx(0.8, rel=0.2)
    grid = np.full((1, 4, 4), 2.0, dtype=np.float32)
    with pytest.raises(NrtError, match="random_error"):
        csgd_ensemble(grid, params, members=4, cell_km=(5.0, 5.0))
    calm = csgd_ensemble(grid, params, members=200, cell_km=(5.0, 5.0), random_error=np.zeros_like(grid))
    noisy = csgd_ensemble(grid, params, members=200, cell_km=(5.0, 5.0), random_error=np.full_like(grid, 2.0))
    assert noisy.std() > 1.5 * calm.std()
