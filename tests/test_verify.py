"""Verification against DPR: the score core against independent computations, and online scoring on the twin."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from prometheus_client import generate_latest

from nrt.store import Catalog
from nrt.grids import target_grid
from nrt.io import sha256_file
from nrt.model.conditioning import upsample
from nrt.products import product_path, publish_settings, publish_valid_time, write_ensemble
from nrt.service.metrics import Metrics
from nrt.twin.writers import read_truth
from nrt.verify import crps_ensemble, pool, score_overpass, score_sets, verify_granules, verify_settings
from nrt.verify.online import gridded_truth, read_product
from nrt.verify.scores import crpss, rank_histogram

from twin_helpers import make_tree, small_spec

UTC = timezone.utc
V = datetime(2024, 6, 1, 12, tzinfo=UTC)  # the twin's DPR granule 12:02:57-12:32:57 crosses Iowa in this half-hour
SCALAR = ("obs_mean", "bias", "mae", "rmse", "crps", "spread_skill")


def coarsen(fine: np.ndarray) -> np.ndarray:
    """2x2 block mean: the 0.05° field as IMERG's 0.1° cells would see it."""
    return fine.reshape(fine.shape[0] // 2, 2, fine.shape[1] // 2, 2).mean(axis=(1, 3))


def as_dict(rows, model="nrt"):
    return {(r["metric"], r["threshold"]): r["value"] for r in rows if r["model"] == model}


def crps_brute_force(members: np.ndarray, obs: np.ndarray) -> np.ndarray:
    first = np.abs(members - obs).mean(axis=0)
    second = np.abs(members[:, None] - members[None, :]).mean(axis=(0, 1))
    return first - 0.5 * second


def exchangeable(rng, shape, members: int, sigma: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(truth, members) drawn alike around one random centre: a perfectly calibrated ensemble, censored at 0 like rain."""
    centre = rng.normal(0.5, 2.0, shape)
    draws = centre + sigma * rng.standard_normal((members + 1, *shape))
    rates = np.maximum(2 * draws, 0).astype(np.float32)
    return rates[0], rates[1:]


def calibrated(truth: np.ndarray, rng, members: int = 30, sigma: float = 0.6, offset: float = 0.1) -> np.ndarray:
    """Members around a given truth: in log space they scatter about a centre that is itself the truth plus noise
    (calibrated where it rains; dry cells sit at the censoring edge, so there it is only roughly so)."""
    log_truth = np.log(truth + offset)
    centre = log_truth + sigma * rng.standard_normal(truth.shape)
    draws = centre + sigma * rng.standard_normal((members, *truth.shape))
    return np.maximum(np.exp(draws) - offset, 0).astype(np.float32)


# ------------------------------------------------------------------------------------------ pure core

def test_crps_matches_the_definition_including_ties_at_zero():
    rng = np.random.default_rng(1)
    members = np.maximum(rng.normal(0.2, 1.0, (12, 500)), 0)  # about 40% exact zeros, as rain has
    obs = np.maximum(rng.normal(0.2, 1.0, 500), 0)
    np.testing.assert_allclose(crps_ensemble(members, obs), crps_brute_force(members, obs), rtol=1e-12, atol=1e-12)
    # A single member: CRPS is the absolute error.
    np.testing.assert_allclose(crps_ensemble(members[:1], obs), np.abs(members[0] - obs))


def test_rank_histogram_agrees_with_pysteps_and_is_reproducible():
    from pysteps.verification import ensscores

    rng = np.random.default_rng(12)
    members, obs = rng.normal(size=(9, 2000)), rng.normal(size=2000)
    expected = ensscores.rankhist_init(9, None)
    ensscores.rankhist_accum(expected, members, obs)
    np.testing.assert_array_equal(rank_histogram(members, obs, rank_min=-np.inf), expected["n"])

    rain, wet = np.maximum(members, 0), np.maximum(obs, 0)  # ties at 0 mm/h
    counts = rank_histogram(rain, wet, rank_min=0.1)
    np.testing.assert_array_equal(counts, rank_histogram(rain, wet, rank_min=0.1))
    assert counts.sum() == ((wet >= 0.1) | (rain >= 0.1).any(axis=0)).sum()
    reference = ensscores.rankhist_init(9, 0.1)
    ensscores.rankhist_accum(reference, rain, wet)
    assert np.abs(counts - reference["n"]).max() < 0.25 * counts.mean()  # the same up to the random tie split


def test_score_overpass_matches_independent_computation_on_the_mask_only():
    rng = np.random.default_rng(2)
    shape = (40, 50)
    truth = np.maximum(rng.gamma(0.6, 4.0, shape) - 1.0, 0).astype(np.float32)
    ens = calibrated(truth, rng, members=10)
    base = (truth * 0.7).astype(np.float32)
    mask = np.zeros(shape, bool)
    mask[5:30, 10:45] = True
    truth_nan = truth.copy()
    truth_nan[7, 12] = np.nan  # inside the swath, but no retrieval: not scored
    ens[:, ~mask] = 1e6  # outside the swath nothing may leak in
    rows = score_overpass(ens, base, truth_nan, mask, thresholds=[1.0, 5.0], brier_thresholds=[1.0, 5.0],
                          rank_min=0.1, reliability_bins=10)
    cells = mask & np.isfinite(truth_nan)
    x, y, b = ens[:, cells].astype(float), truth[cells].astype(float), base[cells].astype(float)
    mean = x.mean(axis=0)
    nrt, baseline = as_dict(rows, "nrt"), as_dict(rows, "bilinear")

    assert nrt[("n_cells", None)] == cells.sum() == baseline[("n_cells", None)]
    assert nrt[("bias", None)] == pytest.approx(mean.mean() - y.mean(), rel=1e-6)
    assert nrt[("mae", None)] == pytest.approx(np.abs(mean - y).mean(), rel=1e-6)
    rmse = np.sqrt(((mean - y) ** 2).mean())
    assert nrt[("rmse", None)] == pytest.approx(rmse, rel=1e-6)
    assert nrt[("crps", None)] == pytest.approx(crps_brute_force(x, y).mean(), rel=1e-9)
    spread = np.sqrt(x.var(axis=0, ddof=1).mean() * 11 / 10)
    assert nrt[("spread_skill", None)] == pytest.approx(spread / rmse, rel=1e-6)
    for t in (1.0, 5.0):
        hits = ((mean > t) & (y > t)).sum()
        misses = ((mean <= t) & (y > t)).sum()
        false_alarms = ((mean > t) & (y <= t)).sum()
        assert nrt[("csi", t)] == pytest.approx(hits / (hits + misses + false_alarms))
        assert nrt[("pod", t)] == pytest.approx(hits / (hits + misses))
        assert nrt[("far", t)] == pytest.approx(false_alarms / (hits + false_alarms))
        prob = (x > t).mean(axis=0)
        assert nrt[("brier", t)] == pytest.approx(((prob - (y > t)) ** 2).mean())
        assert baseline[("brier", t)] == pytest.approx(((b > t) != (y > t)).mean())
        counts = {k: v for k, v in nrt.items() if k[0].startswith("rel_count_") and k[1] == t}
        assert sum(counts.values()) == cells.sum()
        observed = sum(v for k, v in nrt.items() if k[0].startswith("rel_obs_") and k[1] == t)
        assert observed == (y > t).sum()
    assert baseline[("crps", None)] == pytest.approx(np.abs(b - y).mean(), rel=1e-6) == baseline[("mae", None)]
    assert ("spread_skill", None) not in baseline and not any(k[0].startswith("rank_") for k in baseline)
    ranks = [nrt[(f"rank_{k:02d}", 0.1)] for k in range(11)]
    wet = ((x >= 0.1).any(axis=0) | (y >= 0.1)).sum()
    assert sum(ranks) == wet  # all-dry cells are left out of the rank histogram


def test_csgd_baseline_is_scored_as_an_ensemble_on_the_cells_every_forecast_covers():
    rng = np.random.default_rng(12)
    shape = (30, 40)
    truth = np.maximum(rng.gamma(0.6, 4.0, shape) - 1.0, 0).astype(np.float32)
    ens, csgd = calibrated(truth, rng, members=8), calibrated(truth, rng, members=8, sigma=1.2)
    base = (truth * 0.7).astype(np.float32)
    csgd[3, 4, 5] = np.nan  # a cell the CSGD ensemble lacks is left out for every model
    mask = np.ones(shape, bool)
    rows = score_overpass(ens, base, truth, mask, csgd=csgd)
    cells = np.isfinite(csgd).all(axis=0)
    x, c, y = ens[:, cells].astype(float), csgd[:, cells].astype(float), truth[cells].astype(float)
    nrt, theirs = as_dict(rows, "nrt"), as_dict(rows, "csgd")
    assert nrt[("n_cells", None)] == theirs[("n_cells", None)] == as_dict(rows, "bilinear")[("n_cells", None)] == cells.sum()
    assert theirs[("crps", None)] == pytest.approx(crps_brute_force(c, y).mean(), rel=1e-9)
    assert nrt[("crps", None)] == pytest.approx(crps_brute_force(x, y).mean(), rel=1e-9)
    assert theirs[("mae", None)] == pytest.approx(np.abs(c.mean(axis=0) - y).mean(), rel=1e-6)
    assert sum(v for k, v in theirs.items() if k[0].startswith("rank_")) > 0
    # The wider CSGD stand-in is the worse ensemble here: the skill score against it is positive.
    assert crpss(pool(score_sets({**r, "lead": 0, "product_id": 1} for r in rows)), 0, "csgd") > 0
    with pytest.raises(ValueError, match="csgd"):
        score_overpass(ens, base, truth, mask, csgd=csgd[0])


def rank_chi2(rows, members: int) -> float:
    ranks = np.array([rows[(f"rank_{k:02d}", 0.1)] for k in range(members + 1)])
    expected = ranks.sum() / (members + 1)
    return float(((ranks - expected) ** 2 / expected).sum())


def test_calibrated_ensemble_has_unit_spread_skill_and_a_flat_rank_histogram():
    rng = np.random.default_rng(3)
    truth, ens = exchangeable(rng, (120, 120), members=20)
    mask = np.ones(truth.shape, bool)
    rows = as_dict(score_overpass(ens, None, truth, mask, rank_min=0.1))
    assert rows[("spread_skill", None)] == pytest.approx(1.0, abs=0.04)
    assert rank_chi2(rows, 20) < 50  # 20 degrees of freedom: p = 0.0002 (ties are split at random)
    narrow = ens.mean(axis=0) + 0.4 * (ens - ens.mean(axis=0))  # the same ensemble with too little spread
    rows = as_dict(score_overpass(narrow, None, truth, mask, rank_min=0.1))
    assert rows[("spread_skill", None)] < 0.6
    assert rank_chi2(rows, 20) > 500  # U-shaped


def test_zero_residual_model_scores_worse_on_crps_and_spread_skill():
    rng = np.random.default_rng(4)
    truth, ens = exchangeable(rng, (80, 80), members=20)
    broken = np.repeat(ens.mean(axis=0, keepdims=True), 20, axis=0)  # regression mean only
    mask = np.ones(truth.shape, bool)
    good, bad = as_dict(score_overpass(ens, None, truth, mask)), as_dict(score_overpass(broken, None, truth, mask))
    assert bad[("crps", None)] > 1.2 * good[("crps", None)]
    assert bad[("spread_skill", None)] == 0.0
    assert abs(bad[("spread_skill", None)] - 1) > abs(good[("spread_skill", None)] - 1) + 0.5
    assert bad[("mae", None)] == pytest.approx(good[("mae", None)])  # same mean: only the ensemble scores tell


def test_pooled_scores_equal_scoring_all_cells_at_once():
    truth, ens = exchangeable(np.random.default_rng(5), (60, 60), members=8)
    base = upsample(coarsen(truth))
    first = np.zeros(truth.shape, bool)
    first[:25] = True
    second = np.zeros(truth.shape, bool)
    second[25:, 10:] = True
    rows = []
    for product_id, mask in enumerate((first, second)):
        rows += [{**r, "product_id": product_id, "lead": 3} for r in score_overpass(ens, base, truth, mask)]
    pooled = pool(score_sets(rows))
    whole = score_overpass(ens, base, truth, first | second)
    for model in ("nrt", "bilinear"):
        expected = as_dict(whole, model)
        got = pooled[(3, model)].values
        assert set(got) == set(expected)
        for key, value in expected.items():
            if not key[0].startswith("rank_"):  # ties are split at random, cell by cell
                assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12, nan_ok=True), key
        ranks = [k for k in expected if k[0].startswith("rank_")]
        assert sum(got[k] for k in ranks) == sum(expected[k] for k in ranks)


def test_score_overpass_rejects_fields_on_different_grids_and_returns_nothing_without_cells():
    ens = np.zeros((3, 10, 12), np.float32)
    with pytest.raises(ValueError, match="share"):
        score_overpass(ens, None, np.zeros((10, 11)), np.ones((10, 11), bool))
    with pytest.raises(ValueError, match="baseline"):
        score_overpass(ens, np.zeros((9, 12)), np.zeros((10, 12)), np.ones((10, 12), bool))
    assert score_overpass(ens, None, np.full((10, 12), np.nan), np.ones((10, 12), bool)) == []


# ------------------------------------------------------------------------------------------ on the twin

@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    spec = small_spec(end=V + timedelta(hours=1))
    spec = replace(spec, world=replace(spec.world, wet_fraction=0.3))  # rainier, so thresholds see events
    return make_tree(tmp_path_factory.mktemp("twin"), spec)


@pytest.fixture
def world(twin, cfg):
    """The twin's DPR granule, the truth on the target grid at V, a migrated catalog and the grid."""
    catalog = Catalog.open(cfg.database_url, migrate=True)
    grid = target_grid(cfg.domain.box())
    truth = read_truth(twin, V, V + timedelta(minutes=30)).isel(time=0)
    truth = truth.sel(lat=slice(grid.lats[0] - 1e-6, grid.lats[-1] + 1e-6), lon=slice(grid.lons[0] - 1e-6, grid.lons[-1] + 1e-6))
    assert truth.shape == grid.shape
    dpr_files = sorted((twin / "pps" / "radar" / "DprL2").glob("*.RT-H5"))
    assert len(dpr_files) == 1
    yield dict(catalog=catalog, grid=grid, truth=truth.values, dpr=dpr_files, root=twin)
    catalog.close()


def add_product(cfg, catalog, grid, members, baseline, lead, valid=V):
    reference = valid - lead * timedelta(minutes=30)
    cycle = reference + timedelta(hours=4, minutes=5)
    path = product_path(cfg.product_dir, "ensemble", valid, cycle)
    write_ensemble(path, xr.DataArray(members, dims=("member", "lat", "lon")), grid=grid, valid_time=valid,
                   forecast_reference_time=reference, lead=lead, input_precipitation=baseline)
    return catalog.register_product("ensemble", valid, cycle, lead, members.shape[0], path, path.stat().st_size, sha256_file(path))


def stored(catalog, product_id, model="nrt"):
    return {(r.metric, r.threshold): r.value for r in catalog.scores(product_id=product_id, truth_source="dpr", model=model)}


def test_swath_scores_agree_with_full_truth_scores_on_the_same_cells(cfg, world):
    catalog, grid, truth = world["catalog"], world["grid"], world["truth"]
    rng = np.random.default_rng(6)
    baseline = upsample(coarsen(truth))
    # Through the pipeline's own publishing path, so the stored baseline variable is exercised too.
    reference = V - 2 * timedelta(minutes=30)
    published = publish_valid_time(
        xr.DataArray(calibrated(truth, rng), dims=("member", "lat", "lon")), settings=publish_settings(cfg), catalog=catalog, grid=grid,
        valid_time=V, cycle_time=reference + timedelta(hours=4), forecast_reference_time=reference, lead=2,
        quicklook=False, input_precipitation=baseline,
    )
    product_id = published.products[0].id

    results = verify_granules(verify_settings(cfg), catalog, world["dpr"])
    assert [r.valid_time for r in results] == [V] and results[0].product_ids == [product_id]

    dpr_truth, mask = gridded_truth(world["dpr"], V, grid, cfg.sources.dpr.footprint_km)
    assert 1000 < mask.sum() < mask.size  # a swath, not the whole domain
    members, stored_baseline = read_product(published.products[0].path, grid)
    np.testing.assert_allclose(stored_baseline, baseline, atol=1 / 256)  # quantised to 0.01 mm/h
    full = score_overpass(members, stored_baseline, truth, mask, cfg.verify.thresholds_mmh, cfg.verify.brier_thresholds_mmh)
    # DPR is the truth seen through a 5 km footprint, with 10 % noise and a 0.2 mm/h detection limit, so the two
    # agree closely but not exactly. The smooth baseline gains most from the footprint's smoothing (its errors
    # against DPR are up to ~30 % smaller), hence its wider tolerance.
    for model, rel, categorical in (("nrt", 0.1, 0.06), ("bilinear", 0.3, 0.1)):
        on_swath, on_truth = stored(catalog, product_id, model), as_dict(full, model)
        assert on_swath[("n_cells", None)] == on_truth[("n_cells", None)] == mask.sum()
        for metric in SCALAR:
            if (metric, None) in on_truth:
                assert on_swath[(metric, None)] == pytest.approx(on_truth[(metric, None)], rel=rel, abs=0.02), (model, metric)
        for metric in ("csi", "pod", "far"):
            assert on_swath[(metric, 1.0)] == pytest.approx(on_truth[(metric, 1.0)], abs=categorical), (model, metric)
        assert on_swath[("brier", 1.0)] == pytest.approx(on_truth[("brier", 1.0)], rel=rel + 0.05), model
    assert stored(catalog, product_id)[("obs_mean", None)] == pytest.approx(truth[mask].mean(), rel=0.05)


def test_zero_residual_product_scores_worse_against_dpr(cfg, world):
    catalog, grid, truth = world["catalog"], world["grid"], world["truth"]
    ens = calibrated(truth, np.random.default_rng(7))
    broken = np.repeat(ens.mean(axis=0, keepdims=True), ens.shape[0], axis=0)
    good_id = add_product(cfg, catalog, grid, ens, None, lead=1)
    bad_id = add_product(cfg, catalog, grid, broken, None, lead=3)
    verify_granules(verify_settings(cfg), catalog, world["dpr"])
    good, bad = stored(catalog, good_id), stored(catalog, bad_id)
    assert bad[("crps", None)] > 1.1 * good[("crps", None)]
    assert abs(bad[("spread_skill", None)] - 1) > abs(good[("spread_skill", None)] - 1) + 0.5
    assert stored(catalog, good_id, "bilinear") == stored(catalog, good_id, "csgd") == {}  # no stored input: no baseline rows


@pytest.mark.skipif(
    not Path(__file__).resolve().parents[1].joinpath("nrt", "model", "weights", "demo.safetensors").is_file(),
    reason="the trained demo checkpoint is not shipped yet (nrt/model/weights/demo.safetensors)",
)
def test_downscaler_ensemble_beats_its_own_regression_mean_against_dpr(cfg, world):
    from nrt.model.conditioning import Conditioning
    from nrt.model.inference import Downscaler
    from nrt.sources.imerg import read_imerg

    imerg = sorted((world["root"] / "pps").rglob("3B-HHR-E*20240601-S120000*.RT-H5"))
    coarse = read_imerg(imerg, cfg.domain.box())["precipitation"].values
    model = Downscaler.load("builtin:demo", "cpu")
    cond = Conditioning(precip=coarse, grid=world["grid"], lead=0)
    members = model.sample(cond, members=8, seed=1)  # the shipped sampler (its scales are fitted to its own steps)
    mean_only = np.repeat(model.regression_mean(cond), 8, axis=0)
    truth, mask = gridded_truth(world["dpr"], V, world["grid"], cfg.sources.dpr.footprint_km)
    good = as_dict(score_overpass(members, None, truth, mask))
    bad = as_dict(score_overpass(mean_only, None, truth, mask))
    assert bad[("crps", None)] > good[("crps", None)]
    assert abs(bad[("spread_skill", None)] - 1) > abs(good[("spread_skill", None)] - 1)


def test_each_product_is_scored_once_and_each_overpass_counted_once(cfg, world):
    catalog, grid, truth = world["catalog"], world["grid"], world["truth"]
    rng = np.random.default_rng(8)
    metrics = Metrics()
    first = add_product(cfg, catalog, grid, calibrated(truth, rng), upsample(coarsen(truth)), lead=4)
    results = verify_granules(verify_settings(cfg), catalog, world["dpr"])
    assert len(results) == 1 and results[0].new_overpass and results[0].product_ids == [first]
    metrics.record_scores(results[0].gauge_rows, new_overpass=results[0].new_overpass)  # as record_cycle does
    assert verify_granules(verify_settings(cfg), catalog, world["dpr"]) == []  # nothing new: nothing rescored

    # A later cycle brings a smaller lead for the same half-hour: only it is scored, and the overpass is not new.
    second = add_product(cfg, catalog, grid, calibrated(truth, rng), upsample(coarsen(truth)), lead=0)
    results = verify_granules(verify_settings(cfg), catalog, world["dpr"])
    assert results[0].product_ids == [second] and not results[0].new_overpass
    metrics.record_scores(results[0].gauge_rows, new_overpass=results[0].new_overpass)  # as record_cycle does
    text = generate_latest(metrics.registry).decode()
    assert "nrt_verification_overpasses_total 1.0" in text
    crps = stored(catalog, second)[("crps", None)]
    assert f'nrt_verification_score{{lead="0",metric="crps",model="nrt",threshold=""}} {crps}' in text
    assert 'nrt_verification_score{lead="4",metric="csi",model="bilinear",threshold="1"}' in text
    assert "rank_" not in text and "rel_" not in text  # bins stay in the catalog
    # Both baselines are scored and stored; the CRPSS gauges are 1 - CRPS(nrt) / CRPS(baseline) of the stored rows.
    for baseline in ("bilinear", "csgd"):
        theirs = stored(catalog, second, baseline)[("crps", None)]
        assert theirs > 0
        gauge = metrics.registry.get_sample_value("nrt_verification_crpss", {"lead": "0", "baseline": baseline})
        assert gauge == pytest.approx(1 - crps / theirs, rel=1e-9)

    csgd_crps = stored(catalog, second, "csgd")[("crps", None)]
    forced = verify_granules(verify_settings(cfg), catalog, world["dpr"], force=True)
    assert sorted(forced[0].product_ids) == sorted([first, second])
    rows = catalog.scores(product_id=second, truth_source="dpr", metric="crps", model="nrt")
    assert len(rows) == 1 and rows[0].lead == 0 and rows[0].value == pytest.approx(crps)
    again = catalog.scores(product_id=second, truth_source="dpr", metric="crps", model="csgd")
    assert len(again) == 1 and again[0].value == csgd_crps  # the CSGD draw is seeded: re-scoring repeats it


def test_unreadable_inputs_are_skipped_without_stopping_the_cycle(cfg, world, tmp_path, caplog):
    catalog, grid, truth = world["catalog"], world["grid"], world["truth"]
    good = add_product(cfg, catalog, grid, calibrated(truth, np.random.default_rng(9)), None, lead=2)
    gone = add_product(cfg, catalog, grid, calibrated(truth, np.random.default_rng(10)), None, lead=5)
    Path(catalog.product(gone).path).unlink()
    wrong_name = tmp_path / "not_a_dpr_file.h5"
    wrong_name.write_bytes(b"junk")
    corrupt = tmp_path / world["dpr"][0].name.replace("S120257", "S120258")
    corrupt.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)

    assert verify_granules(verify_settings(cfg), catalog, [wrong_name, corrupt]) == []
    assert "not_a_dpr_file.h5" in caplog.text and "verification of 2024-06-01T12:00:00Z failed" in caplog.text
    results = verify_granules(verify_settings(cfg), catalog, world["dpr"])
    assert results[0].product_ids == [good]
    assert f"product {gone}" in caplog.text and "no file" in caplog.text


def test_no_scores_without_enough_swath_cells(cfg, world):
    catalog, grid, truth = world["catalog"], world["grid"], world["truth"]
    product = add_product(cfg, catalog, grid, calibrated(truth, np.random.default_rng(11)), None, lead=1)
    strict = cfg.model_copy(deep=True)
    strict.verify.min_swath_cells = grid.shape[0] * grid.shape[1]
    assert verify_granules(verify_settings(strict), catalog, world["dpr"]) == []
    assert catalog.scores(product_id=product) == []


def test_verify_command_scores_catalog_granules_then_reports(cfg, world, tmp_path, capsys):
    from nrt.cli import main
    from nrt.sources import dpr

    catalog, grid, truth = world["catalog"], world["grid"], world["truth"]
    for lead in (0, 3):
        add_product(cfg, catalog, grid, calibrated(truth, np.random.default_rng(lead)), upsample(coarsen(truth)), lead=lead)
    granule = world["dpr"][0]
    rf = dpr.parse_name(granule.name)
    catalog.register_granule("dpr", rf.name, rf.version, rf.start, rf.end, granule, granule.stat().st_size, sha256_file(granule))
    config_file = tmp_path / "nrt.toml"
    config_file.write_text(f'[general]\nworkdir = "{cfg.workdir}"\n')
    out = tmp_path / "report"

    rc = main(["--config", str(config_file), "verify", "--score", "--start", "2024-06-01T11:00Z", "--end", "2024-06-01T13:00Z", "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "scored 2 product(s) in 1 half-hour(s)" in printed
    assert len(catalog.scores(truth_source="dpr", metric="crps")) == 6  # two products: nrt, bilinear and csgd
    text = (out / "report.md").read_text()
    assert "| 0 |" in text and "| 3 |" in text and (out / "reliability.png").is_file()

    # Scored products are skipped, unless --force asks to score them again (older scores gain the CSGD rows).
    span = ["--start", "2024-06-01T11:00Z", "--end", "2024-06-01T13:00Z", "--out", str(out)]
    assert main(["--config", str(config_file), "verify", "--score", *span]) == 0
    assert "scored 0 product(s) in 0 half-hour(s)" in capsys.readouterr().out
    assert main(["--config", str(config_file), "verify", "--score", "--force", *span]) == 0
    assert "scored 2 product(s) in 1 half-hour(s)" in capsys.readouterr().out
