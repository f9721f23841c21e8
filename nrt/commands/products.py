"""`nrt products best|list|latest|prune`: the catalog's view of the products."""

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
    from nrt.products import prune_from_config
    from nrt.service import open_catalog

    with open_catalog(cfg) as catalog:
        print(prune_from_config(cfg, catalog).line())
    return 0
