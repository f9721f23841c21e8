"""scripts/realrain_case.py: a held-out real-rain event through nrt's own CLI, scored against the radar truth."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from conftest import script_module
from nrt.timeline import HALF_HOUR, utc
from nrt.twin import truth

@pytest.fixture(scope="module")
def case():
    with script_module("realrain_case") as module:
        yield module


def crps_pairwise(members: np.ndarray, obs: np.ndarray) -> float:
    """E|X - y| - E|X - X'| / 2 over all member pairs (Gneiting and Raftery 2007), averaged over cells."""
    first = np.abs(members - obs).mean(axis=0)
    second = np.abs(members[:, None] - members[None, :]).mean(axis=(0, 1))
    return float((first - 0.5 * second).mean())


def test_scores_match_independent_computation(case):
    rng = np.random.default_rng(3)
    truth_map = rng.gamma(0.5, 2.0, (12, 14))
    truth_map[truth_map < 0.3] = 0.0
    members = np.maximum(truth_map + rng.normal(0, 1.0, (7, 12, 14)), 0.0)
    baseline = truth_map * 1.3 + 0.05
    truth_map[0, :3] = np.nan  # no radar data: left out of every score
    baseline[5, 5] = np.nan

    got = case.score_valid_time(members, baseline, truth_map)

    ok = np.isfinite(truth_map) & np.isfinite(baseline)
    x, y, b = members[:, ok], truth_map[ok], baseline[ok]
    assert got["cells"] == ok.sum() == 12 * 14 - 4
    assert got["crps"] == pytest.approx(crps_pairwise(x, y), rel=1e-10)
    assert got["input_mae"] == pytest.approx(np.mean(np.abs(b - y)))
    mean = x.mean(axis=0)
    spread = np.sqrt(np.mean(np.var(x, axis=0, ddof=1)) * 8 / 7)
    assert got["spread_skill"] == pytest.approx(spread / np.sqrt(np.mean((mean - y) ** 2)))
    assert got["bias"] == pytest.approx(mean.mean() - y.mean())
    assert got["corr_truth"] == pytest.approx(np.corrcoef(mean, y)[0, 1])
    assert got["corr_input"] == pytest.approx(np.corrcoef(mean, b)[0, 1])
    assert got["wet_truth"] == pytest.approx(np.mean(y >= 0.1))
    assert got["wet_members"] == pytest.approx(np.mean(x >= 0.1))


def test_hourly_truth_stands_for_both_half_hours(case):
    times = np.array(["2016-09-22T01:00", "2016-09-22T02:00"], dtype="datetime64[ns]")
    hourly = xr.DataArray(np.arange(8.0).reshape(2, 2, 2), dims=("time", "lat", "lon"), coords={"time": times},
                          attrs={"averaging_period_minutes": 60.0})
    half = case.half_hourly(hourly)
    assert [str(t)[11:16] for t in half.time.values] == ["01:00", "01:30", "02:00", "02:30"]
    np.testing.assert_array_equal(half.values[1], hourly.values[0])
    np.testing.assert_array_equal(half.values[3], hourly.values[1])


def test_domain_is_the_wettest_fully_covered_box_on_the_imerg_lattice(case):
    lat, lon = 50.025 + 0.05 * np.arange(20), 3.025 + 0.05 * np.arange(30)
    rain = np.zeros((2, 20, 30))
    rain[:, 12:20, 20:28] = 5.0  # exactly one 0.4° box holds all of it
    rain[:, 0, :] = np.nan
    frames = xr.DataArray(rain, dims=("time", "lat", "lon"), coords={"lat": lat, "lon": lon})
    domain = case.choose_domain(frames, 0.4)
    assert (domain.west, domain.south, domain.east, domain.north) == pytest.approx((4.0, 50.6, 4.4, 51.0))
    for edge in (domain.west, domain.south, domain.east, domain.north):
        assert abs(edge * 10 - round(edge * 10)) < 1e-9


def test_twin_random_streams_accept_negative_indices():
    """DPR granules before the twin orbit's epoch (radar events of 2010) have negative indices."""
    before = truth.rng_for(1, "dpr", -5).random(3)
    assert not np.allclose(before, truth.rng_for(1, "dpr", 5).random(3))
    assert np.allclose(truth.rng_for(1, "dpr", 5).random(3),
                       np.random.default_rng(np.random.SeedSequence([1, int.from_bytes(b"dpr", "little"), 5])).random(3))


def test_held_out_knmi_event_through_the_cli(case, shared_data, tmp_path):
    """KNMI (52° N, far from Iowa) with CSGD: the cycle runs and its lead-0 scores match the product files."""
    base = tmp_path / "base.toml"
    base.write_text("[timeline]\nimerg_latency_minutes = 60.0\n")  # 3 valid times instead of 9: a fast cycle
    workdir = tmp_path / "case"
    code = case.main(["--event", "knmi-20100826-morning", "--workdir", str(workdir), "--methods", "csgd",
                      "--members", "4", "--size", "1.0", "--cycles", "2", "--config", str(base), "--radar-dir", str(shared_data / "radar")])
    assert code == 0
    report = json.loads((workdir / "score.json").read_text())
    rows = report["results"]["csgd"]
    assert [r["lead"] for r in rows] == sorted(r["lead"] for r in rows)
    lead0 = [utc(r["valid_time"]) for r in rows if r["lead"] == 0]  # one per cycle: S and S + 30 min
    assert lead0 == [utc(report["lead0"]), utc(report["lead0"]) + HALF_HOUR]
    west, south, east, north = report["domain"]
    assert 3.0 < west < east < 8.0 and 50.0 < south < north < 54.5 and east - west == pytest.approx(1.0)

    product = next((workdir / "csgd" / "products").rglob(f"nrt_ensemble_{report['lead0'][:4]}*T{report['lead0'][11:13]}{report['lead0'][14:16]}Z_*.nc"))
    with xr.open_dataset(product) as ds:
        members, baseline = ds["precipitation"].values[0], ds["input_precipitation"].values[0]  # file: (time, realization, …)
        lat, lon = ds.lat.values, ds.lon.values
    frames = xr.open_dataarray(workdir / "truth-knmi-20100826-morning.nc")
    obs = frames.sel(time=np.datetime64(report["lead0"][:19])).sel(lat=lat, lon=lon, method="nearest").values
    assert rows[0]["crps"] == pytest.approx(crps_pairwise(members, obs), rel=1e-6)
    assert rows[0]["input_mae"] == pytest.approx(np.abs(baseline - obs).mean(), rel=1e-6)
    # The lead-0 input is the event's own rain through the IMERG error model, not the twin's synthetic rain.
    assert rows[0]["input_corr_truth"] > 0.3
    table = (workdir / "score.md").read_text()
    assert table.count("| csgd |") == len(rows) + 2  # one line per valid time, then lead 0 and all leads pooled
    assert report["pooled"]["csgd"]["crps"] == pytest.approx(np.mean([r["crps"] for r in rows]))
