"""Riding out a catalog outage: retry a catalog call with capped backoff until it succeeds or we stop.

The worker and the scheduler route every catalog call through one `CatalogOutage`. While the database is
away (restarting, failing over, disk full) they wait instead of exiting, so systemd's start limit never
turns a short outage into a dead service. The state is exported as `nrt_catalog_up` and logged once per
change (down, then up again with the outage's length), not once per attempt.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from nrt.errors import CatalogError

log = logging.getLogger("nrt.service.outage")

T = TypeVar("T")
FIRST_WAIT_S, MAX_WAIT_S = 1.0, 60.0


class CatalogOutage:
    """Tracks whether the catalog answers, and retries calls through an outage.

    `wait(seconds)` sleeps while keeping the caller alive (watchdog pings) and returns False once the caller
    is stopping; `call()` then gives up and re-raises the last error.
    """

    def __init__(
        self,
        metrics=None,
        wait: Callable[[float], bool] | None = None,
        first_wait_s: float = FIRST_WAIT_S,
        max_wait_s: float = MAX_WAIT_S,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self.metrics = metrics
        self._wait = wait or (lambda seconds: time.sleep(seconds) or True)
        self.first_wait_s, self.max_wait_s = first_wait_s, max_wait_s
        self._monotonic = monotonic
        self.down_since: float | None = None
        self._set_gauge(1)

    @property
    def up(self) -> bool:
        return self.down_since is None

    def _set_gauge(self, value: int) -> None:
        if self.metrics is not None:
            self.metrics.catalog_up.set(value)

    def failed(self, what: str, exc: CatalogError) -> None:
        """Note a failed call; logs only the change from up to down."""
        if self.down_since is None:
            self.down_since = self._monotonic()
            self._set_gauge(0)
            log.error("catalog unreachable (%s): %s; retrying with backoff up to %.0f s", what, exc, self.max_wait_s)

    def succeeded(self) -> None:
        """Note a successful call; logs only the change from down to up."""
        if self.down_since is not None:
            log.warning("catalog reachable again after %.0f s", self._monotonic() - self.down_since)
            self.down_since = None
            self._set_gauge(1)

    def call(self, what: str, fn: Callable[..., T], *args, retry_on: type[CatalogError] = CatalogError, **kwargs) -> T:
        """`fn(*args, **kwargs)`, retried while it raises `retry_on`; re-raises when the caller stops waiting."""
        delay = self.first_wait_s
        while True:
            try:
                result = fn(*args, **kwargs)
            except retry_on as exc:
                self.failed(what, exc)
                if not self._wait(delay):
                    raise
                delay = min(2 * delay, self.max_wait_s)
                continue
            self.succeeded()
            return result
