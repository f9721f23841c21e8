"""`nrt scheduler`: enqueue a cycle job every `timeline.cycle_minutes`, catching up after downtime."""

from __future__ import annotations


def register(sub) -> None:
    parser = sub.add_parser("scheduler", help="enqueue cycle jobs on the UTC cycle schedule (APScheduler, blocking)")
    parser.add_argument("--metrics-port", type=int, metavar="PORT", help="override the metrics port (default $NRT_METRICS_PORT or config)")
    parser.set_defaults(handler=run_scheduler)


def run_scheduler(args, cfg) -> int:
    from nrt.service import metrics_port, open_catalog
    from nrt.service.metrics import Metrics
    from nrt.service.scheduler import CycleScheduler

    catalog = open_catalog(cfg)
    metrics = Metrics()
    metrics.start_http(cfg.service.metrics_host, metrics_port(cfg, args.metrics_port))
    CycleScheduler(cfg, catalog, metrics).run_forever()
    return 0
