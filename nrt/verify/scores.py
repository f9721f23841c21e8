"""Scores of a 0.05° ensemble and its deterministic baseline against truth on the cells of a swath (pure core).

`score_overpass` returns flat rows `{metric, threshold, value, model}` for `model="nrt"` (the ensemble),
`model="bilinear"` (the model's coarse input, bilinearly upsampled) and `model="csgd"` (the statistical CSGD
ensemble drawn from that input, `nrt.csgd`: the baseline the diffusion model must beat). Every row is either an additive part
(a mean over the cells, a mean of squares, or a count) or a score derived from parts (`derive`), so the scores
of many overpasses pool exactly (`pool`): the catalog keeps the parts, the report and the gauges pool them.

Definitions (n cells where the truth, every member and the baseline are finite inside the swath):
- `obs_mean`, `fcst_mean`: mean truth and mean forecast (ensemble mean for nrt), mm/h;
  `bias` = fcst_mean - obs_mean, `mae`, `rmse` of the ensemble mean (pysteps `det_cont_fct` ME, MAE, RMSE).
- `crps`: mean CRPS of the empirical ensemble distribution, E|X - y| - E|X - X'|/2. For the deterministic
  bilinear baseline it is its MAE. The CRPS skill score against a baseline b is 1 - CRPS(nrt) / CRPS(b)
  (`crpss`), from the pooled CRPS.
- `spread` = sqrt(mean over cells of the member variance (ddof=1) x (M+1)/M); `spread_skill` = spread / rmse.
  With the (M+1)/M factor a calibrated M-member ensemble has an expected ratio of 1 (Fortin et al. 2014).
  It is undefined for the bilinear baseline and not written for it.
- `hits`, `misses`, `false_alarms`, `correct_negatives` of the ensemble mean (bilinear: itself) at each
  categorical threshold, event = rate > threshold (pysteps `det_cat_fct`); `csi`, `pod`, `far` from those.
- `brier` at each Brier threshold: mean (p - o)^2 with p the fraction of members > threshold (the products'
  exceedance probability; 0 or 1 for the bilinear baseline) and o = truth > threshold. `rel_count_KK`, `rel_prob_KK`,
  `rel_obs_KK`: the reliability diagram's bin KK count, summed probability and observed events
  (pysteps `reldiag_accum`); bins with no forecast are not written.
- `rank_KK` (ensembles only, threshold = `rank_min`): rank histogram counts, KK = 0..M, defined as pysteps'
  `rankhist_accum` does: rates below `rank_min` tie, ties are split at random (seeded: re-scoring gives the same
  counts), and cells where truth and all members are below it are left out.
- `n_cells`: cells scored.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

with contextlib.redirect_stdout(io.StringIO()):  # pysteps prints its config file's path on first import
    from pysteps.verification import detcatscores, detcontscores, probscores

from nrt.products.summary import exceedance

NRT, BILINEAR, CSGD = "nrt", "bilinear", "csgd"
BASELINES = (BILINEAR, CSGD)  # the reference forecasts, in report order
LEGACY_MODELS = {"baseline": BILINEAR}  # catalog rows scored before the CSGD baseline existed
CONTINGENCY = ("hits", "misses", "false_alarms", "correct_negatives")
MEANS = ("obs_mean", "fcst_mean", "bias", "mae", "crps", "brier")  # pooled weighted by n_cells
ROOT_MEAN_SQUARES = ("rmse", "spread")  # pooled as sqrt of the weighted mean square
COUNTS = ("n_cells", *CONTINGENCY)
COUNT_PREFIXES = ("rank_", "rel_count_", "rel_prob_", "rel_obs_")
DERIVED = ("spread_skill", "csi", "pod", "far")
# What Prometheus gets: scalar scores, not the histogram and reliability bins (one series per bin is too many).
GAUGE_METRICS = ("n_cells", "obs_mean", "bias", "mae", "rmse", "crps", "spread_skill", "csi", "pod", "far", "brier")

Key = tuple[str, float | None]


@dataclass
class ScoreSet:
    """The scores of one model for one product, or pooled over several: (metric, threshold) -> value."""

    lead: int | None
    model: str
    values: dict[Key, float] = field(default_factory=dict)

    def get(self, metric: str, threshold: float | None = None) -> float:
        value = self.values.get((metric, None if threshold is None else float(threshold)))
        return math.nan if value is None else float(value)

    def thresholds(self, metric: str) -> list[float]:
        return sorted(t for m, t in self.values if m == metric and t is not None)

    def bins(self, prefix: str, threshold: float | None = None) -> dict[int, float]:
        """Histogram bins written as `<prefix>KK`: {KK: value}."""
        key = None if threshold is None else float(threshold)
        return {int(m[len(prefix):]): v for (m, t), v in self.values.items() if m.startswith(prefix) and t == key}

    def rows(self) -> list[dict]:
        return [
            {"metric": m, "threshold": t, "value": v, "model": self.model, "lead": self.lead}
            for (m, t), v in sorted(self.values.items(), key=lambda kv: (kv[0][0], -1.0 if kv[0][1] is None else kv[0][1]))
        ]


def crps_ensemble(members: np.ndarray, obs: np.ndarray) -> np.ndarray:
    """CRPS per cell of the empirical distribution of `members` (M, n) at `obs` (n,).

    Hand-written: pysteps' CRPS drops terms when the observation equals a member, and 0 mm/h ties are the rule
    for rain. With members sorted, sum_ij |x_i - x_j| = 2 sum_k (2k - M + 1) x_(k).
    """
    x = np.sort(np.asarray(members, dtype=np.float64), axis=0)
    m = x.shape[0]
    weights = (2 * np.arange(m) - m + 1)[:, None]
    mean_pair_distance = 2.0 * (weights * x).sum(axis=0) / m**2
    return np.abs(x - obs).mean(axis=0) - 0.5 * mean_pair_distance


def rank_histogram(members: np.ndarray, obs: np.ndarray, rank_min: float, seed: int = 0) -> np.ndarray:
    """Counts of the rank of `obs` among `members` (M, n): M + 1 bins, as pysteps' `rankhist_accum` defines them.

    Rates below `rank_min` tie, ties are split uniformly at random, and cells where the observation and every
    member are below `rank_min` are left out. Hand-written because pysteps splits ties with the unseeded global
    numpy generator (re-scoring an overpass would change its counts) and loops over cells in Python.
    """
    x = np.where(members < rank_min, -np.inf, members)
    y = np.where(obs < rank_min, -np.inf, obs)
    keep = np.isfinite(y) | np.isfinite(x).any(axis=0)
    x, y = x[:, keep], y[keep]
    below = (x < y).sum(axis=0)
    ties = (x == y).sum(axis=0)
    ranks = below + np.random.default_rng(seed).integers(0, ties + 1)
    return np.bincount(ranks, minlength=members.shape[0] + 1)


def derive(values: dict[Key, float]) -> dict[Key, float]:
    """Add the scores derived from additive parts: spread_skill, and csi/pod/far per threshold."""
    out = dict(values)
    spread, rmse = values.get(("spread", None)), values.get(("rmse", None))
    if spread is not None:
        out[("spread_skill", None)] = spread / rmse if rmse else math.nan
    for threshold in sorted({t for m, t in values if m == "hits"}):
        # numpy floats: a dry overpass (no hits or misses) gives NaN scores instead of ZeroDivisionError
        contab = {name: np.float64(values.get((name, threshold), 0.0)) for name in CONTINGENCY}
        with np.errstate(divide="ignore", invalid="ignore"):
            scores = detcatscores.det_cat_fct_compute(contab, ["CSI", "POD", "FAR"])
        for name, value in scores.items():
            out[(name.lower(), threshold)] = float(value)
    return out


def _categorical(pred: np.ndarray, obs: np.ndarray, threshold: float) -> dict[Key, float]:
    contab = detcatscores.det_cat_fct_init(threshold)
    detcatscores.det_cat_fct_accum(contab, pred, obs)
    return {(name, float(threshold)): float(contab[name]) for name in CONTINGENCY}


def _probabilistic(prob: np.ndarray, obs: np.ndarray, threshold: float, bins: int) -> dict[Key, float]:
    t = float(threshold)
    event = (obs > t).astype(np.float64)
    values = {("brier", t): float(np.mean((prob - event) ** 2))}  # pysteps has no Brier score
    # reldiag_accum counts obs >= X_min as an event; the 0/1 indicator with X_min 0.5 keeps "rate > t".
    table = probscores.reldiag_init(0.5, n_bins=bins, min_count=0)
    probscores.reldiag_accum(table, prob, event)
    for k in np.flatnonzero(table["num_idx"]):
        values[(f"rel_count_{k:02d}", t)] = float(table["num_idx"][k])
        values[(f"rel_prob_{k:02d}", t)] = float(table["X_sum"][k])
        values[(f"rel_obs_{k:02d}", t)] = float(table["Y_sum"][k])
    return values


def _deterministic(pred: np.ndarray, obs: np.ndarray, thresholds, brier_thresholds, bins) -> dict[Key, float]:
    cont = detcontscores.det_cont_fct(pred, obs, scores=["ME", "MAE", "RMSE"])
    values = {
        ("n_cells", None): float(obs.size),
        ("obs_mean", None): float(obs.mean()),
        ("fcst_mean", None): float(pred.mean()),
        ("bias", None): float(cont["ME"]),
        ("mae", None): float(cont["MAE"]),
        ("rmse", None): float(cont["RMSE"]),
    }
    for t in thresholds:
        values.update(_categorical(pred, obs, t))
    for t in brier_thresholds:
        values.update(_probabilistic((pred > t).astype(np.float64), obs, t, bins))
    return values


def _ensemble_values(members: np.ndarray, obs: np.ndarray, thresholds, brier_thresholds, rank_min, bins) -> dict[Key, float]:
    """Scores of an ensemble (M, n) against `obs` (n,): its mean's, its probabilities', CRPS, spread and ranks."""
    m = members.shape[0]
    values = _deterministic(members.mean(axis=0), obs, thresholds, (), bins)
    for t in brier_thresholds:  # the ensemble's probabilities come from its members, not from its mean
        values.update(_probabilistic(exceedance(members, t).astype(np.float64), obs, t, bins))
    values[("crps", None)] = float(crps_ensemble(members, obs).mean())
    if m > 1:
        # spread is hand-written: pysteps' ensemble_spread is a mean pairwise score, not this variance.
        values[("spread", None)] = float(np.sqrt(members.var(axis=0, ddof=1).mean() * (m + 1) / m))
        for k, count in enumerate(rank_histogram(members, obs, rank_min)):
            values[(f"rank_{k:02d}", float(rank_min))] = float(count)
    return values


def score_overpass(
    ensemble: np.ndarray,
    baseline: np.ndarray | None,
    truth: np.ndarray,
    mask: np.ndarray,
    thresholds: Sequence[float] = (1.0, 5.0),
    brier_thresholds: Sequence[float] = (1.0, 5.0, 10.0),
    *,
    rank_min: float = 0.1,
    reliability_bins: int = 10,
    csgd: np.ndarray | None = None,
) -> list[dict]:
    """Rows {metric, threshold, value, model} of the ensemble (member, lat, lon), the bilinear baseline (lat, lon)
    and the CSGD ensemble (member, lat, lon) against `truth` (lat, lon) on the cells of `mask` where truth and
    every forecast given are finite.

    `baseline` or `csgd` None leaves that model out. Returns [] when no cell is left. See the module for definitions.
    """
    ensemble = np.asarray(ensemble, dtype=np.float32)
    truth = np.asarray(truth, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    if ensemble.ndim != 3 or ensemble.shape[1:] != truth.shape or mask.shape != truth.shape:
        raise ValueError(f"ensemble {ensemble.shape}, truth {truth.shape} and mask {mask.shape} must share (lat, lon)")
    valid = mask & np.isfinite(truth) & np.isfinite(ensemble).all(axis=0)
    if baseline is not None:
        baseline = np.asarray(baseline, dtype=np.float32)
        if baseline.shape != truth.shape:
            raise ValueError(f"baseline {baseline.shape} and truth {truth.shape} must share (lat, lon)")
        valid &= np.isfinite(baseline)
    if csgd is not None:
        csgd = np.asarray(csgd, dtype=np.float32)
        if csgd.ndim != 3 or csgd.shape[1:] != truth.shape:
            raise ValueError(f"csgd ensemble {csgd.shape} and truth {truth.shape} must share (lat, lon)")
        valid &= np.isfinite(csgd).all(axis=0)
    if not valid.any():
        return []
    obs = truth[valid].astype(np.float64)
    options = (thresholds, brier_thresholds, rank_min, reliability_bins)
    rows = ScoreSet(None, NRT, derive(_ensemble_values(ensemble[:, valid].astype(np.float64), obs, *options))).rows()
    if baseline is not None:
        base = baseline[valid].astype(np.float64)
        base_values = _deterministic(base, obs, thresholds, brier_thresholds, reliability_bins)
        base_values[("crps", None)] = base_values[("mae", None)]  # the CRPS of a single value is its absolute error
        rows += ScoreSet(None, BILINEAR, derive(base_values)).rows()
    if csgd is not None:
        rows += ScoreSet(None, CSGD, derive(_ensemble_values(csgd[:, valid].astype(np.float64), obs, *options))).rows()
    for row in rows:
        del row["lead"]
    return rows


def score_sets(rows: Iterable[Mapping]) -> list[ScoreSet]:
    """Group catalog rows (with `product_id`, `lead`, `model`) into one ScoreSet per product and model."""
    sets: dict[tuple, ScoreSet] = {}
    for row in rows:
        model = LEGACY_MODELS.get(row["model"], row["model"])
        entry = sets.setdefault((row["product_id"], model), ScoreSet(int(row["lead"]), model))
        if row["value"] is not None:
            threshold = row.get("threshold")
            entry.values[(row["metric"], None if threshold is None else float(threshold))] = float(row["value"])
    return list(sets.values())


def is_count(metric: str) -> bool:
    return metric in COUNTS or metric.startswith(COUNT_PREFIXES)


def pool(sets: Iterable[ScoreSet], by_lead: bool = True) -> dict[tuple[int | None, str], ScoreSet]:
    """Pool score sets per (lead, model) (lead None with `by_lead=False`) as if scored together.

    Means are weighted by `n_cells`, RMSE and spread pool as root mean squares, counts add up, and the derived
    scores are recomputed from the pooled parts. A set without `n_cells` carries no weight and is skipped.
    """
    sums: dict[tuple, dict[Key, float]] = defaultdict(lambda: defaultdict(float))
    weights: dict[tuple, dict[Key, float]] = defaultdict(lambda: defaultdict(float))
    for s in sets:
        n = s.values.get(("n_cells", None))
        if not n:
            continue
        group = (s.lead if by_lead else None, s.model)
        for key, value in s.values.items():
            metric = key[0]
            if value is None or not math.isfinite(value):
                continue
            if is_count(metric):
                sums[group][key] += value
            elif metric in MEANS:
                sums[group][key] += value * n
                weights[group][key] += n
            elif metric in ROOT_MEAN_SQUARES:
                sums[group][key] += value * value * n
                weights[group][key] += n
    pooled = {}
    for group, parts in sums.items():
        values: dict[Key, float] = {}
        for key, total in parts.items():
            if is_count(key[0]):
                values[key] = total
            elif key[0] in MEANS:
                values[key] = total / weights[group][key]
            else:
                values[key] = math.sqrt(total / weights[group][key])
        pooled[group] = ScoreSet(group[0], group[1], derive(values))
    return dict(sorted(pooled.items(), key=lambda kv: (-1 if kv[0][0] is None else kv[0][0], kv[0][1])))


def crpss(pooled: Mapping[tuple[int | None, str], ScoreSet], lead: int | None, baseline: str) -> float:
    """1 - CRPS(nrt) / CRPS(baseline) of the pooled sets at `lead`; NaN when either is missing or the baseline's is 0."""
    ours, theirs = pooled.get((lead, NRT)), pooled.get((lead, baseline))
    if ours is None or theirs is None or not theirs.get("crps"):
        return math.nan
    return 1.0 - ours.get("crps") / theirs.get("crps")


def gauge_rows(pooled: Mapping[tuple[int | None, str], ScoreSet]) -> list[dict]:
    """The scalar scores of pooled sets as rows for `Metrics.record_scores` (NaN where undefined)."""
    return [row for s in pooled.values() for row in s.rows() if row["metric"] in GAUGE_METRICS]
