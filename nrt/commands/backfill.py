"""`nrt backfill --start ISO --end ISO`: enqueue past cycles for the workers (reprocessing)."""

from __future__ import annotations

from datetime import timedelta

from nrt.errors import ConfigError


def register(sub) -> None:
    parser = sub.add_parser("backfill", help="enqueue the cycles between two times for the workers to (re)process")
    parser.add_argument("--start", required=True, metavar="ISO", help="first cycle time, e.g. 2024-06-01T00:00Z")
    parser.add_argument("--end", required=True, metavar="ISO", help="last cycle time (included)")
    parser.set_defaults(handler=run_backfill)


def run_backfill(args, cfg) -> int:
    from nrt.service import open_catalog
    from nrt.service.scheduler import CycleScheduler
    from nrt.timeline import cycle_times, isoformat, utc

    try:
        start, end = utc(args.start), utc(args.end)
    except ValueError as exc:
        raise ConfigError("--start/--end", str(exc)) from None
    if end < start:
        raise ConfigError("--end", f"{isoformat(end)} is before --start {isoformat(start)}")
    cycles = cycle_times(start, end, timedelta(minutes=cfg.timeline.cycle_minutes))
    scheduler = CycleScheduler(cfg, open_catalog(cfg))
    for cycle_time in cycles:
        scheduler.enqueue(cycle_time)
    span = f"{isoformat(cycles[0])} .. {isoformat(cycles[-1])}" if cycles else "none aligned in the range"
    print(f"enqueued {len(cycles)} cycle jobs ({span}), {cfg.service.catchup_order} first")
    return 0
