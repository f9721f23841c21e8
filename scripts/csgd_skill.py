"""Skill of the CSGD statistical ensemble on the real IMERG Early / Stage IV pairs, on hours the fit never saw.

Data: ../shared/data/imerg-stageiv/20170801 (24 h of 2017-08-01, hourly, 0.1°, 30-40°N 105-90°W). Two blocked
splits (contiguous blocks, because errors persist for hours and interleaved hours would leak):
- `halves`: fit 00-11 UTC, test 12-23 UTC, and the reverse;
- `blocks`: 4-fold cross-validation over the contiguous 6-hour blocks 00-05, 06-11, 12-17, 18-23 UTC (fit on
  18 h, test on the other 6).
Every hour is tested exactly once per split; scores pool the test hours of all folds. Each fold refits
everything: the climatology, the regression and the noise scales (nrt.csgd.fit.fit_csgd).

Scores against Stage IV, every cell of every test hour:
- `imerg_mae`: MAE of IMERG itself (the CRPS of IMERG taken as a one-member forecast);
- `crps_closed_form`: mean closed-form CRPS of the fitted CSGD; `crps_ensemble`: of the 30-member
  ensemble (nrt.csgd.csgd_ensemble, hourly frames, seed 0; nrt.verify.scores.crps_ensemble);
  `crpss_vs_imerg` = 1 - CRPS/MAE; `crps_climatology`: the fold's climatological CSGD;
- `spread_skill`, `rmse_ensemble_mean`, `rank_histogram` from nrt.verify.scores.score_overpass (Fortin et al.:
  spread with the (M+1)/M factor; ranks as pysteps defines them, rates below 0.1 mm/h tie);
- `coverage_5_95`: fraction of cells with the truth inside the 5-95 % interval (closed-form quantiles; ensemble
  5th/95th percentiles), on all cells and on cells where IMERG reaches 0.1 mm/h ("wet": strata must
  depend on the forecast only, a subset chosen by the truth would bias any calibrated forecast);
- the figure: rank histogram and the coverage of central intervals 10..90 % (randomised PIT for the closed form).

    OMP_NUM_THREADS=1 nice -n 10 python scripts/csgd_skill.py --out skill-csgd/   # ~3-5 min on 2 busy cores
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # the team shares 2 cores

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PAIRS = REPO.parent / "shared" / "data" / "imerg-stageiv" / "20170801"
MEMBERS = 30
SPLITS = {
    "halves": [list(range(0, 12)), list(range(12, 24))],
    "blocks": [list(range(b, b + 6)) for b in range(0, 24, 6)],
}
LEVELS = np.arange(0.1, 1.0, 0.1)


def fold_predictions(imerg: Path, truth: Path, test_hours: list[int]) -> dict:
    from nrt.csgd import csgd_ensemble, distribution
    from nrt.csgd.fit import fit_csgd
    from nrt.csgd.pairs import read_pairs

    train = read_pairs(imerg, truth, [h for h in range(24) if h not in test_hours])
    test = read_pairs(imerg, truth, test_hours)
    params = fit_csgd(train.rate, train.truth, cell_km=train.cell_km, step_minutes=train.step_minutes, times=train.times)
    mu, sigma, delta = params.distribution(test.rate)
    clim = params.climatology
    rng = np.random.default_rng(0)
    pit = distribution.cdf(test.truth, mu, sigma, delta)
    pit = np.where(test.truth > 0, pit, rng.uniform(size=pit.shape) * pit)  # randomised at the point mass
    return {
        "rate": test.rate,
        "truth": test.truth,
        "crps": distribution.crps(test.truth, mu, sigma, delta),
        "crps_clim": distribution.crps(test.truth, clim.mu, clim.sigma, clim.delta),
        "q05": distribution.quantile(0.05, mu, sigma, delta),
        "q95": distribution.quantile(0.95, mu, sigma, delta),
        "pit": pit,
        "ensemble": csgd_ensemble(test.rate, params, members=MEMBERS, cell_km=test.cell_km, seed=0,
                                  frame_minutes=test.step_minutes),
        "fold": {"test_hours": test_hours, "noise": vars(params.noise), "regression_a": [params.regression.a1, params.regression.a2, params.regression.a3, params.regression.a4]},
    }


def score(folds: list[dict]) -> dict:
    from nrt.verify.scores import crps_ensemble, score_overpass

    cat = {key: np.concatenate([f[key] for f in folds], axis=-3) for key in ("rate", "truth", "crps", "crps_clim", "q05", "q95", "pit", "ensemble")}
    truth, rate, ens = cat["truth"], cat["rate"], cat["ensemble"]
    members = ens.reshape(MEMBERS, -1)
    imerg_mae = float(np.abs(rate - truth).mean())
    crps_ens = float(crps_ensemble(members, truth.ravel()).mean())
    rows = score_overpass(ens.reshape(MEMBERS, -1, truth.shape[-1]), rate.reshape(-1, truth.shape[-1]),
                          truth.reshape(-1, truth.shape[-1]), np.ones(truth.reshape(-1, truth.shape[-1]).shape, bool),
                          thresholds=(0.1, 1.0), brier_thresholds=(), rank_min=0.1)
    nrt = {(r["metric"], r["threshold"]): r["value"] for r in rows if r["model"] == "nrt"}
    wet = rate >= 0.1  # strata chosen by the forecast's input only: selecting on the truth would bias coverage
    lo, hi = np.quantile(members, [0.05, 0.95], axis=0)
    inside_ens = ((truth.ravel() >= lo) & (truth.ravel() <= hi)).reshape(truth.shape)
    inside_cf = (truth >= cat["q05"]) & (truth <= cat["q95"])
    ranks = np.array([nrt[(f"rank_{k:02d}", 0.1)] for k in range(MEMBERS + 1)])
    centred = np.abs(cat["pit"] - 0.5)
    return {
        "cells": int(truth.size),
        "wet_cells": int(wet.sum()),
        "imerg_mae": round(imerg_mae, 4),
        "crps_closed_form": round(float(cat["crps"].mean()), 4),
        "crps_ensemble": round(crps_ens, 4),
        "crps_climatology": round(float(cat["crps_clim"].mean()), 4),
        "crpss_vs_imerg_closed_form": round(1 - float(cat["crps"].mean()) / imerg_mae, 3),
        "crpss_vs_imerg_ensemble": round(1 - crps_ens / imerg_mae, 3),
        "dry_imerg_mae": round(float(np.abs(rate - truth)[~wet].mean()), 4),
        "dry_crps_closed_form": round(float(cat["crps"][~wet].mean()), 4),
        "wet_imerg_mae": round(float(np.abs(rate - truth)[wet].mean()), 4),
        "wet_crps_closed_form": round(float(cat["crps"][wet].mean()), 4),
        "spread_skill": round(nrt[("spread_skill", None)], 3),
        "rmse_ensemble_mean": round(nrt[("rmse", None)], 4),
        "rmse_imerg": round(float(np.sqrt(np.mean((rate - truth) ** 2))), 4),
        "bias_ensemble_mean": round(nrt[("bias", None)], 4),
        "bias_imerg": round(float((rate - truth).mean()), 4),
        "coverage_5_95_closed_form": round(float(inside_cf.mean()), 3),
        "coverage_5_95_ensemble": round(float(inside_ens.mean()), 3),
        "coverage_5_95_closed_form_wet": round(float(inside_cf[wet].mean()), 3),
        "coverage_5_95_ensemble_wet": round(float(inside_ens[wet].mean()), 3),
        "interval_coverage_pit": [round(float((centred <= level / 2).mean()), 3) for level in LEVELS],
        "interval_coverage_pit_wet": [round(float((centred[wet] <= level / 2).mean()), 3) for level in LEVELS],
        "rank_histogram": ranks.astype(int).tolist(),
    }


def plot(results: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.6), layout="constrained")
    axes = fig.subplots(1, 3)
    for name, res in results.items():
        ranks = np.array(res["rank_histogram"], dtype=float)
        axes[0].step(np.arange(ranks.size), ranks / ranks.sum(), where="mid", label=f"{name} split")
        axes[1].plot(LEVELS, res["interval_coverage_pit"], "o-", label=f"{name}: all cells")
        axes[1].plot(LEVELS, res["interval_coverage_pit_wet"], "s--", label=f"{name}: IMERG ≥ 0.1 mm/h")
    axes[0].axhline(1 / (MEMBERS + 1), color="k", lw=0.8, label="flat")
    axes[0].set_ylim(0, 1.6 / (MEMBERS + 1))
    axes[0].set(title=f"rank histogram ({MEMBERS} members, ranks ≥ 0.1 mm/h)", xlabel="rank of Stage IV", ylabel="frequency")
    axes[1].plot([0, 1], [0, 1], "k", lw=0.8)
    axes[1].set(title="coverage of central intervals (PIT)", xlabel="nominal", ylabel="observed")
    first = next(iter(results.values()))
    bars = ["imerg_mae", "crps_closed_form", "crps_ensemble", "crps_climatology"]
    x = np.arange(len(bars))
    for i, (name, res) in enumerate(results.items()):
        axes[2].bar(x + 0.4 * i - 0.2, [res[b] for b in bars], width=0.4, label=f"{name} split")
    axes[2].set_xticks(x, ["IMERG\nMAE", "CSGD\nCRPS", "ensemble\nCRPS", "clim.\nCRPS"])
    axes[2].set(title=f"held-out hours, {first['cells']} cells", ylabel="mm/h")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.suptitle("CSGD ensemble on real IMERG Early vs Stage IV, 2017-08-01 (blocked cross-validation)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=Path, default=PAIRS, help="folder with IMERGE.hourly.d1.nc and StageIV_0.1deg.hourly.d1.nc")
    parser.add_argument("--split", choices=sorted(SPLITS), nargs="+", default=["halves", "blocks"])
    parser.add_argument("--out", type=Path, default=Path("skill-csgd"), help="scores.json goes here")
    parser.add_argument("--figure", type=Path, default=REPO / "docs" / "figures" / "csgd_real_pairs.png")
    args = parser.parse_args()
    imerg, truth = args.pairs / "IMERGE.hourly.d1.nc", args.pairs / "StageIV_0.1deg.hourly.d1.nc"
    results, folds_info = {}, {}
    for split in args.split:
        folds = []
        for test_hours in SPLITS[split]:
            start = time.perf_counter()
            folds.append(fold_predictions(imerg, truth, test_hours))
            print(f"{split}: tested {test_hours[0]:02d}-{test_hours[-1]:02d} UTC in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        results[split] = score(folds)
        folds_info[split] = [f["fold"] for f in folds]
        print(json.dumps({"split": split, **results[split]}))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scores.json").write_text(json.dumps({"scores": results, "folds": folds_info}, indent=2) + "\n")
    plot(results, args.figure)


if __name__ == "__main__":
    main()
