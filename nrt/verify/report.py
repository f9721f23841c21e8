"""`nrt verify` report: the DPR scores of a span from the catalog, pooled by lead, as Markdown and PNG plots.

Scores are pooled with `nrt.verify.scores.pool` (as if every scored cell of the span were one sample), so the
tables and plots agree with what one big `score_overpass` call would give. Figures are drawn on
`matplotlib.figure.Figure` (Agg, no pyplot state), each written atomically.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from nrt import __version__
from nrt.io import atomic_path
from nrt.timeline import isoformat, utc
from nrt.verify.online import TRUTH_SOURCE, VerifySettings
from nrt.verify.scores import BASELINES, BILINEAR, CSGD, NRT, ScoreSet, crpss, pool, score_sets

REPORT = "report.md"
RELIABILITY_MIN_COUNT = 10  # reliability points from fewer forecasts are not drawn (pysteps' default)
MODELS = (NRT, *BASELINES)
COLOURS = {NRT: "tab:blue", BILINEAR: "tab:orange", CSGD: "tab:green"}
LABELS = {NRT: "nrt ensemble", BILINEAR: "bilinear (upsampled input)", CSGD: "CSGD ensemble (statistical)"}


@dataclass
class Report:
    markdown: Path
    figures: list[Path] = field(default_factory=list)
    overpasses: int = 0
    products: int = 0


@dataclass
class Pooled:
    """The span's scores pooled per (lead, model) and over all leads per model, and the rank histograms."""

    by_lead: dict[tuple[int | None, str], ScoreSet]
    all_leads: dict[tuple[int | None, str], ScoreSet]
    members: int | None  # the usual ensemble size (rank histograms pool only products of this size)
    ranks_by_lead: dict[int | None, np.ndarray]

    @property
    def leads(self) -> list[int]:
        return sorted({lead for lead, model in self.by_lead if model == NRT})

    def get(self, lead: int | None, model: str) -> ScoreSet | None:
        return (self.all_leads if lead is None else self.by_lead).get((lead, model))


def rank_counts(s: ScoreSet) -> np.ndarray | None:
    threshold = next((t for m, t in s.values if m.startswith("rank_")), None)
    bins = s.bins("rank_", threshold)
    return np.array([bins[k] for k in sorted(bins)]) if bins else None


def pool_span(sets: list[ScoreSet]) -> Pooled:
    sizes = Counter(len(r) - 1 for r in (rank_counts(s) for s in sets if s.model == NRT) if r is not None)
    members = sizes.most_common(1)[0][0] if sizes else None
    ranks: dict[int | None, np.ndarray] = {}
    for s in sets:
        counts = rank_counts(s) if s.model == NRT else None
        if counts is None or len(counts) - 1 != members:
            continue
        for lead in (s.lead, None):
            ranks[lead] = ranks.get(lead, 0) + counts
    return Pooled(pool(sets), pool(sets, by_lead=False), members, ranks)


# -------------------------------------------------------------------------------------------- figures

def _figure(nrows: int, ncols: int, width: float = 4.0, height: float = 3.2):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def _by_lead(pooled: Pooled, model: str, metric: str, threshold: float | None = None) -> tuple[list[int], list[float]]:
    leads = [lead for lead in pooled.leads if (lead, model) in pooled.by_lead]
    return leads, [pooled.by_lead[(lead, model)].get(metric, threshold) for lead in leads]


def _lead_axis(ax, pooled: Pooled) -> None:
    ax.set_xticks(pooled.leads)
    ax.set_xlabel("lead (half-hours after the IMERG granule)")
    ax.grid(alpha=0.3)


def _lines(ax, pooled: Pooled, metric: str, threshold: float | None = None, models=MODELS) -> None:
    for model in models:
        leads, values = _by_lead(pooled, model, metric, threshold)
        if leads and np.isfinite(values).any():
            ax.plot(leads, values, marker="o", color=COLOURS[model], label=LABELS[model], ls="-" if model == NRT else "--")
    _lead_axis(ax, pooled)


def plot_scores_by_lead(pooled: Pooled, path: Path) -> Path:
    fig, axes = _figure(2, 2)
    panels = [("bias", "bias of the mean (mm/h)"), ("mae", "MAE of the mean (mm/h)"), ("rmse", "RMSE of the mean (mm/h)"),
              ("spread_skill", "spread / skill")]
    for ax, (metric, title) in zip(axes.flat, panels):
        _lines(ax, pooled, metric, models=(NRT, CSGD) if metric == "spread_skill" else MODELS)
        ax.set_title(title)
        if metric == "bias":
            ax.axhline(0, color="0.3", lw=0.8)
        if metric == "spread_skill":
            ax.axhline(1, color="0.3", lw=0.8, ls=":", label="calibrated")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("Continuous scores against DPR by lead")
    return _save(fig, path)


def plot_crps_by_lead(pooled: Pooled, path: Path) -> Path:
    fig, axes = _figure(1, 2)
    _lines(axes[0, 0], pooled, "crps")
    axes[0, 0].set_title("CRPS (mm/h); bilinear: its MAE")
    axes[0, 0].legend(fontsize=8)
    leads = np.array(pooled.leads, dtype=float)
    ax = axes[0, 1]
    width = 0.8 / len(BASELINES)
    for i, baseline in enumerate(BASELINES):
        skill = np.nan_to_num([crpss(pooled.by_lead, lead, baseline) for lead in pooled.leads])
        ax.bar(leads + (i - (len(BASELINES) - 1) / 2) * width, skill, width=width, color=COLOURS[baseline],
               edgecolor=["tab:red" if v < 0 else "none" for v in skill], label=f"against {LABELS[baseline]}")
    ax.axhline(0, color="0.3", lw=0.8)
    ax.legend(fontsize=7)
    ax.set_title("CRPSS = 1 - CRPS / CRPS(baseline)")
    _lead_axis(ax, pooled)
    fig.suptitle("CRPS by lead")
    return _save(fig, path)


def plot_categorical(pooled: Pooled, thresholds: list[float], path: Path) -> Path:
    fig, axes = _figure(len(thresholds), 3)
    for row, t in enumerate(thresholds):
        for col, metric in enumerate(("csi", "pod", "far")):
            ax = axes[row, col]
            _lines(ax, pooled, metric, t)
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(f"{metric.upper()} of the mean, rate > {t:g} mm/h")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("Categorical scores against DPR by lead and threshold")
    return _save(fig, path)


def plot_brier(pooled: Pooled, thresholds: list[float], path: Path) -> Path:
    fig, axes = _figure(1, len(thresholds))
    for ax, t in zip(axes[0], thresholds):
        _lines(ax, pooled, "brier", t)
        ax.set_title(f"Brier score, rate > {t:g} mm/h")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("Brier score against DPR by lead and threshold (lower is better)")
    return _save(fig, path)


def plot_rank_histograms(pooled: Pooled, path: Path) -> Path:
    panels = [*pooled.leads, None]
    ncols = min(4, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = _figure(nrows, ncols, 3.4, 2.6)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, lead in zip(axes.flat, panels):
        counts = pooled.ranks_by_lead.get(lead)
        ax.set_title("all leads" if lead is None else f"lead {lead}")
        if counts is None or counts.sum() == 0:
            ax.text(0.5, 0.5, "no wet cells", ha="center", va="center", transform=ax.transAxes)
            continue
        ax.bar(np.arange(len(counts)), counts / counts.sum(), width=1.0, color=COLOURS[NRT], edgecolor="white", lw=0.3)
        ax.axhline(1 / len(counts), color="0.2", ls=":", lw=1)
        ax.set_xlabel(f"rank of DPR among {len(counts) - 1} members")
        ax.text(0.98, 0.95, f"n = {int(counts.sum())}", ha="right", va="top", transform=ax.transAxes, fontsize=8)
    fig.suptitle("Rank histograms (flat = calibrated; U = under-dispersed; ∩ = over-dispersed)")
    return _save(fig, path)


def reliability_points(s: ScoreSet, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean forecast probability, observed frequency, count) per bin with at least RELIABILITY_MIN_COUNT forecasts."""
    count, prob, obs = (s.bins(prefix, threshold) for prefix in ("rel_count_", "rel_prob_", "rel_obs_"))
    keys = [k for k in sorted(count) if count[k] >= RELIABILITY_MIN_COUNT]
    n = np.array([count[k] for k in keys], dtype=float)
    return np.array([prob.get(k, 0.0) for k in keys]) / np.maximum(n, 1), np.array([obs.get(k, 0.0) for k in keys]) / np.maximum(n, 1), n


def plot_reliability(pooled: Pooled, thresholds: list[float], path: Path) -> Path:
    from matplotlib import colormaps

    fig, axes = _figure(2, len(thresholds), 4.0, 3.0)
    cmap = colormaps["viridis"]
    leads = pooled.leads
    for col, t in enumerate(thresholds):
        ax, sharp = axes[0, col], axes[1, col]
        ax.plot([0, 1], [0, 1], color="0.3", lw=0.8, ls=":")
        for i, lead in enumerate(leads):
            s = pooled.by_lead.get((lead, NRT))
            x, y, _ = reliability_points(s, t)
            if x.size:
                ax.plot(x, y, color=cmap(i / max(len(leads) - 1, 1)), lw=0.8, alpha=0.7, label=f"lead {lead}")
        for model, style in ((NRT, dict(color="black", lw=2, marker="o")), (CSGD, dict(color=COLOURS[CSGD], ls="--", marker="^")),
                             (BILINEAR, dict(color=COLOURS[BILINEAR], ls="none", marker="s"))):
            s = pooled.get(None, model)
            if s is None:
                continue
            x, y, n = reliability_points(s, t)
            if x.size:
                ax.plot(x, y, label=f"{LABELS[model]}, all leads", **style)
            if model == NRT and n.size:
                sharp.bar(x, n, width=0.08, color=COLOURS[NRT])
        pooled_nrt = pooled.get(None, NRT)
        if pooled_nrt is not None:
            events = sum(pooled_nrt.bins("rel_obs_", t).values())
            total = sum(pooled_nrt.bins("rel_count_", t).values())
            if total:
                ax.axhline(events / total, color="0.5", lw=0.8, ls="--", label="observed frequency")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"reliability, rate > {t:g} mm/h")
        ax.set_xlabel("forecast probability")
        ax.set_ylabel("observed frequency")
        sharp.set_yscale("log")
        sharp.set_xlim(0, 1)
        sharp.set_xlabel("forecast probability")
        sharp.set_ylabel("forecasts (all leads)")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Reliability diagrams (top) and sharpness (bottom)")
    return _save(fig, path)


# -------------------------------------------------------------------------------------------- markdown

def _fmt(value: float, digits: int = 3) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _skill(score: float, reference: float) -> float:
    return 1 - score / reference if reference and math.isfinite(reference) else math.nan


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|", *("| " + " | ".join(r) + " |" for r in rows)]


def markdown(pooled: Pooled, start: datetime, end: datetime, overpasses: int, products: int, figures: list[Path],
             thresholds: list[float], brier_thresholds: list[float]) -> str:
    def each(lead, metric, threshold=None, digits=3, models=MODELS):
        out = []
        for model in models:
            s = pooled.get(lead, model)
            out.append(_fmt(s.get(metric, threshold) if s else math.nan, digits))
        return out

    def skill(lead, metric, baseline, threshold=None):
        s, b = pooled.get(lead, NRT), pooled.get(lead, baseline)
        return _fmt(_skill(s.get(metric, threshold), b.get(metric, threshold) if b else math.nan), 2)

    lead_rows = [*pooled.leads, None]
    scored = [lead for lead in lead_rows if pooled.get(lead, NRT)]

    def name(lead):
        return "all" if lead is None else str(lead)
    lines = [
        "# nrt verification against GPM DPR",
        "",
        f"Span (valid times): {isoformat(start)} to {isoformat(end)}. Generated {isoformat(datetime.now(timezone.utc))} by nrt {__version__}.",
        "",
        f"- Half-hours with a DPR overpass scored: **{overpasses}**; ensemble products scored: **{products}**.",
        "- Truth: DPR 2A near-surface rate on the 0.05° grid (footprint-weighted), inside the swath.",
        "- Baselines: **bilinear**, the model's coarse input (IMERG Early at lead 0, the nowcast mean at later leads),"
        " bilinearly upsampled (its CRPS is its MAE); **CSGD**, the statistical ensemble (censored shifted gamma"
        " error model with correlated noise) drawn from that same input with as many members.",
        "- Scores pool every scored cell of the span (see docs/verification.md). Lead is in half-hours after the IMERG granule.",
        "",
        "## CRPS and skill by lead",
        "",
    ]
    rows = [[name(lead), str(int(pooled.get(lead, NRT).get("n_cells"))), *each(lead, "crps"),
             *(skill(lead, "crps", b) for b in BASELINES), *each(lead, "spread_skill", digits=2, models=(NRT, CSGD))]
            for lead in scored]
    lines += _table(["lead", "cells", "CRPS", "CRPS bilinear", "CRPS CSGD", "CRPSS vs bilinear", "CRPSS vs CSGD",
                     "spread/skill", "spread/skill CSGD"], rows)
    lines += ["", "## Continuous scores of the mean by lead (nrt / bilinear / CSGD)", ""]
    rows = [[name(lead), _fmt(pooled.get(lead, NRT).get("obs_mean")), *each(lead, "bias"), *each(lead, "mae"), *each(lead, "rmse")]
            for lead in scored]
    lines += _table(["lead", "DPR mean", "bias", "bias bilinear", "bias CSGD", "MAE", "MAE bilinear", "MAE CSGD",
                     "RMSE", "RMSE bilinear", "RMSE CSGD"], rows)
    lines += ["", "## Categorical scores of the ensemble mean (event: rate > threshold)", ""]
    rows = [[name(lead), f"{t:g}", *each(lead, "csi", t, 2), *each(lead, "pod", t, 2), *each(lead, "far", t, 2)]
            for t in thresholds for lead in scored]
    lines += _table(["lead", "mm/h", *(f"{m}{suffix}" for m in ("CSI", "POD", "FAR") for suffix in ("", " bilinear", " CSGD"))], rows)
    lines += ["", "## Brier score (event: rate > threshold)", ""]
    rows = [[name(lead), f"{t:g}", *each(lead, "brier", t, 4), *(skill(lead, "brier", b, t) for b in BASELINES)]
            for t in brier_thresholds for lead in scored]
    lines += _table(["lead", "mm/h", "Brier", "Brier bilinear", "Brier CSGD", "BSS vs bilinear", "BSS vs CSGD"], rows)
    lines += ["", "## Figures", ""]
    lines += [f"![{f.stem.replace('_', ' ')}]({f.name})" for f in figures]
    lines += [
        "",
        "## Reading the figures",
        "",
        "- CRPSS and BSS above 0: the ensemble beats that baseline; against CSGD, the statistical ensemble it must beat."
        " Spread/skill near 1: the spread matches the error.",
        "- Rank histograms: flat is calibrated; U-shaped means too little spread; a slope means a bias. Cells where DPR and"
        " every member are below the rank threshold are left out.",
        f"- Reliability: points on the diagonal are reliable; bins with fewer than {RELIABILITY_MIN_COUNT} forecasts are not drawn.",
        "",
    ]
    return "\n".join(lines)


def scored_thresholds(pooled: Pooled, metric: str, configured: Sequence[float]) -> list[float]:
    """The configured thresholds that were scored, else every threshold scored (the config changed since)."""
    scored = sorted({t for s in pooled.by_lead.values() for t in s.thresholds(metric)})
    return [t for t in configured if t in scored] or scored


def write_report(catalog, start: datetime, end: datetime, out: str | Path, settings: VerifySettings) -> Report:
    """Write `<out>/report.md` and its PNG figures for the DPR scores of products valid in [start, end]; the
    thresholds shown are those of `settings` (see `scored_thresholds`)."""
    start, end = utc(start), utc(end)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [vars(r) for r in catalog.scores(truth_source=TRUTH_SOURCE, since=start, until=end)]  # asdict deep-copies: 10x slower
    sets = score_sets(rows)
    report = Report(out / REPORT)
    report.overpasses = len({r["valid_time"] for r in rows})
    report.products = len({r["product_id"] for r in rows})
    if not sets:
        text = (f"# nrt verification against GPM DPR\n\nNo DPR scores for valid times {isoformat(start)} to {isoformat(end)}:"
                " no overpass crossed the domain, or no product was valid then.\n")
        with atomic_path(report.markdown) as tmp:
            tmp.write_text(text)
        return report
    pooled = pool_span(sets)
    thresholds = scored_thresholds(pooled, "hits", settings.thresholds_mmh)
    brier = scored_thresholds(pooled, "brier", settings.brier_thresholds_mmh)
    report.figures = [
        plot_scores_by_lead(pooled, out / "scores_by_lead.png"),
        plot_crps_by_lead(pooled, out / "crps_by_lead.png"),
    ]
    if thresholds:
        report.figures.append(plot_categorical(pooled, thresholds, out / "categorical_by_lead.png"))
    if brier:
        report.figures.append(plot_brier(pooled, brier, out / "brier_by_lead.png"))
        report.figures.append(plot_reliability(pooled, brier, out / "reliability.png"))
    if pooled.ranks_by_lead:
        report.figures.append(plot_rank_histograms(pooled, out / "rank_histograms.png"))
    text = markdown(pooled, start, end, report.overpasses, report.products, report.figures, thresholds, brier)
    with atomic_path(report.markdown) as tmp:
        tmp.write_text(text)
    return report
