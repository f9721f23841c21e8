"""`nrt verify --start ISO --end ISO --out DIR`: the DPR verification report (Markdown + PNG plots)."""

from __future__ import annotations

import logging
from datetime import timedelta

from nrt.commands import parse_span

log = logging.getLogger("nrt.verify")


def register(sub) -> None:
    parser = sub.add_parser("verify", help="report the scores against GPM DPR of products valid in a span (Markdown + PNG)")
    parser.add_argument("--start", required=True, metavar="ISO", help="first valid time, e.g. 2024-06-01T00:00Z")
    parser.add_argument("--end", required=True, metavar="ISO", help="last valid time (included)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for report.md and the figures")
    parser.add_argument(
        "--score", action="store_true",
        help="first score the span's products against the DPR granules held in the catalog (already scored ones are skipped)",
    )
    parser.add_argument(
        "--force", action="store_true",
        help="with --score, score again the products scored before (for instance to add the CSGD baseline to older scores)",
    )
    parser.set_defaults(handler=run_verify)


def run_verify(args, cfg) -> int:
    from nrt.service import open_catalog
    from nrt.timeline import isoformat
    from nrt.verify import verify_granules, verify_settings
    from nrt.verify.online import GRANULE_REACH
    from nrt.verify.report import write_report

    start, end = parse_span(args.start, args.end)
    catalog = open_catalog(cfg)
    try:
        if args.score:
            granules = catalog.granules(source="dpr", start=start - GRANULE_REACH, end=end + timedelta(minutes=30), state="downloaded")
            scored = verify_granules(verify_settings(cfg), catalog, [g.path for g in granules if g.path and g.end_time > start],
                                     force=args.force)
            print(f"scored {sum(len(s.product_ids) for s in scored)} product(s) in {len(scored)} half-hour(s) with DPR")
        report = write_report(catalog, start, end, args.out, verify_settings(cfg))
    finally:
        catalog.close()
    if not report.products:
        print(f"no DPR scores for valid times {isoformat(start)} .. {isoformat(end)}; wrote {report.markdown}")
        return 1
    print(f"wrote {report.markdown} and {len(report.figures)} figure(s): {report.overpasses} overpass half-hour(s), {report.products} product(s)")
    return 0
