"""One assembly of the model's inputs, for serving (nrt.pipeline), training sets (nrt.model.dataset) and skill.

`assemble` is pure: IMERG frames (and a nowcast, GEOS-FP, DEM) in, `Conditioning` out. The small helpers fix
the choices the two callers used to make differently:

- the 0.1° window of the domain is cut by coordinate label (nearest within 1e-3°), from frames read over any
  window that covers it (`coarse_window`);
- the IMERG variables read besides precipitation: `randomError` only, the one that feeds a channel
  (`imerg_variables`);
- one DEM cache directory (`dem_cache_dir`);
- GEOS-FP is the forecast the service holds at the cycle that first produces the valid time at lead 0, never
  the assimilation written afterwards (`geosfp_forecast_init`).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import xarray as xr

from nrt.errors import DataError
from nrt.grids import IMERG_RES, LatLonGrid
from nrt.model.conditioning import COARSE_FACTOR, Conditioning
from nrt.timeline import HALF_HOUR, geosfp_init_for

RANDOM_ERROR = "randomError"


def coarse_grid(grid: LatLonGrid) -> LatLonGrid:
    """The 0.1° cells that tile the 0.05° target `grid` (nrt.grids.target_grid snaps to 0.1°)."""
    half = grid.res / 2
    return LatLonGrid(IMERG_RES, round(grid.lat0 + half, 6), round(grid.lon0 + half, 6),
                      grid.nlat // COARSE_FACTOR, grid.nlon // COARSE_FACTOR)


def coarse_window(field_: xr.DataArray, grid: LatLonGrid) -> np.ndarray:
    """(…, lat, lon) values of `field_` on the 0.1° cells tiling `grid`, picked by coordinate label."""
    coarse = coarse_grid(grid)
    try:
        return field_.sel(lat=coarse.lats, lon=coarse.lons, method="nearest", tolerance=1e-3).values
    except KeyError:
        raise DataError("conditioning", f"{field_.name or 'field'} does not cover the domain's 0.1° cells") from None


def imerg_variables(cfg) -> list[str]:
    """IMERG variables read besides precipitation: randomError, when configured (the others feed no channel)."""
    return [RANDOM_ERROR] if RANDOM_ERROR in cfg.sources.imerg.extra_variables else []


def dem_cache_dir(cfg) -> Path:
    return cfg.workdir / "cache"


def geosfp_forecast_init(cfg, valid: datetime) -> datetime:
    """The GEOS-FP initialisation the service uses for `valid` at lead 0: the newest published at the cycle
    time that first holds the IMERG granule starting at `valid`."""
    cycle = valid + timedelta(minutes=cfg.timeline.imerg_latency_minutes)
    return geosfp_init_for(valid, cycle, timedelta(hours=cfg.timeline.geosfp_latency_hours))


def _at(frames: xr.Dataset, name: str, when: datetime) -> xr.DataArray:
    stamp = np.datetime64(when.replace(tzinfo=None), "ns")
    try:
        return frames[name].sel(time=stamp)
    except KeyError:
        raise DataError("conditioning", f"no IMERG {name} at {when.isoformat()}") from None


def assemble(grid: LatLonGrid, valid: datetime, lead: int, imerg: xr.Dataset, forecast: xr.DataArray | None = None,
             geosfp: xr.Dataset | None = None, dem: xr.Dataset | None = None) -> Conditioning:
    """The model's inputs at `valid` on the 0.05° `grid`.

    `imerg`: IMERG frames (time, lat, lon) over any window covering `grid`, with `precipitation` and, when
    used, `randomError`. Lead 0 takes IMERG at `valid`; lead L > 0 takes `forecast` ((member,) lat, lon: the
    nowcast valid at `valid`) and the random error of the granule the nowcast starts from (L half-hours before).
    """
    if lead > 0:
        if forecast is None:
            raise DataError("conditioning", f"lead {lead} at {valid.isoformat()} needs the nowcast valid then")
        precip = coarse_window(forecast, grid)
    else:
        precip = coarse_window(_at(imerg, "precipitation", valid), grid)
    precip = np.asarray(precip, dtype=np.float32)
    precip = precip[None] if precip.ndim == 2 else precip
    origin = valid - max(lead, 0) * HALF_HOUR
    error = coarse_window(_at(imerg, RANDOM_ERROR, origin), grid).astype(np.float32) if RANDOM_ERROR in imerg else None
    return Conditioning(precip, grid, lead=max(lead, 0), random_error=error, geosfp=geosfp, dem=dem)
