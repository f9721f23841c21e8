"""Real rain to the system's frame: 0.05° cells (pyresample) and 30-minute means.

Bucket averaging (the mean of the native pixels whose centres fall in a cell) suits products finer than
0.05°; a cell keeps a value only where at least `min_coverage` of its pixels hold data, else NaN. Products
about as coarse as a cell (NWC SAF CRR, ~4–5 km over Europe) would leave empty buckets, so they take the
nearest pixel within `radius_m` instead. Both come from pyresample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from nrt.grids import Domain, LatLonGrid, TARGET_RES, from_area_rows, target_grid

HALF_HOUR_MINUTES = 30


def covering_grid(frames: xr.DataArray, bbox: tuple[float, float, float, float] | None = None,
                  res: float = TARGET_RES) -> LatLonGrid:
    """The 0.05° target grid (edges on the 0.1° lattice) covering the frames' lat/lon, inside `bbox` if given
    (west, south, east, north): a projected product's row/column window reaches beyond its bbox."""
    lon, lat = np.asarray(frames.lon), np.asarray(frames.lat)
    ok = np.isfinite(lon) & np.isfinite(lat)
    west, south, east, north = float(lon[ok].min()), float(lat[ok].min()), float(lon[ok].max()), float(lat[ok].max())
    if bbox:
        west, south, east, north = max(west, bbox[0]), max(south, bbox[1]), min(east, bbox[2]), min(north, bbox[3])
    return target_grid(Domain(west, south, east, north), res)


@dataclass
class Regridder:
    """Maps 2-D fields on one native grid to a LatLonGrid (latitude ascending); build once, call per frame."""

    grid: LatLonGrid
    method: str
    min_coverage: float
    _state: object

    @classmethod
    def build(cls, lon: np.ndarray, lat: np.ndarray, grid: LatLonGrid, method: str = "bucket",
              min_coverage: float = 0.5, radius_m: float = 5000.0) -> Regridder:
        area = grid.area_definition()
        keep = np.isfinite(lon) & np.isfinite(lat)
        if method == "bucket":
            import dask.array as da
            from pyresample.bucket import BucketResampler

            resampler = BucketResampler(area, da.from_array(lon[keep].astype(np.float64)),
                                        da.from_array(lat[keep].astype(np.float64)))
            resampler.idxs = da.from_array(resampler.idxs.compute())  # computed once, reused for every frame
            totals = np.asarray(resampler.get_count().compute(), dtype=np.float64)
            return cls(grid, method, min_coverage, (resampler, keep, totals))
        if method == "nearest":
            from pyresample import geometry, kd_tree

            swath = geometry.SwathDefinition(lons=lon[keep].astype(np.float64), lats=lat[keep].astype(np.float64))
            info = kd_tree.get_neighbour_info(swath, area, radius_m, neighbours=1)
            return cls(grid, method, min_coverage, (info, keep, area))
        raise ValueError(f"unknown regridding method {method!r} (bucket or nearest)")

    def __call__(self, field: np.ndarray) -> np.ndarray:
        if self.method == "bucket":
            import dask.array as da

            resampler, keep, totals = self._state
            values = np.asarray(field)[keep].astype(np.float64)
            valid = np.isfinite(values)
            sums = resampler.get_sum(da.from_array(np.where(valid, values, 0.0))).compute()
            counts = resampler.get_sum(da.from_array(valid.astype(np.float64))).compute()
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = np.where((totals > 0) & (counts >= self.min_coverage * totals) & (counts > 0), sums / counts, np.nan)
        else:
            from pyresample import kd_tree

            (valid_input, valid_output, index, _), keep, area = self._state
            mean = kd_tree.get_sample_from_neighbour_info("nn", area.shape, np.asarray(field)[keep].astype(np.float64),
                                                          valid_input, valid_output, index, fill_value=np.nan)
        return from_area_rows(np.asarray(mean, dtype=np.float32))


def to_target_grid(frames: xr.DataArray, regridder: Regridder) -> xr.DataArray:
    """(time, y, x) native frames -> (time, lat, lon) on the regridder's 0.05° grid, attributes kept."""
    grid = regridder.grid
    data = np.stack([regridder(frame) for frame in np.asarray(frames)]) if frames.sizes["time"] else \
        np.empty((0, *grid.shape), np.float32)
    attrs = {**frames.attrs, "regridding": (
        f"pyresample bucket average to {grid.res} deg, NaN where under {regridder.min_coverage:.0%} of the cell's pixels hold data"
        if regridder.method == "bucket" else f"pyresample nearest native pixel to each {grid.res} deg cell centre")}
    attrs.pop("crs", None)
    return xr.DataArray(data, dims=("time", "lat", "lon"), coords={"time": frames.time, **grid.coords()},
                        name=frames.name, attrs=attrs)


def to_half_hours(frames: xr.DataArray) -> xr.DataArray:
    """30-minute mean rates, each named by its half hour's start, kept only where every sub-period is present.

    A cell is NaN in a half hour if any of its sub-periods is NaN there. Sources coarser than 30 minutes
    (hourly MRMS and RADOLAN RW) are returned unchanged, flagged by `averaging_period_minutes` = 60.
    """
    period = float(frames.attrs["period_minutes"])
    if period >= HALF_HOUR_MINUTES:
        return frames.assign_attrs(averaging_period_minutes=period,
                                   frame_note="hourly source: each value is the mean rate over the hour from `time`"
                                   if period == 60 else f"{period:g}-min source")
    if HALF_HOUR_MINUTES % period:
        raise ValueError(f"a {period:g}-min period does not divide 30 minutes")
    need = int(HALF_HOUR_MINUTES // period)
    windows = frames.time.dt.floor(f"{HALF_HOUR_MINUTES}min")
    means, starts = [], []
    for start, group in frames.groupby(windows.rename("window")):
        if np.unique(group.time.values).size == need:
            means.append(group.mean("time", skipna=False).values)
            starts.append(start)
    data = np.stack(means).astype(np.float32) if means else np.empty((0, *frames.shape[1:]), np.float32)
    time = xr.Variable("time", np.array(starts, dtype="datetime64[ns]"),
                       {"standard_name": "time", "long_name": "start of the half hour (UTC)"})
    coords = {k: v for k, v in frames.coords.items() if "time" not in v.dims}
    return xr.DataArray(data, dims=frames.dims, coords={"time": time, **coords}, name=frames.name,
                        attrs={**frames.attrs, "averaging_period_minutes": float(HALF_HOUR_MINUTES),
                               "frame_note": f"mean of the {need} {period:g}-min periods in each half hour"})
