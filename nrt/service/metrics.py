"""Prometheus metrics of the daemon: one `Metrics` object owns its registry and every metric in it.

Names, types and labels follow the table in docs/architecture.md: base units, counters end in `_total`,
freshness is exported as Unix timestamps (`..._timestamp_seconds`) so alert rules can use `time() - x`.
Each process (scheduler, worker, `nrt run`) makes one `Metrics` and serves it with `start_http`.
"""

from __future__ import annotations

import logging
import math
import shutil
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, disable_created_metrics, start_http_server

from nrt.degradation import Fallback, NowcastReason

log = logging.getLogger("nrt.service.metrics")

# Stage durations run from sub-second (a cached DEM read) to tens of minutes (a CPU diffusion pass).
STAGE_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 900, 1200, 1800)
CYCLE_OUTCOMES = ("ok", "degraded", "failed")
# The reference forecasts `nrt.verify.scores` writes beside the ensemble ("nrt"), as models and as CRPSS baselines.
BASELINES = ("bilinear", "csgd")
JOB_STATES = ("queued", "running")


class ProductLike(Protocol):
    kind: str
    size: int  # bytes on disk


class LastProductLike(Protocol):
    mean_rain_rate: float  # domain mean of the ensemble mean, mm/h
    max_exceedance: Mapping[float, float]  # threshold mm/h -> maximum exceedance probability over the domain


class AlertLike(Protocol):
    area: str
    threshold: float  # mm/h
    probability: float  # the area's exceedance probability
    active: bool


class OverpassLike(Protocol):
    gauge_rows: Sequence[Mapping]  # rows for `record_scores`
    new_overpass: bool  # False when these products' half-hour was scored before


class CycleReportLike(Protocol):
    """What `record_cycle` reads from `pipeline.run_cycle`'s report."""

    timings: Mapping[str, float]  # stage -> seconds, for the stages that completed
    degraded: Sequence[str]  # every degraded-mode flag of the cycle; empty means a clean cycle
    nowcast_degraded: Sequence[NowcastReason]  # the nowcast's fallback reasons (a subset of the cause of `degraded`)
    downscale_fallbacks: Sequence[Fallback]  # why the cycle wrote the CSGD ensemble instead of the configured model's
    products: Sequence[ProductLike]  # the files written this cycle
    sources: Mapping[str, datetime | None]  # source ingested -> start of its newest granule (None: static)
    summary: LastProductLike | None  # statistics of the newest valid time's product
    alerts: Sequence[AlertLike]
    scores: Sequence[OverpassLike]  # DPR overpasses scored this cycle (`nrt.verify.verify_granules`)


def threshold_label(value: float) -> str:
    """One spelling per threshold (10.0 and 10 both give "10"), so label sets never split."""
    return f"{float(value):g}"


def _epoch(t: datetime | float | None) -> float:
    if t is None:
        return time.time()
    return t.timestamp() if isinstance(t, datetime) else float(t)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        # No `*_created` series: they would add families outside the contract table, and alerts never use them.
        disable_created_metrics()
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.stage_last_success = Gauge(
            "nrt_stage_last_success_timestamp_seconds", "Unix time a stage last completed", ["stage"], registry=r
        )
        self.source_last_success = Gauge(
            "nrt_source_last_success_timestamp_seconds", "Unix time a source was last ingested without error", ["source"], registry=r
        )
        self.source_newest_granule = Gauge(
            "nrt_source_newest_granule_timestamp_seconds", "Start time of the newest granule held per source", ["source"], registry=r
        )
        self.cycle_last_success = Gauge(
            "nrt_cycle_last_success_timestamp_seconds", "Unix time a cycle last completed (ok or degraded)", registry=r
        )
        self.stage_duration = Histogram(
            "nrt_stage_duration_seconds", "Wall time per pipeline stage", ["stage"], buckets=STAGE_BUCKETS, registry=r
        )
        self.stage_failures = Counter("nrt_stage_failures_total", "Stage failures by reason", ["stage", "reason"], registry=r)
        self.cycles = Counter("nrt_cycles_total", "Cycles finished, by outcome", ["outcome"], registry=r)
        self.jobs = Gauge("nrt_jobs", "Jobs in the catalog queue by state", ["state"], registry=r)
        self.products_written = Counter("nrt_products_written_total", "Product files written", ["kind"], registry=r)
        self.product_bytes = Counter("nrt_product_bytes_total", "Bytes of product files written", ["kind"], registry=r)
        self.gpu_memory_used = Gauge("nrt_gpu_memory_used_bytes", "GPU memory held by tensors now (0 on CPU)", registry=r)
        self.gpu_memory_peak = Gauge("nrt_gpu_memory_peak_bytes", "Peak GPU memory held by tensors (0 on CPU)", registry=r)
        self.checkpoint = Info("nrt_checkpoint", "Model checkpoint loaded by the worker", registry=r)
        self.nowcast_degraded = Counter(
            "nrt_nowcast_degraded_total", "Nowcasts that fell back to a simpler method", ["reason"], registry=r
        )
        self.downscale_fallback = Counter(
            "nrt_downscale_fallback_total", "Cycles that wrote the CSGD ensemble instead of the configured model's",
            ["reason"], registry=r,
        )
        self.last_mean_rain = Gauge(
            "nrt_last_product_mean_rain_rate_mm_per_hour", "Domain-mean ensemble-mean rain rate of the newest product", registry=r
        )
        self.last_max_exceedance = Gauge(
            "nrt_last_product_max_exceedance_probability",
            "Largest exceedance probability over the domain in the newest product",
            ["threshold"],
            registry=r,
        )
        self.alert = Gauge("nrt_precipitation_alert", "1 while an area's alert is active", ["area", "threshold"], registry=r)
        self.alert_probability = Gauge(
            "nrt_precipitation_alert_probability", "Exceedance probability over an alert area", ["area", "threshold"], registry=r
        )
        self.verification_score = Gauge(
            "nrt_verification_score", "Scores of the last DPR overpass", ["metric", "threshold", "lead", "model"], registry=r
        )
        self.verification_crpss = Gauge(
            "nrt_verification_crpss", "CRPS skill score of the ensemble against a baseline, last DPR overpass",
            ["lead", "baseline"], registry=r,
        )
        self.verification_overpasses = Counter("nrt_verification_overpasses_total", "DPR overpasses scored", registry=r)
        self.disk_free = Gauge("nrt_disk_free_bytes", "Free bytes on the file system of a path", ["path"], registry=r)
        self.catalog_up = Gauge("nrt_catalog_up", "1 while the catalog database answers, 0 during an outage", registry=r)
        self.catalog_up.set(1)
        for outcome in CYCLE_OUTCOMES:  # export zeros from the start, so rate() sees the first increment
            self.cycles.labels(outcome=outcome)
        for state in JOB_STATES:
            self.jobs.labels(state=state)

    # -- stages, sources, cycles -------------------------------------------------------------------------------
    def record_stage(self, stage: str, seconds: float, at: datetime | float | None = None) -> None:
        """A stage that completed in `seconds`, at `at` (default now)."""
        self.stage_duration.labels(stage=stage).observe(seconds)
        self.stage_last_success.labels(stage=stage).set(_epoch(at))

    def record_stage_failure(self, stage: str, reason: str) -> None:
        """`reason` is an exception class name or a short fixed word: label values must stay few."""
        self.stage_failures.labels(stage=stage, reason=reason).inc()

    def record_source(self, source: str, newest_granule: datetime | None = None, at: datetime | float | None = None) -> None:
        """A source ingested without error at `at`; `newest_granule` is the start of the newest file held."""
        self.source_last_success.labels(source=source).set(_epoch(at))
        if newest_granule is not None:
            self.source_newest_granule.labels(source=source).set(newest_granule.timestamp())

    def record_cycle(self, report: CycleReportLike, at: datetime | float | None = None) -> str:
        """Everything a finished cycle tells; returns its outcome ("ok" or "degraded")."""
        for stage, seconds in report.timings.items():
            self.record_stage(stage, seconds, at)
        for source, newest in report.sources.items():
            self.record_source(source, newest, at)
        for reason in report.nowcast_degraded:
            self.nowcast_degraded.labels(reason=reason).inc()
        for reason in report.downscale_fallbacks:
            self.downscale_fallback.labels(reason=reason).inc()
        self.record_products(report.products)
        if report.summary is not None:
            self.record_last_product(report.summary.mean_rain_rate, report.summary.max_exceedance)
        self.record_alerts(report.alerts)
        for overpass in report.scores:
            self.record_scores(overpass.gauge_rows, new_overpass=overpass.new_overpass)
        outcome = "degraded" if report.degraded else "ok"
        self.cycles.labels(outcome=outcome).inc()
        self.cycle_last_success.set(_epoch(at))
        return outcome

    def record_cycle_failure(self, stage: str, reason: str) -> None:
        self.record_stage_failure(stage, reason)
        self.cycles.labels(outcome="failed").inc()

    # -- products, alerts, verification ------------------------------------------------------------------------
    def record_products(self, products: Iterable[ProductLike]) -> None:
        for product in products:
            self.products_written.labels(kind=product.kind).inc()
            self.product_bytes.labels(kind=product.kind).inc(product.size)

    def record_last_product(self, mean_rain_rate: float, max_exceedance: Mapping[float, float]) -> None:
        self.last_mean_rain.set(mean_rain_rate)
        for threshold, probability in max_exceedance.items():
            self.last_max_exceedance.labels(threshold=threshold_label(threshold)).set(probability)

    def record_alerts(self, alerts: Iterable[AlertLike]) -> None:
        for alert in alerts:
            labels = {"area": alert.area, "threshold": threshold_label(alert.threshold)}
            self.alert.labels(**labels).set(1 if alert.active else 0)
            self.alert_probability.labels(**labels).set(alert.probability)

    def record_scores(self, rows: Iterable[Mapping], new_overpass: bool = True) -> None:
        """One overpass's scores: rows of {metric, threshold (None if none), lead, value, model}.

        The CRPS skill score 1 - CRPS(nrt) / CRPS(baseline) is set per lead for each baseline model in the rows
        (`BASELINES`). `new_overpass=False` updates the gauges without counting again (later leads of an
        overpass already counted).
        """
        crps: dict[tuple[str, str], float] = {}
        for row in rows:
            threshold = "" if row.get("threshold") is None else threshold_label(row["threshold"])
            self.verification_score.labels(
                metric=row["metric"], threshold=threshold, lead=str(row["lead"]), model=row["model"]
            ).set(row["value"])
            if row["metric"] == "crps":
                crps[(str(row["lead"]), row["model"])] = row["value"]
        for (lead, model), value in crps.items():
            if model in BASELINES and (lead, "nrt") in crps:
                skill = 1.0 - crps[(lead, "nrt")] / value if value else math.nan
                self.verification_crpss.labels(lead=lead, baseline=model).set(skill)
        if new_overpass:
            self.verification_overpasses.inc()

    # -- process and host state --------------------------------------------------------------------------------
    def refresh_jobs(self, counts: Mapping[str, Mapping[str, int]]) -> None:
        """Set the job gauges from `Catalog.counts()`; a state absent from the table counts zero."""
        jobs = counts.get("jobs", {})
        for state in JOB_STATES:
            self.jobs.labels(state=state).set(jobs.get(state, 0))

    def record_gpu_memory(self) -> None:
        """Allocator figures from torch.cuda; stays 0 on a CPU-only host or before torch is imported."""
        torch = sys.modules.get("torch")  # importing torch just to learn there is no GPU costs seconds
        if torch is None or not torch.cuda.is_available():
            return
        self.gpu_memory_used.set(torch.cuda.memory_allocated())
        self.gpu_memory_peak.set(torch.cuda.max_memory_allocated())

    def set_checkpoint(self, name: str, sha256: str) -> None:
        self.checkpoint.info({"name": name, "sha256": sha256})

    def record_disk_free(self, paths: Iterable[Path]) -> None:
        for path in paths:
            try:
                self.disk_free.labels(path=str(path)).set(shutil.disk_usage(path).free)
            except FileNotFoundError:
                log.warning("disk usage of %s: no such directory", path)

    # -- exposition --------------------------------------------------------------------------------------------
    def start_http(self, host: str = "127.0.0.1", port: int = 0):
        """Serve /metrics on host:port in a daemon thread; returns (server, bound port). Port 0 picks a free one."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        bound = server.server_address[1]
        log.info("metrics at http://%s:%d/metrics", host, bound)
        return server, bound
