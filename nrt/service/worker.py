"""The long-lived worker: load the model once, then claim catalog jobs and run them, forever.

One loop in the main thread does all the bookkeeping, so that a stuck loop stops the systemd watchdog:
it claims a job, runs its handler in a helper thread, and while that thread works it renews the lease
(`heartbeat_seconds`), pings the watchdog and watches for SIGTERM. On SIGTERM the running job gets until
`service.shutdown_timeout_s` to finish; otherwise it is released for another worker and the process exits.
A kill -9 is safe too: products are written through `nrt.io.atomic_path`, so nothing half-written becomes
visible, and the lease expires so the next claimer retries the job.

A database outage is waited out (`nrt.service.outage`): the worker starts, stays ready and keeps a finished
job's outcome in memory until the catalog answers again, instead of exiting and tripping systemd's start limit.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from nrt.config import check_service
from nrt.errors import CatalogError, CatalogUnavailable, LeaseLost
from nrt.service.metrics import Metrics
from nrt.service.outage import CatalogOutage
from nrt.service.queue import JobQueue
from nrt.service.systemd import Notifier

log = logging.getLogger("nrt.service.worker")

# A handler runs one job: it gets the claimed job row and the model loaded at start-up, and returns a report.
Handler = Callable[[Any, Any], Any]
# The longest the main loop waits between checks: small enough for a prompt SIGTERM response and
# (shortened further when WatchdogSec is tiny) for the watchdog.
TICK_S = 0.5
# Part of `shutdown_timeout_s` kept back to release the job and exit after the wait for the job ends:
# a fifth of it, and at least a second (interpreter shutdown alone takes a fraction of one).
SHUTDOWN_MARGIN, SHUTDOWN_MARGIN_MIN_S = 0.2, 1.0


def worker_id() -> str:
    """host:pid:random, unique across hosts and restarts, readable in `nrt catalog status`."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def one_line(exc: BaseException, limit: int = 500) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:limit]


class JobThread(threading.Thread):
    """Runs one handler call and keeps its result or exception for the main loop."""

    def __init__(self, handler: Handler, job, model):
        super().__init__(name=f"job-{job.id}", daemon=True)  # daemon: a released job must not hold up exit
        self._call = lambda: handler(job, model)
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self._call()
        except BaseException as exc:  # reported to the catalog by the main loop, never lost in a thread
            self.error = exc


def hard_exit(code: int = 0) -> NoReturn:
    """Exit now, skipping interpreter teardown.

    Used after a job was released at shutdown: its thread may still be inside torch, where teardown can
    crash or stall, and teardown alone takes around a second on a busy host, which the stop bound cannot
    spare. What that thread was writing stays under a hidden temporary name, as after a kill -9.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class Worker:
    """Claim-run-complete loop over the catalog's job queue.

    `handlers` maps a job kind to `handler(job, model) -> report`; only those kinds are claimed.
    `recorders` maps a kind to a function given the report for metrics (default: cycle reports go to
    `Metrics.record_cycle`). `load_model()` runs once before READY=1; its result is every handler's `model`
    and must carry `.sha256` (a `Downscaler`).
    """

    def __init__(
        self,
        cfg,
        catalog,
        metrics: Metrics,
        handlers: Mapping[str, Handler],
        load_model: Callable[[], Any] | None = None,
        recorders: Mapping[str, Callable[[Any], Any]] | None = None,
        notifier: Notifier | None = None,
        owner: str | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        if not handlers:
            raise ValueError("a worker needs at least one job handler")
        check_service(cfg.service, getattr(cfg, "source_file", None) or "<config>")
        self.cfg, self.catalog, self.metrics = cfg, catalog, metrics
        self.queue = JobQueue(catalog)
        self.service = cfg.service
        self.handlers = dict(handlers)
        self.load_model = load_model
        self.recorders = {"cycle": metrics.record_cycle, **(recorders or {})}
        self.notifier = notifier or Notifier()
        self.owner = owner or worker_id()
        self.model: Any = None
        self.jobs_done = 0
        self.abandoned: JobThread | None = None  # a released job's thread, still running at shutdown
        self._monotonic = monotonic
        self._stop = threading.Event()
        self._stop_deadline: float | None = None
        interval = self.notifier.watchdog_interval
        self._tick = TICK_S if interval is None else min(TICK_S, interval / 2)
        self.outage = CatalogOutage(metrics, wait=self._wait_alive, monotonic=monotonic)

    # -- control -----------------------------------------------------------------------------------------------
    def request_stop(self, *_signal_args) -> None:
        """Ask the loop to finish (from a signal handler or another thread); the current job gets the shutdown bound."""
        if not self._stop.is_set():
            timeout = self.service.shutdown_timeout_s
            self._stop_deadline = self._monotonic() + max(0.0, timeout - max(SHUTDOWN_MARGIN_MIN_S, timeout * SHUTDOWN_MARGIN))
            log.info("stop requested; finishing within %.0f s", self.service.shutdown_timeout_s)
            self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    # -- main loop ---------------------------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Load the model once (it stays resident), publish its identity, then tell systemd we are ready."""
        if self.load_model is not None:
            started = self._monotonic()
            self.model = self.load_model()
            self.metrics.set_checkpoint(self.cfg.model.checkpoint, self.model.sha256)
            self.metrics.record_gpu_memory()
            log.info("model %s loaded in %.1f s", self.cfg.model.checkpoint, self._monotonic() - started)
        self.notifier.ready(f"worker {self.owner} waiting for jobs")

    def wait_for_catalog(self) -> None:
        """Wait (alive and ready) while the database is unreachable; a wrong schema or URL still raises at once."""
        self.outage.call("start-up", self._check_catalog, retry_on=CatalogUnavailable)

    def _check_catalog(self) -> None:
        try:
            self.catalog.check()
        except CatalogUnavailable:
            self.notifier.status(f"worker {self.owner} waiting for the catalog")
            raise

    def run(self, max_jobs: int | None = None, drain: bool = False) -> int:
        """Serve jobs until stopped, `max_jobs` are finished, or (`drain`) the queue is empty; returns jobs run."""
        self.warm_up()
        kinds = sorted(self.handlers)
        try:
            self.wait_for_catalog()
            self._refresh_gauges()  # also closes the runs a previous incarnation left running
            while not self.stopping and (max_jobs is None or self.jobs_done < max_jobs):
                self.notifier.watchdog()
                # A database restart must not cost the resident model: wait it out.
                job = self.outage.call("claim", self.queue.claim, self.owner, kinds=kinds, lease_s=self.service.lease_seconds)
                if job is None:
                    self._refresh_gauges()
                    if drain:
                        break
                    self._idle(self.service.worker_poll_s)
                    continue
                self.run_job(job)
                self.jobs_done += 1
        except CatalogError:
            if not self.stopping:
                raise
            log.warning("stopping while the catalog is unreachable")
        finally:
            self.notifier.stopping(f"worker {self.owner} stopping after {self.jobs_done} jobs")
        return self.jobs_done

    def _idle(self, seconds: float) -> None:
        """Wait for work without starving the watchdog."""
        end = self._monotonic() + seconds
        while not self.stopping and (left := end - self._monotonic()) > 0:
            self._stop.wait(min(left, self._tick))
            self.notifier.watchdog()

    def _wait_alive(self, seconds: float) -> bool:
        """The outage's wait: idle (pinging the watchdog); False once stopping."""
        self._idle(seconds)
        return not self.stopping

    def run_job(self, job) -> str:
        """Run one claimed job to its end; returns "completed", "failed", "released" or "lost"."""
        handler = self.handlers[job.kind]
        log.info("job %s %s (attempt %s) claimed", job.id, job.key or job.kind, job.attempts)
        self.notifier.status(f"running {job.key or job.kind}")
        started = self._monotonic()
        thread = JobThread(handler, job, self.model)
        thread.start()
        next_heartbeat = started + self.service.heartbeat_seconds
        lease_held = True
        while thread.is_alive():
            thread.join(self._tick)
            self.notifier.watchdog()
            now = self._monotonic()
            if lease_held and now >= next_heartbeat:
                next_heartbeat = now + self.service.heartbeat_seconds
                try:
                    lease_held = self.queue.heartbeat(job.id, self.owner, self.service.lease_seconds)
                except CatalogError as exc:  # the lease outlives several heartbeats; try again at the next one
                    self.outage.failed("heartbeat", exc)
                else:
                    self.outage.succeeded()
                if not lease_held:
                    log.warning("job %s: lease lost to another worker; its result will be discarded", job.id)
            if thread.is_alive() and self._stop_deadline is not None and now >= self._stop_deadline:
                if lease_held:
                    try:
                        self.queue.release(job.id, self.owner)
                    except CatalogError as exc:  # its lease expires instead
                        log.warning("job %s: cannot release it: %s", job.id, exc)
                log.warning("job %s released unfinished at shutdown", job.id)
                self.abandoned = thread
                return "released"
        seconds = self._monotonic() - started
        if not lease_held:
            return "lost"
        outcome = self._finish(job, thread, seconds)
        self._refresh_gauges()
        return outcome

    def _finish(self, job, thread: JobThread, seconds: float) -> str:
        if thread.error is None:
            if not self._record(job, "complete", self.queue.complete, job.id, self.owner):
                log.warning("job %s finished after its lease passed to another worker", job.id)
                return "lost"
            recorder = self.recorders.get(job.kind)
            if recorder is not None:
                try:
                    recorder(thread.result)
                except Exception:  # a metrics bug must not stop the daemon; the log shows it
                    log.exception("job %s: recording metrics failed", job.id)
            log.info("job %s done in %.1f s", job.id, seconds)
            return "completed"
        error = thread.error
        if isinstance(error, LeaseLost):  # fenced: the new owner records this job, not us
            log.warning("job %s stopped: %s", job.id, one_line(error))
            return "lost"
        stage = getattr(error, "stage", job.kind)  # pipeline errors name the stage that failed
        reason = type(error).__name__
        retry = job.attempts < job.max_attempts  # the catalog requeues it on the same rule
        delay = self.cfg.service.retry_delay_s * 2 ** (job.attempts - 1)
        self._record(job, "fail", self.queue.fail, job.id, self.owner, f"{stage}: {reason}: {one_line(error)}",
                     retry_delay_s=delay)
        if job.kind == "cycle":
            self.metrics.record_cycle_failure(stage, reason)
        else:
            self.metrics.record_stage_failure(stage, reason)
        log.error(
            "job %s failed in %s after %.1f s (attempt %s of %s%s): %s",
            job.id, stage, seconds, job.attempts, job.max_attempts, f", will retry in {delay:g} s" if retry else "",
            one_line(error), exc_info=error,
        )
        return "failed"

    def _record(self, job, what: str, call, *args, **kwargs) -> bool:
        """A job's outcome, held in memory and retried through an outage; False when it cannot be recorded."""
        try:
            return self.outage.call(f"{what} job {job.id}", call, *args, **kwargs)
        except CatalogError:  # stopping with the catalog still away: the lease expires and the job runs again
            log.warning("job %s: outcome not recorded (catalog unreachable at shutdown); it will run again", job.id)
            return False

    def _refresh_gauges(self) -> None:
        """Job gauges, and closing the runs that dead or fenced-off workers left `running`."""
        try:
            closed = self.catalog.close_stale_runs()
            counts = self.catalog.counts()
        except CatalogError as exc:
            self.outage.failed("job counts", exc)
        else:
            self.outage.succeeded()
            if closed:
                log.warning("closed %d run(s) left running by a worker whose lease ended, as abandoned", closed)
            self.metrics.refresh_jobs(counts)
        self.metrics.record_gpu_memory()
        self.metrics.record_disk_free([p for p in (self.cfg.workdir, self.cfg.product_dir) if p.exists()])
