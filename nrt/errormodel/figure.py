"""Real against modelled IMERG statistics in one figure: truth given IMERG, detection, error correlogram, randomError."""

from __future__ import annotations

import os

import numpy as np

from nrt.errormodel.params import ErrorModel
from nrt.errormodel.statistics import QUANTILES
from nrt.io import atomic_path

REAL, MODEL = ("real IMERG Early", "#1f77b4"), ("modelled", "#d62728")


def _bin_labels(stats: dict) -> list[str]:
    return [f"≥{b['low']:g}" if np.isinf(b["high"]) else f"{b['low']:g}–{b['high']:g}" for b in stats["bins"]]


def plot_comparison(real: dict, modelled: dict, model: ErrorModel, path: str | os.PathLike, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    labels = _bin_labels(real)
    x = np.arange(len(labels))
    lo, hi = QUANTILES.index(0.25), QUANTILES.index(0.75)

    ax = axes[0, 0]
    for offset, stats, (name, colour) in ((-0.15, real, REAL), (0.15, modelled, MODEL)):
        mean = np.array([b["truth_mean"] for b in stats["bins"]])
        q = np.array([b["truth_quantiles"] for b in stats["bins"]])
        ax.vlines(x + offset, q[:, 0], q[:, -1], color=colour, lw=1, alpha=0.6)
        ax.vlines(x + offset, q[:, lo], q[:, hi], color=colour, lw=5, alpha=0.6)
        ax.plot(x + offset, mean, "o", color=colour, label=f"{name}: mean, 25–75 % and 10–90 % of truth")
    ax.plot(x, [b["estimate_mean"] for b in real["bins"]], "k_", ms=18, label="mean IMERG rate in the bin (real)")
    ax.set_xticks(x, labels)
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("IMERG rate bin (mm/h)")
    ax.set_ylabel("Stage IV truth (mm/h)")
    ax.set_title("Truth given IMERG")
    ax.legend(fontsize=8, loc="upper left")

    ax = axes[0, 1]
    kinds = [(thr, kind) for thr in real["detection"] for kind in ("hit", "miss", "false")]
    xs = np.arange(len(kinds))
    for offset, stats, (name, colour) in ((-0.2, real, REAL), (0.2, modelled, MODEL)):
        ax.bar(xs + offset, [stats["detection"][t][k] for t, k in kinds], width=0.4, color=colour, label=name)
    ax.set_xticks(xs, [f"{k}\n{t} mm/h" for t, k in kinds])
    ax.set_ylabel("fraction of all cells")
    ax.set_title("Hits, misses and false alarms")
    ax.legend(fontsize=8)

    ax = axes[1, 0]
    for stats, (name, colour) in ((real, REAL), (modelled, MODEL)):
        c = stats["error_correlogram"]
        ax.plot(c["distance_km"], c["correlation"], "o-", ms=3, color=colour,
                label=f"{name}: e-folding {stats['error_length_km']:.1f} km")
    ax.set_xlim(0, 100)
    ax.axhline(np.exp(-1), color="0.5", ls=":", lw=0.8)
    ax.set_xlabel("distance (km)")
    ax.set_ylabel("correlation of IMERG − truth")
    ax.set_title("Spatial correlation of the error")
    ax.legend(fontsize=8)

    ax = axes[1, 1]
    for stats, (name, colour) in ((real, REAL), (modelled, MODEL)):
        wet = [b for b in stats["bins"] if b["fraction"] > 0]
        ax.plot([b["estimate_mean"] for b in wet], [b["rms_error"] for b in wet], "o", color=colour,
                label=f"{name}: RMS(truth − IMERG) by bin")
    rate = np.logspace(-2.5, 1.5, 100)
    curve = np.hypot(model.random_error_floor_mmh, model.random_error_coef * rate**model.random_error_exponent)
    ax.plot(rate, curve, "k-", lw=1, label="randomError written by the model")
    ax.set_xscale("log")
    ax.set_xlabel("IMERG rate (mm/h)")
    ax.set_ylabel("mm/h")
    ax.set_title("randomError against the actual RMS error")
    ax.legend(fontsize=8)

    fig.suptitle(title or "IMERG error model: real against modelled")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
