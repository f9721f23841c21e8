"""Operator alerts: is heavy rain likely somewhere in a configured area?

Definition. For an area (a lon/lat box) with threshold T mm/h and level L:
- the area's cells are the grid cells whose centres lie inside the box (edges included); a box smaller
  than a cell uses the one cell that contains the box centre;
- each cell's probability is the fraction of its valid (non-NaN) members with rate > T;
- the area's probability is the maximum over its cells and over the ensemble's times
  ("somewhere in the area, rain above T is this likely"), NaN when the area has no valid data;
- the alert is active when that probability >= L.
The daemon sets `nrt_precipitation_alert{area,threshold}` (0/1) and `..._probability` from these states
and logs `AlertState.line()`; the Prometheus rule in `deploy/` fires from the gauge.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import xarray as xr

from nrt.errors import ConfigError
from nrt.grids import LatLonGrid
from nrt.products.summary import exceedance


@dataclass(frozen=True)
class AlertState:
    area: str
    threshold: float  # mm/h
    probability: float  # area probability as defined above; NaN without valid data
    level: float  # configured probability that activates the alert
    active: bool

    def line(self) -> str:
        state = "ACTIVE" if self.active else "inactive"
        return f"alert {self.area}: P(rate > {self.threshold:g} mm/h) = {self.probability:.2f} (level {self.level:g}) {state}"


def area_cells(area, grid: LatLonGrid) -> tuple[slice, slice]:
    """Row and column slices of the grid cells belonging to `area` (see the module docstring)."""
    lats, lons = grid.lats, grid.lons
    rows = np.flatnonzero((lats >= area.south) & (lats <= area.north))
    cols = np.flatnonzero((lons >= area.west) & (lons <= area.east))
    if rows.size and cols.size:
        return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
    row, col = grid.index_of((area.south + area.north) / 2, (area.west + area.east) / 2)
    if not (0 <= row < grid.nlat and 0 <= col < grid.nlon):
        w, s, e, n = grid.extent
        raise ConfigError(f"alerts.areas[{area.name}]", f"box {area.west},{area.south},{area.east},{area.north} lies outside the product grid {w},{s},{e},{n}")
    return slice(row, row + 1), slice(col, col + 1)


def check_areas(areas: Iterable, grid: LatLonGrid) -> None:
    """Raise ConfigError for an area outside the grid (call once at start-up)."""
    for area in areas:
        area_cells(area, grid)


def alert_states(ensemble: xr.DataArray | np.ndarray, grid: LatLonGrid, areas: Iterable) -> list[AlertState]:
    """One state per configured area from an ensemble (member, [time,] lat, lon) in mm/h."""
    values = np.asarray(ensemble, dtype=np.float32)
    if values.ndim == 3:
        values = values[:, None]
    if values.ndim != 4 or values.shape[2:] != grid.shape:
        raise ValueError(f"ensemble must be (member, [time,] lat, lon) on a {grid.shape} grid, got {values.shape}")
    states = []
    for area in areas:
        rows, cols = area_cells(area, grid)
        prob = exceedance(values[:, :, rows, cols], area.threshold_mmh)
        p = float(np.nanmax(prob)) if np.isfinite(prob).any() else math.nan
        states.append(AlertState(area.name, float(area.threshold_mmh), p, float(area.probability), bool(p >= area.probability)))
    return states
