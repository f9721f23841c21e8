"""`nrt products best|list|latest|prune|open|plot`: the catalog's view of the products."""

from __future__ import annotations

import json
import sys

KINDS = ("ensemble", "summary", "quicklook", "accumulation_1h", "accumulation_3h", "accumulation_6h")


def register(sub) -> None:
    parser = sub.add_parser("products", help="look up products: best available, listings, latest index, retention")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    best = actions.add_parser("best", help="the best-available product for a valid time (smallest lead)")
    best.add_argument("--valid", required=True, metavar="ISO", help="valid time (start of the half hour), e.g. 2024-06-01T12:30Z")
    best.add_argument("--kind", choices=KINDS, default="ensemble")
    best.add_argument("--json", action="store_true", help="print the catalog row as JSON instead of the path")
    best.set_defaults(handler=show_best)

    listing = actions.add_parser("list", help="products by valid time, best first")
    listing.add_argument("--since", metavar="ISO", help="first valid time (default: all)")
    listing.add_argument("--until", metavar="ISO", help="last valid time")
    listing.add_argument("--kind", choices=KINDS)
    listing.add_argument("--all", action="store_true", help="include superseded products")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(handler=list_products)

    latest = actions.add_parser("latest", help="rewrite <product dir>/latest.json from the catalog")
    latest.set_defaults(handler=write_latest)

    prune = actions.add_parser("prune", help="delete products and granules older than the configured retention")
    prune.set_defaults(handler=run_prune)

    view = actions.add_parser("open", help="the best-available product of each valid time in a range, as one NetCDF (never mixing cycles)")
    view.add_argument("--start", required=True, metavar="ISO", help="first valid time")
    view.add_argument("--end", required=True, metavar="ISO", help="last valid time")
    view.add_argument("--kind", default="ensemble", help="product kind (ensemble, summary, accumulation_3h, ...)")
    view.add_argument("--out", required=True, metavar="FILE.nc", help="output NetCDF (time unlimited, cycle_time and lead per time)")
    view.set_defaults(handler=open_products)

    plot = actions.add_parser("plot", help="draw a map of the best-available product of a valid time (borders, alert areas)")
    plot.add_argument("--valid", required=True, metavar="ISO", help="valid time (start of the half hour)")
    plot.add_argument("--kind", choices=("quicklook", "mean", "member", "prob", "spread", "accum"), default="quicklook",
                      help="quicklook: the 4 panels; accum: the 1, 3 and 6 h accumulations ending with this half hour")
    plot.add_argument("--threshold", type=float, help="P(rate > threshold) in mm/h (default products.quicklook_threshold_mmh)")
    plot.add_argument("--member", type=int, default=0, help="member to draw for --kind member")
    plot.add_argument("--out", metavar="PNG", help="output file (default nrt_<kind>_<valid>.png here)")
    plot.set_defaults(handler=plot_product)


def parse_time(text: str | None, option: str):
    """ISO text as tz-aware UTC (None stays None); ConfigError naming the option otherwise."""
    from nrt.errors import ConfigError
    from nrt.timeline import utc

    if text is None:
        return None
    try:
        return utc(text)
    except ValueError:
        raise ConfigError(option, f"not an ISO time: {text!r}") from None


def _row_dict(row) -> dict:
    from dataclasses import asdict

    from nrt.timeline import isoformat

    return {k: isoformat(v) if hasattr(v, "tzinfo") else v for k, v in asdict(row).items()}


def show_best(args, cfg) -> int:
    from nrt.products import best_available
    from nrt.service import open_catalog
    from nrt.timeline import floor_halfhour, isoformat

    valid = floor_halfhour(parse_time(args.valid, "--valid"))
    with open_catalog(cfg) as catalog:
        row = best_available(catalog, valid, args.kind)
    if row is None:
        print(f"nrt: no {args.kind} product for {isoformat(valid)}", file=sys.stderr)
        return 1
    print(json.dumps(_row_dict(row)) if args.json else row.path)
    return 0


def list_products(args, cfg) -> int:
    from nrt.service import open_catalog
    from nrt.timeline import isoformat

    with open_catalog(cfg) as catalog:
        rows = catalog.products(
            since=parse_time(args.since, "--since"), until=parse_time(args.until, "--until"), kind=args.kind, current_only=not args.all
        )
    for row in rows:
        if args.json:
            print(json.dumps(_row_dict(row)))
        else:
            note = "" if row.superseded_by is None else f"  superseded by {row.superseded_by}"
            print(f"{isoformat(row.valid_time)}  {row.kind:<9}  cycle {isoformat(row.cycle_time)}  lead {row.lead}  "
                  f"{row.members:>3} members  {row.size:>10} B  {row.path}{note}")
    return 0


def write_latest(args, cfg) -> int:
    from nrt.products import update_latest
    from nrt.service import open_catalog

    with open_catalog(cfg) as catalog:
        print(update_latest(catalog, cfg.product_dir, cfg.products.latest_hours))
    return 0


def run_prune(args, cfg) -> int:
    from datetime import timedelta

    from nrt.products import ef5_directory, prune
    from nrt.service import open_catalog
    from nrt.sources.retention import prune_granules

    pc = cfg.products
    grace = timedelta(minutes=pc.orphan_grace_minutes)
    with open_catalog(cfg) as catalog:
        print(prune(catalog, cfg.product_dir, timedelta(days=pc.retention_days), ef5_dir=ef5_directory(cfg),
                    grace=grace, latest_hours=pc.latest_hours).line())
        print(prune_granules(catalog, cfg.data_dir, timedelta(days=pc.granule_retention_days), grace=grace).line())
    return 0


def plot_product(args, cfg) -> int:
    from pathlib import Path

    from nrt.errors import ConfigError
    from nrt.products import best_available
    from nrt.products.netcdf import ENSEMBLE, accumulation_kind, grid_of, open_product, read_ensemble
    from nrt.products.quicklook import plot_map, quicklook
    from nrt.products.summary import ACCUMULATION_VAR
    from nrt.service import open_catalog
    from nrt.timeline import floor_halfhour, isoformat

    valid = floor_halfhour(parse_time(args.valid, "--valid"))
    threshold = args.threshold or cfg.products.quicklook_threshold_mmh
    out = Path(args.out or f"nrt_{args.kind}_{valid:%Y%m%dT%H%MZ}.png")
    areas = cfg.alerts.areas
    with open_catalog(cfg) as catalog:
        if args.kind == "accum":
            rows = {h: best_available(catalog, valid, accumulation_kind(h)) for h in cfg.products.accumulation_hours}
            found = {h: row for h, row in rows.items() if row is not None}
            if not found:
                print(f"nrt: no accumulation product for {isoformat(valid)}", file=sys.stderr)
                return 1
            amounts = {h: open_product(row.path, ACCUMULATION_VAR) for h, row in found.items()}
            grid = grid_of(next(iter(amounts.values())))
            title = f"nrt ensemble-mean accumulations ending {isoformat(valid)} + 30 min"
            plot_map("accum", out, accumulations={h: ds[ACCUMULATION_VAR].values[0] for h, ds in amounts.items()}, grid=grid,
                     title=title, areas=areas, basins=cfg.products.basins)
        else:
            row = best_available(catalog, valid, ENSEMBLE)
            if row is None:
                print(f"nrt: no ensemble product for {isoformat(valid)}", file=sys.stderr)
                return 1
            ensemble = read_ensemble(row.path)
            if not 0 <= args.member < ensemble.sizes["member"]:
                raise ConfigError("--member", f"{args.member} is not a member of {row.path} (0 .. {ensemble.sizes['member'] - 1})")
            title = f"nrt {ensemble.sizes['member']}-member ensemble, valid {isoformat(valid)}, cycle {isoformat(row.cycle_time)}, lead {row.lead * 30} min"
            if args.kind == "quicklook":
                quicklook(ensemble, out, threshold=threshold, member=args.member, title=title, areas=areas, basins=cfg.products.basins)
            else:
                plot_map(args.kind, out, ensemble=ensemble, threshold=threshold, member=args.member, title=title, areas=areas, basins=cfg.products.basins)
    print(out)
    return 0


def open_products(args, cfg) -> int:
    from nrt.products.dataset import open_best, write_best
    from nrt.service import open_catalog
    from nrt.timeline import floor_halfhour

    start, end = floor_halfhour(parse_time(args.start, "--start")), floor_halfhour(parse_time(args.end, "--end"))
    with open_catalog(cfg) as catalog:
        ds = open_best(catalog, start, end, args.kind)
    path = write_best(ds, args.out)
    print(f"{path}: {ds.sizes['time']} valid times; missing: {ds.attrs['missing_valid_times']}")
    return 0
