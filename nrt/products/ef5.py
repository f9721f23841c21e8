"""EF5 forcing export: one single-band Float32 GeoTIFF per member and half hour.

EF5 (github.com/HyDROSLab/EF5, `TifGrid.cpp`) reads TIF forcings with libtiff + libgeotiff: it needs
one Float32 sample per pixel, reads rows with `TIFFReadScanline` (so strips, not tiles), takes the
upper-left corner from ModelTiepoint and the cell size from ModelPixelScale, and the missing value from
the GDAL_NODATA tag. Rows are therefore written north-up (our arrays are latitude-ascending, so they are
flipped here), with RasterPixelIsArea and EPSG:4326 geokeys.

File names carry only EF5's time tokens (`DatedName.cpp`: YYYY MM DD HH UU SS):
`member_07/prcp.YYYYMMDDHHUU.tif`, so one control-file block with `LOC=.../member_07` and
`NAME=prcp.YYYYMMDDHHUU.tif` reads member 7. EF5 steps from the begin time and, for the step ending at
t, reads the file stamped t; a half hour [V, V+30 min) is therefore stamped V+30 min by default
(`stamp="end"`); `stamp="start"` names it V instead.

Gaps. EF5 reads a missing file, and any nodata cell, as zero rain (`Simulator.cpp`: "Missing precip
file ... Assuming zeros"; `PrecipReader.cpp` zeroes nodata). So `export_range` fills a valid time's
nodata cells from the next-best (older) cycles' ensembles of the same valid time, and returns every gap
it could not fill (whole half hours without any product, cells still without data), which the command
reports on stderr, writes to `GAPS.txt` beside the forcings, and turns into exit status 1; and
`control_file` refuses a period with a missing half hour unless told to accept it.

`control_file` writes a complete EF5 control file for the ensemble: one `[PrecipForcing]` and one
`[Task]` per member (EF5's `[EnsTask]` only drives calibration), all listed in `[Execute]`, with CREST
water balance and kinematic-wave routing. Only the basin grids (DEM, DDM, FAM) and the outlet are the
user's; everything else is filled in (see docs/products.md).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import tifffile
import xarray as xr

from nrt.errors import NrtError
from nrt.grids import LatLonGrid
from nrt.io import atomic_path
from nrt.products.netcdf import ENSEMBLE, grid_of, read_ensemble, times_of
from nrt.timeline import HALF_HOUR, isoformat, utc

log = logging.getLogger("nrt.products")

NODATA = -9999.0
PREFIX = "prcp"

# GeoTIFF tag codes and GeoKey values (GeoTIFF 1.1 spec, OGC 19-008r4).
TAG_MODEL_PIXEL_SCALE = 33550
TAG_MODEL_TIEPOINT = 33922
TAG_GEO_KEY_DIRECTORY = 34735
TAG_GDAL_NODATA = 42113
GT_MODEL_TYPE, GT_RASTER_TYPE, GEOGRAPHIC_TYPE, GEOG_ANGULAR_UNITS = 1024, 1025, 2048, 2054
MODEL_TYPE_GEOGRAPHIC, RASTER_PIXEL_IS_AREA, GCS_WGS84, ANGULAR_DEGREE = 2, 1, 4326, 9102
ROWS_PER_STRIP = 16


def ef5_name(valid_time: dt.datetime, stamp: Literal["end", "start"] = "end") -> str:
    """`prcp.YYYYMMDDHHUU.tif` for the half hour starting at `valid_time`."""
    t = utc(valid_time) + (HALF_HOUR if stamp == "end" else dt.timedelta(0))
    return f"{PREFIX}.{t:%Y%m%d%H%M}.tif"


def member_dir(out_dir: Path, member: int) -> Path:
    return Path(out_dir) / f"member_{int(member):02d}"


def geotiff_tags(west: float, north: float, res: float, nodata: float) -> list[tuple]:
    """tifffile `extratags` for a north-up WGS 84 lon/lat raster whose upper-left corner is (west, north)."""
    geokeys = (
        1, 1, 0, 4,  # directory version, key revision 1.0, 4 keys
        GT_MODEL_TYPE, 0, 1, MODEL_TYPE_GEOGRAPHIC,
        GT_RASTER_TYPE, 0, 1, RASTER_PIXEL_IS_AREA,
        GEOGRAPHIC_TYPE, 0, 1, GCS_WGS84,
        GEOG_ANGULAR_UNITS, 0, 1, ANGULAR_DEGREE,
    )
    return [
        (TAG_MODEL_PIXEL_SCALE, "d", 3, (res, res, 0.0), True),
        (TAG_MODEL_TIEPOINT, "d", 6, (0.0, 0.0, 0.0, west, north, 0.0), True),
        (TAG_GEO_KEY_DIRECTORY, "H", len(geokeys), geokeys, True),
        (TAG_GDAL_NODATA, "s", 0, f"{nodata:g}", True),
    ]


def write_geotiff(path: Path, rows_north_up: np.ndarray, tags: list[tuple]) -> Path:
    """One Float32 band in deflated strips, written to a temp name and renamed."""
    with atomic_path(path) as tmp:
        tifffile.imwrite(
            tmp,
            np.ascontiguousarray(rows_north_up, dtype=np.float32),
            photometric="minisblack",
            rowsperstrip=ROWS_PER_STRIP,
            compression="zlib",
            extratags=tags,
            metadata=None,
            software="nrt",
        )
    return Path(path)


def export_ef5(
    ensemble: str | Path | xr.DataArray,
    out_dir: str | Path,
    *,
    stamp: Literal["end", "start"] = "end",
    nodata: float = NODATA,
) -> list[Path]:
    """Write every member and time of an ensemble (file path or (member, time, lat, lon) DataArray) for EF5.

    NaN (no data) becomes `nodata`, which the GDAL_NODATA tag declares. Existing files of the same time are
    replaced atomically, so a directory exported from the best-available product stays readable while it
    is updated. Returns the written paths.
    """
    precip = read_ensemble(ensemble) if isinstance(ensemble, (str, Path)) else ensemble
    if precip.dims != ("member", "time", "lat", "lon"):
        raise ValueError(f"ensemble must be (member, time, lat, lon), got {precip.dims}")
    grid = grid_of(precip)
    west, _, _, north = grid.extent
    tags = geotiff_tags(west, north, grid.res, nodata)
    members = precip["member"].values if "member" in precip.coords else np.arange(precip.sizes["member"])
    values = np.asarray(precip.values, dtype=np.float32)
    written = []
    for i, member in enumerate(members):
        for j, t in enumerate(times_of(precip)):
            rows = np.where(np.isfinite(values[i, j]), values[i, j], np.float32(nodata))[::-1]  # north-up
            written.append(write_geotiff(member_dir(out_dir, member) / ef5_name(t, stamp), rows, tags))
    return written


def control_block(out_dir: str | Path, member: int) -> str:
    """The EF5 `[PrecipForcing ...]` block that reads one member of an export."""
    return "\n".join(
        [
            f"[PrecipForcing NRT_M{int(member):02d}]",
            "TYPE=TIF",
            "UNIT=mm/h",
            "FREQ=30u",
            f"LOC={member_dir(Path(out_dir), member)}",
            f"NAME={PREFIX}.YYYYMMDDHHUU.tif",
        ]
    )


@dataclass
class Ef5Export:
    """What `export_range` wrote, what it filled and what is still missing (EF5 would read that as zero)."""

    written: list[Path] = field(default_factory=list)
    members: list[int] = field(default_factory=list)
    filled: dict[dt.datetime, int] = field(default_factory=dict)  # valid time -> cells filled from older cycles
    missing: list[dt.datetime] = field(default_factory=list)  # half hours without any ensemble product
    nodata: dict[dt.datetime, int] = field(default_factory=dict)  # valid time -> member cells still without data
    grid: LatLonGrid | None = None  # the forcing grid (None when nothing was written)

    def gap_lines(self) -> list[str]:
        lines = [f"{isoformat(t)}: no ensemble product from any cycle; EF5 would read this half hour as zero rain" for t in self.missing]
        lines += [f"{isoformat(t)}: {n} member cells have no data in any cycle; EF5 reads them as zero rain" for t, n in sorted(self.nodata.items())]
        return lines


def filled_ensemble(paths: list[str | Path]) -> tuple[xr.DataArray, int]:
    """The first (best) ensemble with its NaN cells taken from the later (older-cycle) ones, and the count filled.

    A candidate on another grid or with other members is skipped: it cannot stand in cell for cell.
    """
    best = read_ensemble(paths[0])
    values = best.values.copy()
    filled = 0
    for path in paths[1:]:
        gaps = ~np.isfinite(values)
        if not gaps.any():
            break
        other = read_ensemble(path)
        if other.shape != best.shape or not np.allclose(other["lat"], best["lat"]) or not np.allclose(other["lon"], best["lon"]):
            log.warning("EF5 gap filling skips %s: another grid or member count", path)
            continue
        take = gaps & np.isfinite(other.values)
        values[take] = other.values[take]
        filled += int(take.sum())
    return best.copy(data=values), filled


def export_range(
    catalog, first: dt.datetime, last: dt.datetime, out_dir: str | Path, *, stamp: Literal["end", "start"] = "end", nodata: float = NODATA,
    gaps_file: bool = True,
) -> Ef5Export:
    """Export the best-available ensemble of every half hour from `first` to `last` (valid times), gaps filled.

    Each valid time uses its best product (smallest lead, then newest cycle); cells without data there are
    taken from the older cycles' products of the same valid time. What stays missing is in the result,
    logged, and (with `gaps_file`) listed in `<out_dir>/GAPS.txt`, which a complete export removes.
    """
    result = Ef5Export()
    t = utc(first)
    while t <= utc(last):
        rows = [row for row in catalog.products(since=t, until=t, kind=ENSEMBLE) if Path(row.path).is_file()]
        if not rows:
            result.missing.append(t)
            log.error("EF5 export: no ensemble product for %s; EF5 would read it as zero rain", isoformat(t))
        else:
            ensemble, filled = filled_ensemble([row.path for row in rows])
            if filled:
                result.filled[t] = filled
                log.warning("EF5 export %s: %d nodata cells filled from older cycles", isoformat(t), filled)
            remaining = int((~np.isfinite(ensemble.values)).sum())
            if remaining:
                result.nodata[t] = remaining
                log.error("EF5 export %s: %d member cells without data in any cycle (EF5 reads zero)", isoformat(t), remaining)
            result.written += export_ef5(ensemble, out_dir, stamp=stamp, nodata=nodata)
            result.members = sorted(set(result.members) | {int(m) for m in ensemble["member"].values})
            result.grid = grid_of(ensemble)
        t += HALF_HOUR
    if gaps_file:
        listing = Path(out_dir) / "GAPS.txt"
        if result.missing or result.nodata:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            with atomic_path(listing) as tmp:
                tmp.write_text("".join(line + "\n" for line in result.gap_lines()))
        elif listing.exists():
            listing.unlink()
    return result


# Uniform CREST and kinematic-wave parameters so the file runs as written. The kinematic-wave values are
# the ones EF5's manual shows (its "rundu" example). CREST's (WM mm, B, IM %, KE, FC mm/h, IWU % of WM)
# describe a shallow, slowly draining soil that starts wet, the flash-flood worst case. Calibrated,
# gridded (`*_grid=`) sets for the user's basin replace both.
CREST_PARAMS = {"wm": 50.0, "b": 0.5, "im": 5.0, "ke": 1.0, "fc": 2.0, "iwu": 80.0}
KW_PARAMS = {"under": 1.673110, "leaki": 0.043105, "th": 6.658569, "isu": 0.0, "alpha": 2.991570, "beta": 0.932080, "alpha0": 4.603945}
PLACEHOLDER = "/path/to/your/basin"


def control_file(
    export_dir: str | Path,
    members: list[int],
    first_valid: dt.datetime,
    last_valid: dt.datetime,
    *,
    output_dir: str | Path,
    pet_file: str | Path,
    dem: str | Path = f"{PLACEHOLDER}/dem.tif",
    ddm: str | Path = f"{PLACEHOLDER}/ddm.tif",
    fam: str | Path = f"{PLACEHOLDER}/fam.tif",
    outlet: tuple[float, float] | None = None,
    stamp: Literal["end", "start"] = "end",
    missing: list[dt.datetime] | None = None,
    allow_gaps: bool = False,
) -> str:
    """A complete EF5 control file that runs every member over the valid times `first_valid` … `last_valid`.

    `dem`, `ddm`, `fam` are the user's basin grids (float32 GeoTIFF or ESRI ASCII, geographic lon/lat,
    ESRI flow directions); `outlet` is the basin outlet (lon, lat), a placeholder when None. `pet_file` is
    a PET GeoTIFF in mm/h (`write_pet`). With `missing` half hours EF5 would read zero rain there, so
    this raises NrtError unless `allow_gaps`.
    """
    if missing and not allow_gaps:
        raise NrtError(f"EF5 control file: {len(missing)} half hour(s) have no product ({', '.join(isoformat(t) for t in missing)}); "
                       "EF5 would read them as zero rain (pass allow_gaps to accept that)")
    shift = HALF_HOUR if stamp == "end" else dt.timedelta(0)
    begin = utc(first_valid) + shift - HALF_HOUR  # EF5 reads, for the step ending at t, the file stamped t
    end = utc(last_valid) + shift
    lon, lat = outlet if outlet is not None else ("<OUTLET_LON>", "<OUTLET_LAT>")
    crest = "\n".join(f"{k}={v:g}" for k, v in CREST_PARAMS.items())
    kw = "\n".join(f"{k}={v:g}" for k, v in KW_PARAMS.items())
    blocks = [
        "# EF5 control file written by nrt: CREST + kinematic wave, one task per ensemble member.\n"
        "# Yours to set: the basin grids in [Basic] and the outlet in [Gauge]; the parameter sets are uniform defaults.",
        f"[Basic]\nDEM={dem}\nDDM={ddm}\nFAM={fam}\nPROJ=geographic\nESRIDDM=true\nSELFFAM=true",
        *(control_block(export_dir, m) for m in members),
        f"[PETForcing NRT_PET]\nTYPE=TIF\nUNIT=mm/h\nFREQ=30u\nLOC={Path(pet_file).parent}\nNAME={Path(pet_file).name}",
        f"[Gauge outlet]\nLON={lon}\nLAT={lat}\nOUTPUTTS=TRUE",
        "[Basin nrt_basin]\nGAUGE=outlet",
        f"[CrestParamSet nrt_crest]\ngauge=outlet\n{crest}",
        f"[KWParamSet nrt_kw]\ngauge=outlet\n{kw}",
    ]
    for m in members:
        blocks.append("\n".join([
            f"[Task nrt_m{int(m):02d}]", "STYLE=SIMU", "MODEL=CREST", "ROUTING=KW", "BASIN=nrt_basin",
            f"PRECIP=NRT_M{int(m):02d}", "PET=NRT_PET", f"OUTPUT={Path(output_dir) / f'member_{int(m):02d}'}",
            "PARAM_SET=nrt_crest", "ROUTING_PARAM_SET=nrt_kw", "TIMESTEP=30u",
            f"TIME_BEGIN={begin:%Y%m%d%H%M}", f"TIME_END={end:%Y%m%d%H%M}",
        ]))
    blocks.append("[Execute]\n" + "\n".join(f"TASK=nrt_m{int(m):02d}" for m in members))
    return "\n\n".join(blocks) + "\n"


def write_pet(path: str | Path, grid: LatLonGrid, mm_per_hour: float = 0.0, nodata: float = NODATA) -> Path:
    """A constant PET GeoTIFF (mm/h) on the forcing `grid`; 0 neglects evaporation, small over a few hours of rain."""
    west, _, _, north = grid.extent
    return write_geotiff(Path(path), np.full(grid.shape, mm_per_hour, np.float32), geotiff_tags(west, north, grid.res, nodata))
