"""`nrt run`: scheduler and worker in one process, the single-machine default."""

from __future__ import annotations


def register(sub) -> None:
    parser = sub.add_parser("run", help="scheduler (background thread) and worker (main loop) in one process")
    parser.add_argument("--metrics-port", type=int, metavar="PORT", help="override service.metrics_port (0: any free port)")
    parser.set_defaults(handler=run_service)


def run_service(args, cfg) -> int:
    from nrt.service import load_models, metrics_port, open_catalog, pipeline_handlers
    from nrt.service.metrics import Metrics
    from nrt.service.scheduler import CycleScheduler
    from nrt.service.worker import Worker, hard_exit

    catalog = open_catalog(cfg, migrate=True)  # one machine, one catalog: create it on first start
    metrics = Metrics()
    metrics.start_http(cfg.service.metrics_host, metrics_port(cfg, args.metrics_port))
    worker = Worker(cfg, catalog, metrics, pipeline_handlers(cfg, catalog), load_model=lambda: load_models(cfg))
    worker.install_signal_handlers()
    scheduler = CycleScheduler(cfg, catalog, metrics).background()
    try:
        worker.run()
    finally:
        scheduler.shutdown(wait=False)
        catalog.close()
    if worker.abandoned is not None:
        hard_exit(0)
    return 0
