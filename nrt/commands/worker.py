"""`nrt worker`: the long-lived worker that claims cycle jobs from the catalog and runs them."""

from __future__ import annotations

import logging

log = logging.getLogger("nrt.commands.worker")


def register(sub) -> None:
    parser = sub.add_parser("worker", help="load the model once, then claim and run jobs from the catalog until stopped")
    parser.add_argument("--max-jobs", type=int, metavar="N", help="exit after N jobs (default: run until SIGTERM)")
    parser.add_argument("--drain", action="store_true", help="exit once the queue is empty (e.g. after `nrt backfill`)")
    parser.add_argument("--metrics-port", type=int, metavar="PORT", help="override service.metrics_port (0: any free port)")
    parser.set_defaults(handler=run_worker)


def run_worker(args, cfg) -> int:
    from nrt.store import Catalog
    from nrt.service import load_models, metrics_port, pipeline_handlers
    from nrt.service.metrics import Metrics
    from nrt.service.worker import Worker, hard_exit

    # Not checked here: the worker checks it after READY=1 and waits while the database is down.
    catalog = Catalog(cfg.database_url, cfg.catalog.busy_timeout_s)
    metrics = Metrics()
    metrics.start_http(cfg.service.metrics_host, metrics_port(cfg, args.metrics_port))
    worker = Worker(cfg, catalog, metrics, pipeline_handlers(cfg, catalog), load_model=lambda: load_models(cfg))
    worker.install_signal_handlers()
    done = worker.run(max_jobs=args.max_jobs, drain=args.drain)
    catalog.close()
    log.info("worker %s exits after %d jobs", worker.owner, done)
    if worker.abandoned is not None:
        hard_exit(0)
    return 0
