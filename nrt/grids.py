"""Regular latitude/longitude grids: the 0.05° target grid, IMERG's global 0.1° grid and index windows.

Every grid here stores latitude ascending (south first), as the DESIGN contract requires. pyresample's
AreaDefinition runs rows north to south, so `area_definition()` describes the flipped grid and callers
flip with `[::-1]` at that boundary (see `to_area_rows` / `from_area_rows`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nrt.errors import ConfigError

# Round coordinates to this many decimals so float noise never shifts a cell (0.05° grids need 3).
_DECIMALS = 6
KM_PER_DEGREE = 111.195  # great-circle km per degree on the 6371 km sphere


@dataclass(frozen=True)
class Domain:
    """A bounding box in degrees: west < east, south < north, inside ±180/±90."""

    west: float
    south: float
    east: float
    north: float

    def __post_init__(self):
        if not (-180 <= self.west < self.east <= 180):
            raise ConfigError("domain", f"need -180 <= west < east <= 180, got west={self.west} east={self.east}")
        if not (-90 <= self.south < self.north <= 90):
            raise ConfigError("domain", f"need -90 <= south < north <= 90, got south={self.south} north={self.north}")

    def buffered(self, degrees: float) -> Domain:
        """The box grown by `degrees` on every side, clipped to the globe."""
        return Domain(
            max(-180.0, self.west - degrees),
            max(-90.0, self.south - degrees),
            min(180.0, self.east + degrees),
            min(90.0, self.north + degrees),
        )

    @property
    def center(self) -> tuple[float, float]:
        """(lon, lat) of the box centre."""
        return (self.west + self.east) / 2, (self.south + self.north) / 2


@dataclass(frozen=True)
class LatLonGrid:
    """A regular grid given by its resolution and first (south-west) cell centre."""

    res: float
    lat0: float
    lon0: float
    nlat: int
    nlon: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.nlat, self.nlon

    @property
    def lats(self) -> np.ndarray:
        return np.round(self.lat0 + self.res * np.arange(self.nlat), _DECIMALS)

    @property
    def lons(self) -> np.ndarray:
        return np.round(self.lon0 + self.res * np.arange(self.nlon), _DECIMALS)

    @property
    def lat_bounds(self) -> np.ndarray:
        return np.round(np.stack([self.lats - self.res / 2, self.lats + self.res / 2], axis=1), _DECIMALS)

    @property
    def lon_bounds(self) -> np.ndarray:
        return np.round(np.stack([self.lons - self.res / 2, self.lons + self.res / 2], axis=1), _DECIMALS)

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """(west, south, east, north) of the outer cell edges."""
        half = self.res / 2
        return (
            round(self.lon0 - half, _DECIMALS),
            round(self.lat0 - half, _DECIMALS),
            round(self.lon0 + self.res * (self.nlon - 1) + half, _DECIMALS),
            round(self.lat0 + self.res * (self.nlat - 1) + half, _DECIMALS),
        )

    @property
    def domain(self) -> Domain:
        return Domain(*self.extent)

    def coords(self) -> dict:
        """xarray coordinates with CF attributes."""
        return {
            "lat": ("lat", self.lats.astype(np.float64), {"standard_name": "latitude", "units": "degrees_north", "axis": "Y"}),
            "lon": ("lon", self.lons.astype(np.float64), {"standard_name": "longitude", "units": "degrees_east", "axis": "X"}),
        }

    def lonlats(self) -> tuple[np.ndarray, np.ndarray]:
        """2-D (lon, lat) arrays of cell centres, latitude ascending along axis 0."""
        return np.meshgrid(self.lons, self.lats)

    def km_per_pixel(self) -> float:
        """Mean of the zonal and meridional cell size at the grid's central latitude (km)."""
        lat_c = math.radians(self.lat0 + self.res * (self.nlat - 1) / 2)
        return KM_PER_DEGREE * self.res * (1 + math.cos(lat_c)) / 2

    def area_definition(self):
        """pyresample AreaDefinition (EPSG:4326) of this grid; its rows run north to south."""
        from pyresample.geometry import AreaDefinition

        return AreaDefinition(
            "nrt_grid", f"{self.res} degree lat/lon grid", "longlat", "EPSG:4326", self.nlon, self.nlat, self.extent
        )

    def swath_definition(self):
        """pyresample SwathDefinition of the cell centres in this grid's own (lat-ascending) order."""
        from pyresample.geometry import SwathDefinition

        lon2d, lat2d = self.lonlats()
        return SwathDefinition(lons=lon2d, lats=lat2d)

    def index_of(self, lat: float, lon: float) -> tuple[int, int]:
        """(row, col) of the cell containing a point (edges belong to the northern/eastern cell)."""
        return (
            int(math.floor(round((lat - self.lat0) / self.res + 0.5, 9))),
            int(math.floor(round((lon - self.lon0) / self.res + 0.5, 9))),
        )

    def contains(self, other: LatLonGrid) -> bool:
        w, s, e, n = self.extent
        ow, os_, oe, on = other.extent
        return w <= ow and s <= os_ and e >= oe and n >= on


def cell_km(grid: LatLonGrid) -> tuple[float, float]:
    """(north-south, east-west) size in km of a cell of `grid` at its central latitude."""
    lat_c = math.radians(float(np.mean(grid.lats)))
    return KM_PER_DEGREE * grid.res, KM_PER_DEGREE * grid.res * math.cos(lat_c)


def to_area_rows(array: np.ndarray) -> np.ndarray:
    """Flip a lat-ascending array (…, lat, lon) into pyresample's north-to-south row order."""
    return array[..., ::-1, :]


from_area_rows = to_area_rows  # the flip is its own inverse


def _snap_out(lo: float, hi: float, step: float) -> tuple[float, float]:
    return (
        math.floor(round(lo / step, 9)) * step,
        math.ceil(round(hi / step, 9)) * step,
    )


def grid_for(domain: Domain, res: float, snap: float | None = None) -> LatLonGrid:
    """Grid of resolution `res` covering `domain`, with edges snapped outward to multiples of `snap`."""
    snap = snap or res
    west, east = _snap_out(domain.west, domain.east, snap)
    south, north = _snap_out(domain.south, domain.north, snap)
    west, east = max(west, -180.0), min(east, 180.0)
    south, north = max(south, -90.0), min(north, 90.0)
    nlon = int(round((east - west) / res))
    nlat = int(round((north - south) / res))
    return LatLonGrid(res, round(south + res / 2, _DECIMALS), round(west + res / 2, _DECIMALS), nlat, nlon)


IMERG_RES = 0.1
TARGET_RES = 0.05

#: IMERG's global grid: 1800 latitudes × 3600 longitudes, centres at ±0.05 + k·0.1.
IMERG_GRID = LatLonGrid(IMERG_RES, -89.95, -179.95, 1800, 3600)


def target_grid(domain: Domain, res: float = TARGET_RES) -> LatLonGrid:
    """The 0.05° target grid over `domain`; edges snap to 0.1° so each IMERG cell holds exactly 2×2 cells."""
    return grid_for(domain, res, snap=IMERG_RES)


def imerg_grid(domain: Domain) -> LatLonGrid:
    """The IMERG 0.1° sub-grid covering `domain`."""
    return grid_for(domain, IMERG_RES)


@dataclass(frozen=True)
class ImergWindow:
    """Index window of a domain inside IMERG's global arrays, which are stored (time, lon, lat)."""

    lat_slice: slice
    lon_slice: slice
    grid: LatLonGrid


def imerg_window(domain: Domain) -> ImergWindow:
    grid = imerg_grid(domain)
    row, col = IMERG_GRID.index_of(grid.lat0, grid.lon0)
    return ImergWindow(slice(row, row + grid.nlat), slice(col, col + grid.nlon), grid)


def upsample_factor(coarse: LatLonGrid, fine: LatLonGrid) -> int:
    factor = coarse.res / fine.res
    if abs(factor - round(factor)) > 1e-6:
        raise ValueError(f"grid resolutions {coarse.res} and {fine.res} do not nest")
    return int(round(factor))
