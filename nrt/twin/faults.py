"""A fault-injecting HTTP proxy in front of the twin mirror, for soak runs: the real servers' bad days, seeded.

Each GET draws, from a generator seeded by (seed, path, how many times that path was asked), whether it
meets a fault: a 5xx status, a stall (no answer until the client's read timeout passes), a connection
reset, an HTML error page with status 200, or a truncated body (the full Content-Length announced, half
sent). Otherwise the request is forwarded and the answer passed back as it came.

Files are published on a clock (`Publication`): a granule appears on its due time (IMERG Early: start +
latency; GEOS-FP: initialisation + latency), some appear late, and some never. A file not published yet
answers 404 and is left out of the listings (PPS text listings and HTML indexes are one entry a line),
as on the real servers.
"""

from __future__ import annotations

import collections
import http.client
import logging
import random
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

log = logging.getLogger("nrt.twin.faults")

FAULTS = ("status_5xx", "stall", "reset", "html", "truncate")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection", "te", "upgrade"}
ERROR_PAGE = (b"<!DOCTYPE html>\n<html><head><title>Service Unavailable</title></head>\n"
              b"<body><h1>The service is temporarily unavailable</h1><p>Please try again later.</p></body></html>\n")


@dataclass
class Publication:
    """When each file of the mirror is published on the simulated clock; `late` and `missing` are shares of granules.

    `due(name)` gives a file's nominal publication time (None: always there, e.g. the DEM). A late granule
    appears between `late_minutes` after its due time; a missing one never does. The draw is seeded by the
    granule's key (`key(name)`: for GEOS-FP the whole initialisation goes late or missing together).
    """

    due: Callable[[str], datetime | None]
    key: Callable[[str], str]
    seed: int
    late: float = 0.0
    missing: float = 0.0
    late_minutes: tuple[float, float] = (5.0, 60.0)

    def available_at(self, name: str) -> datetime | None:
        """When `name` is published; `datetime.max` for never, None for always."""
        due = self.due(name)
        if due is None:
            return None
        draw = random.Random(f"{self.seed}:publication:{self.key(name)}")
        share = draw.random()
        if share < self.missing:
            return datetime.max.replace(tzinfo=due.tzinfo)
        if share < self.missing + self.late:
            return due + timedelta(minutes=draw.uniform(*self.late_minutes))
        return due

    def published(self, name: str, now: datetime) -> bool:
        at = self.available_at(name)
        return at is None or now >= at


@dataclass
class FaultPlan:
    """Which requests fail, and how; `counts` tallies the faults served."""

    seed: int
    rate: float = 0.0  # share of GETs that meet a fault
    kinds: tuple[str, ...] = FAULTS
    stall_s: float = 2.0  # longer than the client's read timeout
    counts: collections.Counter = field(default_factory=collections.Counter)
    _asked: collections.Counter = field(default_factory=collections.Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def draw(self, path: str) -> str | None:
        with self._lock:
            self._asked[path] += 1
            rng = random.Random(f"{self.seed}:fault:{path}:{self._asked[path]}")
            fault = rng.choice(self.kinds) if rng.random() < self.rate else None
            if fault:
                self.counts[fault] += 1
            return fault


class FaultProxy(ThreadingHTTPServer):
    """Forwards to the mirror at `upstream` (http://host:port), injecting `plan`'s faults and `publication`'s delays."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, upstream: str, plan: FaultPlan, publication: Publication | None = None,
                 now: Callable[[], datetime] | None = None, address: tuple[str, int] = ("127.0.0.1", 0)):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port or 80)
        self.plan, self.publication = plan, publication
        self.now = now
        self.withheld = collections.Counter()  # requests answered "not published (yet)"
        super().__init__(address, FaultHandler)

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def handle_error(self, request, client_address) -> None:
        """A client that gave up (its read timeout during a stall) is part of the game, not an error to print."""
        log.debug("request from %s ended early", client_address, exc_info=True)

    def hidden(self, name: str) -> bool:
        return self.publication is not None and not self.publication.published(name, self.now())

    def serve_in_thread(self) -> FaultProxy:
        threading.Thread(target=self.serve_forever, name="nrt-fault-proxy", daemon=True).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class FaultHandler(BaseHTTPRequestHandler):
    server: FaultProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - BaseHTTPRequestHandler's signature
        log.debug("%s %s", self.address_string(), format % args)

    def do_HEAD(self):
        self.forward(head=True)

    def do_GET(self):
        fault = self.server.plan.draw(urlsplit(self.path).path)
        if fault is None:
            return self.forward(head=False)
        getattr(self, fault)()

    # -------------------------------------------------------------- faults

    def status_5xx(self) -> None:
        statuses = (HTTPStatus.INTERNAL_SERVER_ERROR, HTTPStatus.BAD_GATEWAY, HTTPStatus.SERVICE_UNAVAILABLE)
        status = statuses[self.server.plan.counts["status_5xx"] % len(statuses)]  # in turn, so a run is reproducible
        self.reply(status, b"server error\n", {"Content-Type": "text/plain"})

    def stall(self) -> None:
        time.sleep(self.server.plan.stall_s)
        self.close_connection = True

    def reset(self) -> None:
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def html(self) -> None:
        self.reply(HTTPStatus.OK, ERROR_PAGE, {"Content-Type": "text/html; charset=utf-8"})

    def truncate(self) -> None:
        self.forward(head=False, truncate=True)

    # -------------------------------------------------------------- forwarding

    def forward(self, head: bool, truncate: bool = False) -> None:
        name = unquote(urlsplit(self.path).path).rstrip("/").rsplit("/", 1)[-1]
        if self.server.hidden(name):
            self.server.withheld[name] += 1
            return self.reply(HTTPStatus.NOT_FOUND, b"Not Found\n", {"Content-Type": "text/plain"}, head)
        upstream = http.client.HTTPConnection(*self.server.upstream, timeout=30)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP and k.lower() != "host"}
            upstream.request(self.command, self.path, headers=headers)
            answer = upstream.getresponse()
            body = answer.read()
            passed = {k: v for k, v in answer.getheaders() if k.lower() not in HOP_BY_HOP}
        finally:
            upstream.close()
        if answer.status == HTTPStatus.OK and answer.getheader("Content-Type", "").startswith("text/"):
            body = self.unpublished_left_out(body)
        if truncate and not head and len(body) > 1:
            return self.reply(answer.status, body[: len(body) // 2], passed, head, length=len(body))
        self.reply(answer.status, body, passed, head)

    def unpublished_left_out(self, listing: bytes) -> bytes:
        """A listing without the lines naming files not published yet (one entry a line, text or HTML)."""
        if self.server.publication is None:
            return listing
        kept = []
        for line in listing.decode("utf-8", "replace").splitlines(keepends=True):
            names = [part.rsplit("/", 1)[-1] for part in line.replace('"', " ").replace(">", " ").replace("<", " ").split()]
            if not any(name and self.server.hidden(unquote(name)) for name in names):
                kept.append(line)
        return "".join(kept).encode("utf-8")

    def reply(self, status: int, body: bytes, headers: dict | list, head: bool = False, length: int | None = None) -> None:
        self.send_response(status)
        for key, value in (headers.items() if isinstance(headers, dict) else headers):
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if not head:
            try:
                self.wfile.write(body)
            except OSError:
                pass
        if length is not None:
            self.close_connection = True
