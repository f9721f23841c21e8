"""`nrt cycle --time ISO`: run one cycle now, in this process, and print what it made."""

from __future__ import annotations

import json
import signal


def register(sub) -> None:
    parser = sub.add_parser("cycle", help="run one cycle (ingest, nowcast, downscale, products) for a cycle time, now")
    parser.add_argument("--time", required=True, metavar="ISO", help="cycle time T, UTC (aligned down to the half-hour)")
    parser.add_argument("--json", action="store_true", help="print the cycle report as one JSON line")
    parser.set_defaults(handler=run_one_cycle)


def _interrupted(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def run_one_cycle(args, cfg) -> int:
    from nrt import pipeline
    from nrt.service import load_models, open_catalog
    from nrt.sources.http import Client
    from nrt.timeline import floor_halfhour, isoformat, utc

    try:
        cycle_time = floor_halfhour(utc(args.time))
    except ValueError as exc:
        from nrt.errors import ConfigError

        raise ConfigError("--time", f"not an ISO 8601 time ({exc})") from None
    catalog = open_catalog(cfg, migrate=True)
    signal.signal(signal.SIGTERM, _interrupted)  # unwind like Ctrl-C, so the run is closed as abandoned
    with Client.from_config(cfg) as client:
        report = pipeline.run_cycle(cycle_time, cfg, catalog, client, load_models(cfg))
    summary = {
        "cycle_time": isoformat(report.cycle_time),
        "imerg_start": isoformat(report.imerg_start) if report.imerg_start else None,
        "nowcast_method": report.nowcast_method,
        "degraded": report.degraded,
        "products": [str(p.path) for p in report.products],
        "timings_s": {k: round(v, 2) for k, v in report.timings.items()},
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"cycle {summary['cycle_time']}: {len(summary['products'])} product files, nowcast {report.nowcast_method}, "
              f"degraded: {', '.join(report.degraded) or 'no'}")
        for path in summary["products"]:
            print(f"  {path}")
    return 0
