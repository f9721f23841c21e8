"""Online verification: score every product valid during a DPR overpass on the swath's cells.

The unit is the half-hour V (products are rates over [V, V + 30 min)): the truth is every DPR scan inside
[V, V + 30 min), from all downloaded granules that reach into it (a crossing can straddle two NRT granules),
gridded to the 0.05° target grid with `nrt.sources.dpr.grid_swath`. Every ensemble product valid at V is
scored, whatever its lead and cycle (not only the best available), with two baselines beside it: its
stored input (`input_precipitation`, bilinearly upsampled) and the CSGD ensemble drawn from that input
(`nrt.csgd`, as many members, seeded by valid time and lead so re-scoring gives the same draw). The rows go
to the catalog under truth source "dpr".

Products for V keep arriving for about four hours after V (lead 8 first, IMERG itself last), and the DPR
lookback makes each cycle see the same granules again, so a product is scored once, and again only when the
swath now covers more cells (a second granule of the crossing arrived).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from nrt.errors import DataError, NrtError
from nrt.grids import LatLonGrid, target_grid
from nrt.products.netcdf import ENSEMBLE, INPUT_VAR, PRECIP_VAR, grid_of, open_product
from nrt.sources import dpr
from nrt.timeline import HALF_HOUR, floor_halfhour, isoformat, utc
from nrt.verify.scores import NRT, ScoreSet, gauge_rows, pool, score_overpass, score_sets

CSGD_SEED = 7919  # the CSGD baseline's draw: seed = CSGD_SEED + half-hours since the epoch * 97 + lead

log = logging.getLogger("nrt.verify")

TRUTH_SOURCE = "dpr"
GRANULE_REACH = timedelta(hours=2)  # a research granule spans one orbit (~93 min); NRT ones ~30 min


@dataclass
class OverpassScores:
    """The products of one half-hour scored against DPR in one call."""

    valid_time: datetime
    granules: list[str]
    cells: int  # swath cells with a DPR retrieval inside the domain
    new_overpass: bool  # no product of this half-hour had DPR scores before
    product_ids: list[int] = field(default_factory=list)
    sets: list[ScoreSet] = field(default_factory=list)  # one per product and model, with the product's lead

    @property
    def gauge_rows(self) -> list[dict]:
        """Scalar scores pooled per (lead, model) over this call's products, for Prometheus."""
        return gauge_rows(pool(self.sets))


@dataclass(frozen=True)
class VerifySettings:
    """What verification uses, taken from the config once by `verify_settings(cfg)` (keys of `verify` unless noted)."""

    grid: LatLonGrid  # the domain's 0.05° target grid
    footprint_km: float  # `sources.dpr.footprint_km`
    csgd_params: Path  # `model.csgd_params`: the CSGD baseline
    min_swath_cells: int
    thresholds_mmh: tuple[float, ...]
    brier_thresholds_mmh: tuple[float, ...]
    rank_min_mmh: float
    reliability_bins: int


def verify_settings(cfg) -> VerifySettings:
    vc = cfg.verify
    return VerifySettings(target_grid(cfg.domain.box()), cfg.sources.dpr.footprint_km, cfg.model.csgd_params, vc.min_swath_cells,
                          tuple(vc.thresholds_mmh), tuple(vc.brier_thresholds_mmh), vc.rank_min_mmh, vc.reliability_bins)


def half_hours(path: Path) -> list[datetime]:
    """The half-hours a DPR granule's file name says it reaches into."""
    rf = dpr.parse_name(Path(path).name)
    if rf is None:
        raise DataError(path, "not a DPR 2A file name")
    out, v = [], floor_halfhour(rf.start)
    while v < rf.end:
        out.append(v)
        v += HALF_HOUR
    return out


def swath_files(catalog, valid_time: datetime, paths: Iterable[Path] = ()) -> list[Path]:
    """`paths` and the catalog's downloaded DPR granules that reach into [V, V + 30 min), by name."""
    end = valid_time + HALF_HOUR
    found = {Path(p).name: Path(p) for p in paths if valid_time in half_hours(Path(p))}
    for g in catalog.granules(source="dpr", start=valid_time - GRANULE_REACH, end=end, state="downloaded"):
        if g.end_time > valid_time and g.start_time < end and g.path and Path(g.path).is_file():
            found.setdefault(g.name, Path(g.path))
    return [found[name] for name in sorted(found)]


def gridded_truth(files: list[Path], valid_time: datetime, grid: LatLonGrid, footprint_km: float):
    """DPR rate and swath mask on `grid` from the scans of `files` inside [V, V + 30 min); None without scans."""
    swaths = [s for s in (dpr.read_dpr(f, valid_time, valid_time + HALF_HOUR) for f in files) if not s.empty]
    if not swaths:
        return None
    if len({s.rate.shape[1] for s in swaths}) > 1:
        raise DataError(files[0], f"granules of {isoformat(valid_time)} differ in rays per scan")
    swath = dpr.DprSwath(
        np.concatenate([s.lat for s in swaths]), np.concatenate([s.lon for s in swaths]),
        np.concatenate([s.rate for s in swaths]), np.concatenate([s.scan_time for s in swaths]),
        "+".join(s.name for s in swaths), swaths[0].version,
    )
    gridded = dpr.grid_swath(swath, grid, footprint_km)
    truth = gridded["precipitation"].values
    return truth, gridded["coverage"].values & np.isfinite(truth)


def read_product(path: str | Path, grid: LatLonGrid) -> tuple[np.ndarray, np.ndarray | None]:
    """Members (member, lat, lon) and the stored baseline (lat, lon) or None, of one ensemble file on `grid`."""
    ds = open_product(path)
    found = grid_of(ds)
    if found.shape != grid.shape or not np.isclose(found.lat0, grid.lat0) or not np.isclose(found.lon0, grid.lon0):
        raise DataError(path, f"product grid {found.shape} at ({found.lat0}, {found.lon0}) is not the domain's {grid.shape}")
    members = ds[PRECIP_VAR].values[:, 0]
    baseline = ds[INPUT_VAR].values[0] if INPUT_VAR in ds else None
    return members, baseline


def csgd_baseline_params(path: Path):
    """The CSGD parameters in `path`, or None (logged) when they need a covariate products lack."""
    from nrt.csgd import load_params

    params = load_params(path)
    if params.regression.covariate is not None:
        log.warning("%s needs %s, which products do not store: no CSGD baseline", path, params.regression.covariate)
        return None
    return params


def csgd_baseline(baseline: np.ndarray, params, grid: LatLonGrid, members: int, valid_time: datetime, lead: int) -> np.ndarray:
    """The CSGD ensemble (member, lat, lon) of the upsampled input `baseline` (lat, lon), drawn reproducibly."""
    from nrt.csgd import csgd_ensemble
    from nrt.downscale import cell_km

    seed = CSGD_SEED + int(valid_time.timestamp()) // 1800 * 97 + int(lead)
    return csgd_ensemble(baseline[None], params, members=members, cell_km=cell_km(grid), seed=seed)[:, 0]


def _scored_cells(catalog, product_id: int) -> float | None:
    rows = catalog.scores(product_id=product_id, truth_source=TRUTH_SOURCE, metric="n_cells", model=NRT)
    return rows[0].value if rows else None


def verify_half_hour(s: VerifySettings, catalog, valid_time: datetime, paths: Iterable[Path] = (), force: bool = False) -> OverpassScores | None:
    """Score the ensemble products valid at `valid_time` against DPR; None when nothing new was scored."""
    valid_time = utc(valid_time)
    products = catalog.products(since=valid_time, until=valid_time, kind=ENSEMBLE)
    if not products:
        log.debug("no products valid at %s to verify", isoformat(valid_time))
        return None
    files = swath_files(catalog, valid_time, paths)
    grid = s.grid
    found = gridded_truth(files, valid_time, grid, s.footprint_km) if files else None
    if found is None:
        return None
    truth, mask = found
    cells = int(mask.sum())
    if cells < s.min_swath_cells:
        log.debug("DPR covers %d cells of the domain at %s (< %d): not scored", cells, isoformat(valid_time), s.min_swath_cells)
        return None

    params = csgd_baseline_params(s.csgd_params)
    previous = {p.id: _scored_cells(catalog, p.id) for p in products}
    result = OverpassScores(valid_time, [f.name for f in files], cells, all(v is None for v in previous.values()))
    for product in products:
        if not force and previous[product.id] is not None and previous[product.id] >= cells:
            continue
        if not Path(product.path).is_file():
            log.warning("product %d (%s) has no file %s: not verified", product.id, isoformat(valid_time), product.path)
            continue
        try:
            members, baseline = read_product(product.path, grid)
        except DataError as exc:
            log.warning("product %d not verified: %s", product.id, exc)
            continue
        if baseline is None:
            log.warning("product %d has no %s: scored without its baseline", product.id, INPUT_VAR)
        csgd = None
        if baseline is not None and params is not None:
            csgd = csgd_baseline(baseline, params, grid, members.shape[0], valid_time, product.lead)
        rows = score_overpass(
            members, baseline, truth, mask, s.thresholds_mmh, s.brier_thresholds_mmh,
            rank_min=s.rank_min_mmh, reliability_bins=s.reliability_bins, csgd=csgd,
        )
        if not rows:
            continue
        catalog.add_scores(product.id, TRUTH_SOURCE, [{**row, "lead": product.lead} for row in rows])
        result.product_ids.append(product.id)
        result.sets += score_sets({**row, "lead": product.lead, "product_id": product.id} for row in rows)
    if not result.product_ids:
        return None
    crps = {s.lead: s.get("crps") for s in pool(result.sets).values() if s.model == NRT}
    log.info(
        "verified %d product(s) valid %s on %d DPR cells (%s): CRPS by lead %s",
        len(result.product_ids), isoformat(valid_time), cells, ", ".join(result.granules),
        ", ".join(f"{lead}: {value:.3f}" for lead, value in crps.items()),
    )
    return result


def verify_granules(s: VerifySettings, catalog, paths: Iterable[str | Path], force: bool = False) -> list[OverpassScores]:
    """Score every product valid in the half-hours the DPR granules `paths` reach into, oldest first.

    A half-hour that fails (an unreadable granule or product) is logged and skipped, so verification never
    stops a cycle. `force` re-scores products already scored.
    """
    usable, times = [], set()
    for path in map(Path, paths):
        try:
            times.update(half_hours(path))
            usable.append(path)
        except DataError as exc:
            log.warning("not verified: %s", exc)
    results = []
    for valid_time in sorted(times):
        try:
            scored = verify_half_hour(s, catalog, valid_time, usable, force)
        except NrtError as exc:
            log.warning("verification of %s failed: %s", isoformat(valid_time), exc)
            continue
        if scored is not None:
            results.append(scored)
    return results


def verify_granule(s: VerifySettings, catalog, path: str | Path, force: bool = False) -> list[OverpassScores]:
    """`verify_granules` for one granule."""
    return verify_granules(s, catalog, [path], force)
