"""The soak's fault-injecting proxy (`nrt.twin.faults`) in front of a plain file server: each fault does what it
says, the draw is reproducible from the seed, and files are published on the clock, late or never."""

from __future__ import annotations

import functools
import http.client
import socket
import threading
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nrt.twin.faults import FaultPlan, FaultProxy, Publication

T = datetime(2024, 6, 1, 12, tzinfo=timezone.utc)
BODY = bytes(range(256)) * 64


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def upstream(tmp_path):
    (tmp_path / "granule_a").write_bytes(BODY)
    (tmp_path / "granule_b").write_bytes(BODY)
    (tmp_path / "listing.txt").write_text("/data/granule_a\n/data/granule_b\n")
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def proxy_for(upstream: str, plan: FaultPlan, publication: Publication | None = None, now=lambda: T) -> FaultProxy:
    return FaultProxy(upstream, plan, publication, now=now).serve_in_thread()


def get(url: str, timeout: float = 5) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        return answer.status, answer.headers.get("Content-Type", ""), answer.read()


def test_without_faults_the_proxy_passes_the_file_through(upstream):
    proxy = proxy_for(upstream, FaultPlan(seed=1))
    try:
        assert get(f"{proxy.base_url}/granule_a")[2] == BODY
    finally:
        proxy.stop()


@pytest.mark.parametrize("kind", ["status_5xx", "html", "truncate", "reset", "stall"])
def test_each_fault_breaks_the_download_as_named(upstream, kind):
    plan = FaultPlan(seed=1, rate=1.0, kinds=(kind,), stall_s=1.0)
    proxy = proxy_for(upstream, plan)
    url = f"{proxy.base_url}/granule_a"
    try:
        if kind == "status_5xx":
            with pytest.raises(urllib.error.HTTPError) as error:
                get(url)
            assert error.value.code >= 500
        elif kind == "html":
            status, content_type, body = get(url)
            assert (status, content_type.split(";")[0]) == (200, "text/html") and b"unavailable" in body
        elif kind == "truncate":
            with pytest.raises(http.client.IncompleteRead) as error:
                get(url)
            assert len(error.value.partial) == len(BODY) // 2
        elif kind == "reset":
            with pytest.raises((ConnectionResetError, http.client.RemoteDisconnected, urllib.error.URLError)):
                get(url)
        else:
            with pytest.raises((TimeoutError, socket.timeout, urllib.error.URLError)):
                get(url, timeout=0.3)
        assert plan.counts == {kind: 1}
    finally:
        proxy.stop()


def test_the_fault_draw_is_reproducible_and_near_its_rate():
    def draws(seed):
        plan = FaultPlan(seed=seed, rate=0.2)
        return [plan.draw(f"/file{k % 50}") for k in range(1000)]

    first = draws(5)
    assert first == draws(5) and first != draws(6)
    share = sum(f is not None for f in first) / len(first)
    assert 0.15 < share < 0.25
    assert {f for f in first if f} == {"status_5xx", "stall", "reset", "html", "truncate"}


def test_a_file_is_hidden_from_get_and_listing_until_it_is_published(upstream):
    due = {"granule_a": T - timedelta(minutes=10), "granule_b": T + timedelta(minutes=10)}
    publication = Publication(due.get, key=str, seed=1)
    now = [T]
    proxy = proxy_for(upstream, FaultPlan(seed=1), publication, now=lambda: now[0])
    try:
        assert get(f"{proxy.base_url}/listing.txt")[2] == b"/data/granule_a\n"
        with pytest.raises(urllib.error.HTTPError) as error:
            get(f"{proxy.base_url}/granule_b")
        assert error.value.code == 404
        now[0] = T + timedelta(minutes=11)
        assert get(f"{proxy.base_url}/listing.txt")[2] == b"/data/granule_a\n/data/granule_b\n"
        assert get(f"{proxy.base_url}/granule_b")[2] == BODY
    finally:
        proxy.stop()


def test_late_and_missing_granules_follow_their_shares():
    due = {f"g{k}": T + k * timedelta(minutes=30) for k in range(2000)}
    publication = Publication(due.get, key=str, seed=3, late=0.1, missing=0.05, late_minutes=(5, 60))
    delays = [publication.available_at(name) - due[name] for name in due if publication.available_at(name).year < 9999]
    never = sum(publication.available_at(name).year == 9999 for name in due)
    late = [d for d in delays if d > timedelta(0)]
    assert 0.03 < never / len(due) < 0.07 and 0.07 < len(late) / len(due) < 0.13
    assert all(timedelta(minutes=5) <= d <= timedelta(minutes=60) for d in late)
    assert publication.available_at("dem.nc") is None and publication.published("dem.nc", T)
