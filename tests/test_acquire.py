"""The acquire step's fallback policies, on fake acquired sets: no server, catalog or model."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from nrt import acquire
from nrt.acquire import CycleFailed, geosfp_verdict, imerg_verdict
from nrt.degradation import Degradation
from nrt.sources import IngestResult, imerg
from nrt.timeline import HALF_HOUR, Clock, newest_imerg_start

T = datetime(2024, 6, 1, 12, 30, tzinfo=timezone.utc)
S = datetime(2024, 6, 1, 8, 30, tzinfo=timezone.utc)  # the newest granule due at T with the 4 h latency


@pytest.mark.parametrize(
    "newest,back,verdict",
    [
        (S, 0, (True, False)),  # on time
        (S - HALF_HOUR, 1, (True, True)),  # S missing: one half-hour back, the window is whole again
        (S - 2 * HALF_HOUR, 1, (False, True)),  # still short of what that try wanted: look further back
        (S - 3 * HALF_HOUR, 2, (True, True)),  # the last try takes what it has
        (None, 0, (False, False)),
        (None, 2, (False, False)),  # nothing at all, even on the last try
    ],
)
def test_imerg_verdict(newest, back, verdict):
    assert imerg_verdict(newest, S - back * HALF_HOUR, back, tries=3) == verdict


def test_geosfp_verdict():
    complete, short, bad = IngestResult(files=[Path("a")]), IngestResult(missing=["x: 404"]), IngestResult(bad=["x: fill"])
    assert geosfp_verdict(complete, None) is None
    assert geosfp_verdict(short, complete) == Degradation.GEOSFP_PREVIOUS_FORECAST
    assert geosfp_verdict(bad, complete) == Degradation.GEOSFP_PREVIOUS_FORECAST
    assert geosfp_verdict(short, short) == Degradation.GEOSFP_MISSING
    assert geosfp_verdict(short, None) == Degradation.GEOSFP_MISSING


class Held:
    """A fake granule store: `ingest("imerg", ..., t)` gives the held granules of t's motion window."""

    def __init__(self, starts, cfg):
        self.starts, self.asked, self.cfg = set(starts), [], cfg

    def __call__(self, source, settings, catalog, t, client, expected=None):
        assert source == "imerg"
        self.asked.append(t)
        latency = timedelta(minutes=self.cfg.timeline.imerg_latency_minutes)
        newest = newest_imerg_start(t, latency)
        window = [newest - k * HALF_HOUR for k in range(self.cfg.timeline.motion_granules)]
        return IngestResult(files=[Path(imerg.filename(s)) for s in sorted(window) if s in self.starts],
                            missing=[f"{imerg.filename(s)}: not listed" for s in window if s not in self.starts])


@pytest.fixture
def past_cutoff():
    """A clock long past every cycle's polling cutoff, so nothing waits."""
    return Clock(T + timedelta(days=1))


def test_missing_newest_imerg_moves_the_window_back_and_flags_it(cfg, monkeypatch, past_cutoff):
    held = Held([S - k * HALF_HOUR for k in range(1, 6)], cfg)  # S itself never came
    monkeypatch.setattr(acquire, "ingest", held)
    files, flags = acquire.acquire_imerg(acquire.acquire_settings(cfg), None, T, None, past_cutoff)
    assert [imerg.parse_name(p.name).start for p in files] == [S - 3 * HALF_HOUR, S - 2 * HALF_HOUR, S - HALF_HOUR]
    assert flags == ["imerg_missing:2024-06-01T08:30:00Z"]
    assert held.asked == [T, T - HALF_HOUR]


def test_complete_imerg_window_is_taken_at_once(cfg, monkeypatch, past_cutoff):
    held = Held([S - k * HALF_HOUR for k in range(3)], cfg)
    monkeypatch.setattr(acquire, "ingest", held)
    files, flags = acquire.acquire_imerg(acquire.acquire_settings(cfg), None, T, None, past_cutoff)
    assert len(files) == 3 and flags == [] and held.asked == [T]


def test_no_imerg_at_all_fails_the_cycle(cfg, monkeypatch, past_cutoff):
    monkeypatch.setattr(acquire, "ingest", Held([], cfg))
    with pytest.raises(CycleFailed, match="no IMERG Early granule within 3 half-hours"):
        acquire.acquire_imerg(acquire.acquire_settings(cfg), None, T, None, past_cutoff)


def test_late_imerg_is_polled_with_backoff_until_the_cutoff(cfg, monkeypatch):
    slept = []

    class Waiting(Clock):
        def now(self):
            return T + timedelta(seconds=sum(slept))

        def sleep(self, seconds):
            slept.append(seconds)

    held = Held([S - k * HALF_HOUR for k in range(1, 3)], cfg)
    monkeypatch.setattr(acquire, "ingest", held)
    acquire.ingest_waiting("imerg", acquire.acquire_settings(cfg), None, T, None, Waiting())
    cutoff = cfg.service.ingest_cutoff_minutes * 60
    assert sum(slept) == pytest.approx(cutoff) and slept[:2] == [cfg.service.poll_backoff_s, 2 * cfg.service.poll_backoff_s]
    assert len(held.asked) == len(slept) + 1
