"""The network's input channels on the 0.05° target grid, built the same way for training and inference.

Channels, in order: the coarse IMERG/nowcast rate upsampled bilinearly to 0.05° (`precip`), IMERG's
`randomError` likewise (`precip_random_error`, when the model uses it), the GEOS-FP variables (`geosfp_<NAME>`),
DEM mean and standard deviation, sin/cos of latitude and longitude (old checkpoints only: absolute position ties
a model to its training domain), and, for models trained with optional inputs (`ChannelSet.masks`), one
availability channel per optional group (`has_random_error`, `has_geosfp`, `has_dem`: 1 given, 0 absent).
Values stay in physical units here; the model applies the precipitation transform to the two precipitation
channels and z-scores every channel.
The lead time (0 = IMERG itself, 1..8 = nowcast half-hours) enters through the network's embedding instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import xarray as xr
from torch.nn import functional as F

from nrt.errors import DataError
from nrt.grids import LatLonGrid

PRECIP_CHANNELS = ("precip", "precip_random_error")
COARSE_FACTOR = 2  # 0.1° IMERG cells hold exactly 2×2 target cells (nrt.grids.target_grid snaps to 0.1°)


@dataclass
class Conditioning:
    """Inputs for one valid time. `precip` is (member, lat, lon) on the 0.1° grid whose cells tile `grid`."""

    precip: np.ndarray
    grid: LatLonGrid
    lead: int = 0
    random_error: np.ndarray | None = None  # (lat, lon) at 0.1°, mm/h
    geosfp: xr.Dataset | None = None  # variables (lat, lon) on `grid`
    dem: xr.Dataset | None = None  # elevation, elevation_std (lat, lon) on `grid`


@dataclass(frozen=True)
class ChannelSet:
    """Which optional inputs a model was trained with; fixes the channel order."""

    geosfp_variables: tuple[str, ...] = ()
    random_error: bool = False
    dem: bool = False
    position: bool = True
    masks: bool = False  # one availability channel per optional group: the group may be absent (issue 15)

    def groups(self) -> dict[str, list[str]]:
        """Optional input group -> its channel names (precipitation is never optional)."""
        out = {}
        if self.random_error:
            out["random_error"] = ["precip_random_error"]
        if self.geosfp_variables:
            out["geosfp"] = [f"geosfp_{v}" for v in self.geosfp_variables]
        if self.dem:
            out["dem"] = ["dem_mean", "dem_std"]
        return out

    def required(self) -> list[str]:
        """Channels a run must supply: precipitation, and every optional group of a model without masks."""
        if self.masks:
            return ["precip"]
        return [n for n in self.names() if n not in ("sin_lat", "cos_lat", "sin_lon", "cos_lon")]

    def names(self) -> list[str]:
        names = ["precip"]
        if self.random_error:
            names.append("precip_random_error")
        names += [f"geosfp_{v}" for v in self.geosfp_variables]
        if self.dem:
            names += ["dem_mean", "dem_std"]
        if self.position:
            names += ["sin_lat", "cos_lat", "sin_lon", "cos_lon"]
        if self.masks:
            names += [f"has_{group}" for group in self.groups()]
        return names

    def to_dict(self) -> dict:
        data = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: dict) -> ChannelSet:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def describe(self) -> dict:
        """For the checkpoint JSON: the channels the model can use and those it requires."""
        return {"usable": self.names(), "required": self.required()}


def upsample(coarse: np.ndarray, factor: int = COARSE_FACTOR) -> np.ndarray:
    """Bilinear, cell-centred upsampling of (…, lat, lon); edges clamp. NaN spreads to the cells it touches.

    torch's align_corners=False places fine centre i at coarse coordinate (i + 0.5)/factor − 0.5, which is the
    geometry of nested cell-centred grids.
    """
    coarse = np.asarray(coarse, dtype=np.float32)
    lead_shape = coarse.shape[:-2]
    x = torch.from_numpy(np.ascontiguousarray(coarse.reshape(-1, 1, *coarse.shape[-2:])))
    fine = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    return fine.numpy().reshape(*lead_shape, *fine.shape[-2:])


def position_channels(grid: LatLonGrid) -> np.ndarray:
    lon2d, lat2d = grid.lonlats()
    lat, lon = np.radians(lat2d), np.radians(lon2d)
    return np.stack([np.sin(lat), np.cos(lat), np.sin(lon), np.cos(lon)]).astype(np.float32)


def _on_grid(field_: xr.DataArray | np.ndarray, grid: LatLonGrid, where: str) -> np.ndarray:
    values = np.asarray(field_, dtype=np.float32)
    values = values.reshape(values.shape[-2:]) if values.ndim > 2 and np.prod(values.shape[:-2]) == 1 else values
    if values.shape != grid.shape:
        raise DataError(where, f"field of shape {values.shape} is not on the {grid.shape[0]}x{grid.shape[1]} target grid")
    return values


def given_groups(cond: Conditioning) -> set[str]:
    """The optional input groups `cond` carries."""
    given = set()
    if cond.random_error is not None:
        given.add("random_error")
    if cond.geosfp is not None:
        given.add("geosfp")
    if cond.dem is not None:
        given.add("dem")
    return given


def missing_required(cond: Conditioning, channels: ChannelSet) -> list[str]:
    """Channels `channels` requires that `cond` does not supply."""
    required = set(channels.required())
    missing = [n for group, names in channels.groups().items() if group not in given_groups(cond) for n in names]
    if cond.geosfp is not None:
        missing += [f"geosfp_{v}" for v in channels.geosfp_variables if v not in cond.geosfp]
    return [n for n in dict.fromkeys(missing) if n in required]


def raw_channels(cond: Conditioning, channels: ChannelSet) -> np.ndarray:
    """(member, C, lat, lon) float32 in physical units, NaN where an optional input is absent.

    An absent optional group is NaN (z-scoring turns it into the training mean) and, for models trained with
    masks, its availability channel is 0. A channel the model requires (`ChannelSet.required`) but `cond`
    lacks is one DataError naming it.
    """
    lacking = missing_required(cond, channels)
    if lacking:
        raise DataError("conditioning", f"the model requires {', '.join(lacking)} but the inputs lack it "
                        "(enable the source in the config, or use a checkpoint trained with availability masks)")
    precip = np.asarray(cond.precip, dtype=np.float32)
    if precip.ndim == 2:
        precip = precip[None]
    expected = (cond.grid.nlat // COARSE_FACTOR, cond.grid.nlon // COARSE_FACTOR)
    if precip.ndim != 3 or precip.shape[1:] != expected:
        raise DataError("conditioning", f"coarse precipitation of shape {precip.shape} does not tile the target grid {cond.grid.shape} at 2x")
    members = precip.shape[0]
    shared = []
    names = channels.names()
    missing = np.full(cond.grid.shape, np.nan, dtype=np.float32)
    if channels.random_error:
        if cond.random_error is None:
            shared.append(missing)
        else:
            err = np.asarray(cond.random_error, dtype=np.float32)
            if err.size != expected[0] * expected[1]:
                raise DataError("conditioning", f"random error of shape {err.shape} is not on the {expected} coarse grid")
            shared.append(upsample(err.reshape(expected)))
    for var in channels.geosfp_variables:
        has = cond.geosfp is not None and var in cond.geosfp
        shared.append(_on_grid(cond.geosfp[var], cond.grid, f"GEOS-FP {var}") if has else missing)
    if channels.dem:
        for var in ("elevation", "elevation_std"):
            has = cond.dem is not None and var in cond.dem
            shared.append(_on_grid(cond.dem[var], cond.grid, f"DEM {var}") if has else missing)
    if channels.position:
        shared.extend(position_channels(cond.grid))
    if channels.masks:
        given = given_groups(cond)
        shared.extend(np.full(cond.grid.shape, float(group in given), dtype=np.float32) for group in channels.groups())
    out = np.empty((members, len(names), *cond.grid.shape), dtype=np.float32)
    out[:, 0] = upsample(precip)
    if shared:
        out[:, 1:] = np.stack(shared)[None]
    return out
