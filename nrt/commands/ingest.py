"""`nrt ingest --source S --time ISO`: fetch and register whatever of a source should exist by then."""

from __future__ import annotations

import argparse
import json
import sys

from nrt.timeline import isoformat, utc


def _time(text: str):
    try:
        return utc(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO time: {text!r} ({exc})") from None


def register(sub) -> None:
    from nrt.sources import SOURCE_NAMES

    parser = sub.add_parser(
        "ingest",
        help="download, validate and catalog the files of a source for a cycle time",
        description="Work out which files of each source should exist at TIME, download the missing ones "
        "(atomically, validated), and register them in the catalog. Prints one JSON line per source. "
        "Exit 0 when nothing was bad (files not yet published are listed as missing), 1 when a file was bad, "
        "3 when a server failed (5xx, timeout, reset, deadline: listed under errors).",
    )
    parser.add_argument("--source", action="append", choices=SOURCE_NAMES, help="source to ingest (repeatable; default: all)")
    parser.add_argument("--time", type=_time, required=True, help="cycle time, ISO 8601 (UTC when no zone is given)")
    parser.add_argument("--retry-bad", action="store_true",
                        help="first clear the bad marks of the chosen sources, so refused files are downloaded again")
    parser.set_defaults(handler=run_ingest)


def run_ingest(args, cfg) -> int:
    from nrt.store import Catalog
    from nrt.sources import SOURCE_NAMES, ingest, ingest_settings
    from nrt.sources.http import Client

    sources = args.source or list(SOURCE_NAMES)
    settings = ingest_settings(cfg)
    any_bad = any_error = False
    with Catalog.from_config(cfg) as catalog, Client.from_config(cfg) as client:
        for source in dict.fromkeys(sources):
            if args.retry_bad:
                cleared = catalog.clear_bad(source)
                if cleared:
                    print(f"{source}: cleared {cleared} bad mark(s)", file=sys.stderr)
            result = ingest(source, settings, catalog, args.time, client)
            any_bad |= bool(result.bad)
            any_error |= bool(result.errors)
            print(json.dumps({"source": source, "time": isoformat(args.time), **result.as_dict()}), flush=True)
    return 3 if any_error else 1 if any_bad else 0
