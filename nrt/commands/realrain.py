"""`nrt realrain list|inspect`: the real-rain event catalogue (config/realrain.toml) and each event's statistics."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from nrt.errors import ConfigError

log = logging.getLogger("nrt.realrain")


def register(sub) -> None:
    parser = sub.add_parser("realrain", help="list the real-rain events (radar truth for training) or inspect them at 0.05°")
    parser.add_argument("--catalogue", metavar="TOML", help="event catalogue (default: config/realrain.toml)")
    parser.add_argument("--radar-dir", metavar="DIR", help="radar folder (default: $NRT_SHARED_DATA/radar or ../shared/data/radar)")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="events, sources, spans and which are held out (reads no data)")
    listing.set_defaults(handler=run_list)
    inspect = actions.add_parser("inspect", help="read events and print frames, wet fraction, mean and p99 rate at 0.05°")
    inspect.add_argument("events", nargs="*", metavar="EVENT", help="event names (default: all)")
    inspect.add_argument("--markdown", action="store_true", help="print a Markdown table")
    inspect.set_defaults(handler=run_inspect)


def _catalogue(args):
    from nrt.realrain.events import default_radar_dir, load_catalogue

    catalogue = load_catalogue(args.catalogue)
    return catalogue, Path(args.radar_dir) if args.radar_dir else default_radar_dir()


def run_list(args, cfg) -> int:
    catalogue, radar_dir = _catalogue(args)
    print(f"{len(catalogue.events)} events in {catalogue.path} (files under {radar_dir})")
    print(f"{'event':32} {'source':11} {'start (UTC)':17} {'end':17} {'files':>5}  held out")
    for e in catalogue.events.values():
        files = len({p for pattern in e.files for p in radar_dir.glob(pattern)})
        print(f"{e.name:32} {e.source:11} {e.start:%Y-%m-%d %H:%M} {e.end:%Y-%m-%d %H:%M} {files:5d}  "
              f"{'yes' if catalogue.is_held_out(e.name) else ''}")
    return 0


def run_inspect(args, cfg) -> int:
    from nrt.realrain.events import event_frames, frame_stats

    catalogue, radar_dir = _catalogue(args)
    names = args.events or list(catalogue.events)
    unknown = [n for n in names if n not in catalogue.events]
    if unknown:
        raise ConfigError(str(catalogue.path), f"no event named {', '.join(unknown)}; `nrt realrain list` shows them")
    columns = ("event", "source", "held out", "frames", "min", "valid", "wet (>=0.1)", "mean mm/h", "p99 mm/h")
    rows = []
    for name in names:
        event = catalogue.events[name]
        log.info("reading %s", name)
        frames = event_frames(event, radar_dir, progress=(lambda m: print(m, file=sys.stderr)) if sys.stderr.isatty() else None)
        s = frame_stats(frames)
        rows.append((name, event.source, "yes" if catalogue.is_held_out(name) else "", str(s["frames"]), f"{s['minutes']:g}",
                     f"{s['valid_fraction']:.2f}", f"{s['wet_fraction']:.3f}", f"{s['mean_mm_h']:.3f}", f"{s['p99_mm_h']:.2f}"))
        if not args.markdown:
            print("  ".join(rows[-1]), flush=True)
    if args.markdown:
        print("| " + " | ".join(columns) + " |")
        print("|" + "---|" * len(columns))
        for row in rows:
            print("| " + " | ".join(row) + " |")
    return 0
