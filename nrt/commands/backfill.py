"""`nrt backfill --start ISO --end ISO`: enqueue past cycles for the workers (reprocessing)."""

from __future__ import annotations

from datetime import timedelta

from nrt.commands import parse_span


def register(sub) -> None:
    parser = sub.add_parser("backfill", help="enqueue the cycles between two times for the workers to (re)process")
    parser.add_argument("--start", required=True, metavar="ISO", help="first cycle time, e.g. 2024-06-01T00:00Z")
    parser.add_argument("--end", required=True, metavar="ISO", help="last cycle time (included)")
    parser.add_argument(
        "--reprocess", action="store_true",
        help="also queue again the cycles already done or failed (e.g. after a checkpoint change)",
    )
    parser.set_defaults(handler=run_backfill)


def run_backfill(args, cfg) -> int:
    from nrt.service import open_catalog
    from nrt.service.scheduler import CycleScheduler, cycle_key
    from nrt.timeline import cycle_times, isoformat

    start, end = parse_span(args.start, args.end)
    cycles = cycle_times(start, end, timedelta(minutes=cfg.timeline.cycle_minutes))
    catalog = open_catalog(cfg)
    scheduler = CycleScheduler(cfg, catalog)
    requeued = 0
    for cycle_time in cycles:
        scheduler.enqueue(cycle_time)
        if args.reprocess:
            requeued += scheduler.queue.requeue(cycle_key(cycle_time))
    span = f"{isoformat(cycles[0])} .. {isoformat(cycles[-1])}" if cycles else "none aligned in the range"
    again = f", {requeued} of them queued again for reprocessing" if args.reprocess else ""
    print(f"enqueued {len(cycles)} cycle jobs ({span}){again}, {cfg.service.catchup_order} first")
    return 0
