"""`nrt inspect PATH...`: identify a data file and print one JSON line of facts and statistics per file."""

from __future__ import annotations

import json


def register(sub) -> None:
    parser = sub.add_parser(
        "inspect",
        help="identify a data file (IMERG, DPR, GEOS-FP, DEM) and summarise its main field",
        description="Print one JSON line per file with source, version, start, end, shape, valid_fraction, "
        "min, max and mean of the main (precipitation) field as stored, fill excluded.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH")
    parser.set_defaults(handler=run_inspect)


def run_inspect(args, cfg) -> int:
    from nrt.sources import identify

    for path in args.paths:
        print(json.dumps(identify(path)), flush=True)
    return 0
