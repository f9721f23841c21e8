"""Quicklook PNG of one valid time: ensemble mean, one member, P(rate > threshold) and the spread.

matplotlib with the Agg backend (no display, no network: no basemap tiles or coastline downloads).
"""

from __future__ import annotations

import datetime as dt
import warnings
from pathlib import Path

import numpy as np
import xarray as xr

from nrt.io import atomic_path
from nrt.products.netcdf import grid_of, times_of
from nrt.products.summary import exceedance
from nrt.timeline import isoformat

# Rain-rate colour steps (mm/h): light rain to intense convective rates, as radar displays use.
RATE_LEVELS = [0.1, 0.5, 1, 2, 5, 10, 20, 50, 100]


def quicklook(ensemble: xr.DataArray, path: str | Path, threshold: float = 10.0, member: int = 0, title: str | None = None) -> Path:
    """Draw a 2×2 panel PNG from an ensemble (member, time=1, lat, lon) or (member, lat, lon) DataArray."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import BoundaryNorm

    precip = ensemble if "time" not in ensemble.dims else ensemble.isel(time=0)
    grid = grid_of(precip)
    values = np.asarray(precip.values, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells stay NaN
        mean = np.nanmean(values, axis=0)
        spread = np.nanstd(values, axis=0)
    prob = exceedance(values, threshold)
    lon_edges = np.append(grid.lon_bounds[:, 0], grid.lon_bounds[-1, 1])
    lat_edges = np.append(grid.lat_bounds[:, 0], grid.lat_bounds[-1, 1])

    cmap = plt.get_cmap("turbo").with_extremes(under="white")
    rate_norm = BoundaryNorm(RATE_LEVELS, cmap.N, extend="max")
    panels = [
        ("ensemble mean (mm/h)", mean, dict(cmap=cmap, norm=rate_norm)),
        (f"member {int(precip['member'][member]) if 'member' in precip.coords else member} (mm/h)", values[member], dict(cmap=cmap, norm=rate_norm)),
        (f"P(rate > {threshold:g} mm/h)", prob, dict(cmap="magma_r", vmin=0, vmax=1)),
        ("spread: member std (mm/h)", spread, dict(cmap="viridis", vmin=0)),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharex=True, sharey=True, layout="constrained")
    for ax, (label, field, style) in zip(axes.flat, panels):
        mesh = ax.pcolormesh(lon_edges, lat_edges, field, shading="flat", **style)
        fig.colorbar(mesh, ax=ax, shrink=0.9, extend="max" if "norm" in style else "neither")
        ax.set_title(label)
        ax.set_facecolor("0.8")  # grey shows cells with no data (NaN)
        ax.set_aspect(1 / np.cos(np.radians(lat_edges.mean())))
    for ax in axes[1]:
        ax.set_xlabel("longitude (°E)")
    for ax in axes[:, 0]:
        ax.set_ylabel("latitude (°N)")
    if title is None and "time" in ensemble.coords:
        title = f"nrt ensemble, valid {isoformat(times_of(ensemble)[0])}, {values.shape[0]} members"
    fig.suptitle(f"{title or f'nrt ensemble, {values.shape[0]} members'}  (grey: no data)")
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=90)
    finally:
        plt.close(fig)
    return path


def quicklook_title(valid_time: dt.datetime, cycle_time: dt.datetime, lead: int, members: int) -> str:
    return f"nrt {members}-member ensemble, valid {isoformat(valid_time)} (+30 min), cycle {isoformat(cycle_time)}, lead {lead * 30} min"
