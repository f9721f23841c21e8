"""`nrt export ef5`: GeoTIFF forcings for EF5 from the best-available ensembles."""

from __future__ import annotations

import sys
from pathlib import Path


def register(sub) -> None:
    parser = sub.add_parser("export", help="export products for other models")
    formats = parser.add_subparsers(dest="format", metavar="FORMAT", required=True)
    ef5 = formats.add_parser("ef5", help="EF5 GeoTIFFs (member_NN/prcp.YYYYMMDDHHUU.tif) of the best-available ensemble")
    ef5.add_argument("--valid", required=True, metavar="ISO", help="valid time (start of the half hour)")
    ef5.add_argument("--until", metavar="ISO", help="export every half hour from --valid to this valid time")
    ef5.add_argument("--out", required=True, metavar="DIR", type=Path, help="output directory (member folders go inside)")
    ef5.set_defaults(handler=export_ef5_command)


def export_ef5_command(args, cfg) -> int:
    from nrt.commands.products import parse_time
    from nrt.products import export_best_ef5
    from nrt.service import open_catalog
    from nrt.timeline import HALF_HOUR, floor_halfhour, isoformat

    first = floor_halfhour(parse_time(args.valid, "--valid"))
    last = floor_halfhour(parse_time(args.until, "--until")) if args.until else first
    missing, written = [], 0
    with open_catalog(cfg) as catalog:
        t = first
        while t <= last:
            paths = export_best_ef5(
                catalog, t, args.out, stamp=cfg.products.ef5_stamp, nodata=cfg.products.ef5_nodata
            )
            if paths:
                written += len(paths)
            else:
                missing.append(isoformat(t))
            t += HALF_HOUR
    print(f"wrote {written} GeoTIFFs under {args.out}")
    if missing:
        print(f"nrt: no ensemble product for {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0
