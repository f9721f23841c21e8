"""`nrt export ef5|wrf-hydro`: forcings for hydrologic models from the best-available ensembles.

ef5: GeoTIFFs per member (and optionally a runnable control file); wrf-hydro: PRECIP_FORCING files on a geogrid.
"""

from __future__ import annotations

import sys
from pathlib import Path


def register(sub) -> None:
    parser = sub.add_parser("export", help="export products for other models")
    formats = parser.add_subparsers(dest="format", metavar="FORMAT", required=True)
    ef5 = formats.add_parser(
        "ef5", help="EF5 GeoTIFFs (member_NN/prcp.YYYYMMDDHHUU.tif) of the best-available ensemble, gaps filled from older cycles",
        description="Exit status 1 when a half hour or a cell has no data in any cycle (EF5 would read zero rain there); "
                    "the gaps are printed and listed in OUT/GAPS.txt.",
    )
    ef5.add_argument("--valid", required=True, metavar="ISO", help="valid time (start of the half hour)")
    ef5.add_argument("--until", metavar="ISO", help="export every half hour from --valid to this valid time")
    ef5.add_argument("--out", required=True, metavar="DIR", type=Path, help="output directory (member folders go inside)")
    ef5.add_argument("--control", metavar="DIR", type=Path,
                     help="also write DIR/control.txt, a complete EF5 control file running every member, and DIR/pet.tif")
    ef5.add_argument("--dem", default=None, metavar="FILE", help="basin DEM for the control file (default: a placeholder to edit)")
    ef5.add_argument("--ddm", default=None, metavar="FILE", help="basin drainage directions (ESRI coding)")
    ef5.add_argument("--fam", default=None, metavar="FILE", help="basin flow accumulation (counting the cell itself)")
    ef5.add_argument("--outlet", metavar="LON,LAT", help="basin outlet for the control file's gauge, e.g. --outlet=-93.6,41.6 (with = for a negative longitude)")
    ef5.add_argument("--pet-mmh", type=float, default=0.0, help="constant potential evapotranspiration, mm/h (default 0)")
    ef5.add_argument("--allow-gaps", action="store_true", help="write the control file even when half hours are missing")
    ef5.set_defaults(handler=export_ef5_command)

    wrf = formats.add_parser("wrf-hydro", help="WRF-Hydro YYYYMMDDHHMM.PRECIP_FORCING.nc (precip_rate, mm/s) on a geo_em geogrid")
    wrf.add_argument("--geo-em", required=True, metavar="FILE", type=Path, help="WPS geo_em file of the WRF-Hydro domain (Lambert conformal)")
    wrf.add_argument("--valid", required=True, metavar="ISO", help="valid time (start of the half hour)")
    wrf.add_argument("--until", metavar="ISO", help="export every half hour from --valid to this valid time")
    wrf.add_argument("--member", type=int, help="one member instead of the ensemble mean")
    wrf.add_argument("--out", required=True, metavar="DIR", type=Path, help="output directory")
    wrf.set_defaults(handler=export_wrf_hydro_command)


def _outlet(text: str | None) -> tuple[float, float] | None:
    from nrt.errors import ConfigError

    if text is None:
        return None
    try:
        lon, lat = (float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError("--outlet", f"expected LON,LAT in degrees, got {text!r}") from None
    return lon, lat


def export_ef5_command(args, cfg) -> int:
    from nrt.commands.products import parse_time
    from nrt.io import atomic_path
    from nrt.products.ef5 import PLACEHOLDER, control_file, export_range, write_pet
    from nrt.service import open_catalog
    from nrt.timeline import floor_halfhour

    first = floor_halfhour(parse_time(args.valid, "--valid"))
    last = floor_halfhour(parse_time(args.until, "--until")) if args.until else first
    outlet = _outlet(args.outlet)
    with open_catalog(cfg) as catalog:
        result = export_range(catalog, first, last, args.out, stamp=cfg.products.ef5_stamp, nodata=cfg.products.ef5_nodata)
    print(f"wrote {len(result.written)} GeoTIFFs under {args.out}"
          + (f"; filled {sum(result.filled.values())} nodata cells from older cycles" if result.filled else ""))
    if args.control and result.written:
        args.control.mkdir(parents=True, exist_ok=True)
        pet = write_pet(args.control / "pet.tif", result.grid, args.pet_mmh, cfg.products.ef5_nodata)
        text = control_file(
            args.out.resolve(), result.members, first, last, output_dir=(args.control / "output").resolve(), pet_file=pet.resolve(),
            dem=args.dem or f"{PLACEHOLDER}/dem.tif", ddm=args.ddm or f"{PLACEHOLDER}/ddm.tif", fam=args.fam or f"{PLACEHOLDER}/fam.tif",
            outlet=outlet, stamp=cfg.products.ef5_stamp, missing=result.missing, allow_gaps=args.allow_gaps,
        )
        for m in result.members:
            (args.control / "output" / f"member_{m:02d}").mkdir(parents=True, exist_ok=True)
        with atomic_path(args.control / "control.txt") as tmp:
            tmp.write_text(text)
        print(f"wrote {args.control / 'control.txt'}: run `ef5 {args.control / 'control.txt'}`")
    for line in result.gap_lines():
        print(f"nrt: GAP {line}", file=sys.stderr)
    return 1 if result.missing or result.nodata else 0


def export_wrf_hydro_command(args, cfg) -> int:
    from nrt.commands.products import parse_time
    from nrt.errors import ConfigError
    from nrt.products import best_available
    from nrt.products.netcdf import ENSEMBLE, read_ensemble
    from nrt.products.wrf_hydro import export_wrf_hydro, read_geogrid
    from nrt.service import open_catalog
    from nrt.timeline import HALF_HOUR, floor_halfhour, isoformat

    geogrid = read_geogrid(args.geo_em)
    first = floor_halfhour(parse_time(args.valid, "--valid"))
    last = floor_halfhour(parse_time(args.until, "--until")) if args.until else first
    missing, written, outside = [], [], 0
    with open_catalog(cfg) as catalog:
        t = first
        while t <= last:
            row = best_available(catalog, t, ENSEMBLE)
            if row is None:
                missing.append(isoformat(t))
            else:
                ensemble = read_ensemble(row.path)
                if args.member is not None and not 0 <= args.member < ensemble.sizes["member"]:
                    raise ConfigError("--member", f"{args.member} is not a member of {row.path} (0 .. {ensemble.sizes['member'] - 1})")
                paths, outside = export_wrf_hydro(ensemble, geogrid, args.out, member=args.member)
                written += paths
            t += HALF_HOUR
    print(f"wrote {len(written)} PRECIP_FORCING files under {args.out}")
    if outside:
        print(f"nrt: {outside} geogrid cells lie outside the product domain and are NaN; widen [domain]", file=sys.stderr)
    if missing:
        print(f"nrt: no ensemble product for {', '.join(missing)}", file=sys.stderr)
    return 1 if missing or outside else 0
