"""`nrt scheduler`: enqueue a cycle job every `timeline.cycle_minutes`, catching up after downtime."""

from __future__ import annotations

import logging

log = logging.getLogger("nrt.commands.scheduler")


def register(sub) -> None:
    parser = sub.add_parser("scheduler", help="enqueue cycle jobs on the UTC cycle schedule (APScheduler, blocking)")
    parser.add_argument("--metrics-port", type=int, metavar="PORT", help="override the metrics port (default $NRT_METRICS_PORT or config)")
    parser.set_defaults(handler=run_scheduler)


def run_scheduler(args, cfg) -> int:
    from nrt.store import Catalog
    from nrt.errors import CatalogUnavailable
    from nrt.service import metrics_port
    from nrt.service.metrics import Metrics
    from nrt.service.scheduler import CycleScheduler

    catalog = Catalog(cfg.database_url, cfg.catalog.busy_timeout_s)
    try:
        catalog.check()  # a wrong schema exits at once; an unreachable database is waited out by the ticks
    except CatalogUnavailable as exc:
        log.error("catalog unreachable at start-up, ticking until it answers: %s", exc)
    metrics = Metrics()
    metrics.start_http(cfg.service.metrics_host, metrics_port(cfg, args.metrics_port))
    CycleScheduler(cfg, catalog, metrics).run_forever()
    return 0
