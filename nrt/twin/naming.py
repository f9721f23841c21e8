"""Where each file lives in the mirror tree. Names and folders come from the ingest modules themselves, so the
twin cannot drift from what `nrt.sources` expects of the real servers.

`DIR/pps/...` mirrors the PPS near-real-time server (IMERG Early and DPR), `DIR/gesdisc/data/GPM_L3/...` the
GES DISC archive, `DIR/nccs/datashare/gmao/geos-fp/...` the NCCS portal, `DIR/dem/...` the DEM and
`DIR/truth/...` the twin's own truth (on no real server).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import PurePosixPath

from nrt.sources import dpr, geosfp, imerg
from nrt.timeline import utc

PPS = PurePosixPath("pps")
DPR_FOLDER = PPS / dpr.PPS_FOLDER
GESDISC_L3 = PurePosixPath("gesdisc/data/GPM_L3")
NCCS = PurePosixPath("nccs/datashare/gmao/geos-fp")
DEM_FILE = PurePosixPath("dem/nrt_twin_dem.nc")
TRUTH = PurePosixPath("truth")
MANIFEST = "twin.json"

GEOSFP_COLLECTIONS = (geosfp.SLV, geosfp.FLX)


def imerg_pps_path(start: datetime, version: str) -> PurePosixPath:
    """`pps/imerg/early/YYYYMM/3B-HHR-E….RT-H5`."""
    return PPS / imerg.pps_folder(start) / imerg.filename(start, version, "E", "pps")


def imerg_gesdisc_path(start: datetime, version: str) -> PurePosixPath:
    """`gesdisc/data/GPM_L3/GPM_3IMERGHHE.07/YYYY/DDD/3B-HHR-E….HDF5`."""
    return GESDISC_L3 / imerg.gesdisc_folder(start, version) / imerg.filename(start, version, "E", "gesdisc")


def dpr_pps_path(start: datetime, end: datetime, version: str) -> PurePosixPath:
    """`pps/radar/DprL2/2A.GPM.DPR.V920211125.….RT-H5`."""
    return DPR_FOLDER / dpr.nrt_filename(start, end, version)


def geosfp_forecast_path(collection: str, init: datetime, valid: datetime) -> PurePosixPath:
    """`nccs/datashare/gmao/geos-fp/forecast/Y%Y/M%m/D%d/H%H/GEOS.fp.fcst.….nc4` (folders of the initialisation)."""
    return NCCS / geosfp.forecast_folder(init) / geosfp.forecast_filename(collection, init, valid)


def truth_path(day: datetime) -> PurePosixPath:
    return TRUTH / f"nrt_twin_truth_{utc(day):%Y%m%d}.nc"
