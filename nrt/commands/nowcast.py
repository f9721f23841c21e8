"""`nrt nowcast --inputs IMERG_FILES... --out FILE.nc`: run the nowcast bridge on given granules (analysis, debugging)."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

import numpy as np
import xarray as xr

from nrt import __version__

log = logging.getLogger("nrt.commands.nowcast")


def register(sub) -> None:
    from nrt.nowcast.methods import METHODS, MOTION_METHODS

    parser = sub.add_parser(
        "nowcast",
        help="nowcast IMERG granules forward in half-hour steps with pysteps; write CF netCDF",
        description="Read IMERG half-hourly granules over the configured domain plus its upwind buffer, estimate "
        "the motion from them and write precipitation(member, time, lat, lon) for leads 1..STEPS after the "
        "newest granule to a CF netCDF file (written atomically). Prints one JSON line: method used, "
        "degradation reasons, output path.",
    )
    parser.add_argument("--inputs", nargs="+", required=True, metavar="IMERG_FILE", help="IMERG granules, 3 or more consecutive half-hours")
    parser.add_argument("--out", required=True, metavar="FILE.nc", help="output netCDF path")
    parser.add_argument("--steps", type=int, help="half-hour leads (default: nowcast.steps)")
    parser.add_argument("--members", type=int, help="ensemble members (default: nowcast.members)")
    parser.add_argument("--method", choices=sorted(METHODS), help="default: nowcast.method")
    parser.add_argument("--motion", choices=sorted(MOTION_METHODS), help="optical flow (default: nowcast.motion)")
    parser.add_argument("--seed", type=int, help="random seed (default: nowcast.seed)")
    parser.add_argument("--lead-offset", type=int, default=0, metavar="N", help="the newest input is N half-hours older than the nominal start; skip its first N leads")
    parser.add_argument("--domain", nargs=4, type=float, metavar=("WEST", "SOUTH", "EAST", "NORTH"), help="domain before the buffer (default: the configured domain)")
    parser.add_argument("--no-buffer", action="store_true", help="nowcast on the domain itself, without the upwind buffer")
    parser.set_defaults(handler=run_nowcast)


def run_nowcast(args, cfg) -> int:
    from nrt.errors import ConfigError
    from nrt.grids import Domain
    from nrt.nowcast import nowcast, nowcast_domain
    from nrt.sources.imerg import read_imerg

    settings = cfg.nowcast.model_copy(update={"motion": args.motion} if args.motion else {})
    steps = settings.steps if args.steps is None else args.steps
    members = settings.members if args.members is None else args.members
    if steps < 1 or members < 1 or args.lead_offset < 0:
        raise ConfigError("nrt nowcast", "--steps and --members must be at least 1, --lead-offset not negative")
    domain = Domain(*args.domain) if args.domain else cfg.domain.box()
    area = domain if args.no_buffer else nowcast_domain(domain, settings, steps, args.lead_offset)
    frames = read_imerg(args.inputs, area)
    result = nowcast(
        frames["precipitation"], settings, steps=steps, members=members, seed=args.seed, lead_offset=args.lead_offset, method=args.method
    )
    write_nowcast(args.out, result, frames.attrs.get("files", ""), area)
    print(json.dumps({"out": str(args.out), "method": result.method_used, "degraded": result.degraded, "shape": list(result.precip.shape)}))
    return 0


def write_nowcast(path, result, inputs: str, area) -> None:
    """The nowcast as CF-1.8 netCDF: precipitation(member, time, lat, lon) plus the motion field, atomically."""
    from nrt.io import atomic_path

    precip = result.precip
    motion = result.velocity
    ds = xr.Dataset(
        {
            "precipitation": precip,
            "eastward_motion": motion.sel(component="eastward", drop=True).assign_attrs(long_name="eastward advection velocity of the rain field", units="m s-1"),
            "northward_motion": motion.sel(component="northward", drop=True).assign_attrs(long_name="northward advection velocity of the rain field", units="m s-1"),
        },
        attrs={
            "Conventions": "CF-1.8",
            "title": "IMERG nowcast bridge (pysteps)",
            "source": f"nrt {__version__} nowcast: pysteps {precip.attrs['nowcast_method']} from IMERG half-hourly granules",
            "history": f"{datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%SZ} nrt nowcast",
            "input_files": inputs,
            "nowcast_method": result.method_used,
            "nowcast_degraded": ",".join(result.degraded),
            "geospatial_bounds_wsen": " ".join(f"{v:g}" for v in (area.west, area.south, area.east, area.north)),
        },
    )
    nlat, nlon = precip.sizes["lat"], precip.sizes["lon"]
    encoding = {
        "precipitation": {"zlib": True, "complevel": 4, "chunksizes": (1, 1, nlat, nlon), "_FillValue": np.float32(np.nan)},
        "eastward_motion": {"zlib": True, "_FillValue": None},
        "northward_motion": {"zlib": True, "_FillValue": None},
        "time": {"units": "seconds since 1970-01-01 00:00:00", "calendar": "standard", "dtype": "int64"},
        "forecast_reference_time": {"units": "seconds since 1970-01-01 00:00:00", "calendar": "standard", "dtype": "int64"},
        "lat": {"_FillValue": None},
        "lon": {"_FillValue": None},
    }
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=encoding)
    log.info("wrote %s (%s, %d members x %d leads)", path, result.method_used, precip.sizes["member"], precip.sizes["time"])
