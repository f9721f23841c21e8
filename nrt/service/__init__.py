"""The daemon: a scheduler that enqueues cycle jobs, workers that run them, metrics and systemd integration.

`service/` only schedules and watches; the work itself is `nrt.pipeline`. This module wires the two:
the worker's job handlers call the pipeline with the model the worker loaded once at start-up.
"""

from __future__ import annotations

import logging
import os

from nrt.errors import ConfigError
from nrt.timeline import utc

log = logging.getLogger("nrt.service")


def open_catalog(cfg, migrate: bool = False):
    """The configured catalog, migrated to head (`migrate`) or checked to be there already."""
    from nrt.store import Catalog

    return Catalog.from_config(cfg, migrate=migrate)


def metrics_port(cfg, override: int | None = None) -> int:
    """--metrics-port, else $NRT_METRICS_PORT (the scheduler's unit sets the worker's port + 1), else config."""
    if override is not None:
        return override
    env = os.environ.get("NRT_METRICS_PORT", "")
    if not env:
        return cfg.service.metrics_port
    if not env.isdigit() or int(env) > 65535:
        raise ConfigError("NRT_METRICS_PORT", f"not a port number (got {env!r})")
    return int(env)


def load_models(cfg):
    """The configured downscaling method's model (`nrt.downscale.load_models`), on the GPU when there is one.

    The worker calls this once and keeps the result; a diffusion checkpoint that cannot load leaves the CSGD
    fallback in place (unless `model.fallback` is off) instead of stopping the worker.
    """
    from nrt.downscale import load_models as load

    models = load(cfg.model)
    what = cfg.model.checkpoint if models.diffusion is not None else cfg.model.csgd_params
    log.info("%s model %s (sha256 %s) on %s", models.method, what, models.sha256[:12], models.device)
    return models


def pipeline_handlers(cfg, catalog, clock=None, progress=None) -> dict:
    """Job handlers backed by `nrt.pipeline`: a `cycle` job runs `run_cycle` for its payload's cycle time.

    `clock` (a `nrt.timeline.Clock`) gives the pipeline its notion of now and of waiting, so an
    accelerated demo clock also shortens the ingest's waits for late files. `progress(message)` hears each
    stage of a cycle as it starts (the demo's progress bar).
    """
    from nrt import pipeline
    from nrt.sources.http import Client
    from nrt.timeline import Clock

    client = Client.from_config(cfg)
    clock = clock or Clock()

    def run_cycle(job, models):
        cycle_time = utc(job.payload["cycle_time"])
        # Every catalog write of the cycle, and each product file before it is written, checks the lease:
        # a worker that lost it (frozen, partitioned) stops at its next write. Half the lease is left for a write.
        fenced = catalog.fenced(job.id, job.lease_token, margin_s=cfg.service.lease_seconds / 2)
        return pipeline.run_cycle(cycle_time, cfg, fenced, client, models, clock=clock, progress=progress)

    return {"cycle": run_cycle}
