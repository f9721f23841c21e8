"""Cycle times, expected IMERG granules, bridge valid times and GEOS-FP times across calendar boundaries."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from nrt.timeline import (
    HALF_HOUR,
    bridge_valid_times,
    cycle_times,
    floor_halfhour,
    geosfp_hours_for,
    geosfp_init_for,
    isoformat,
    lead_of,
    motion_starts,
    newest_imerg_start,
    utc,
    utc_times,
)

FOUR_HOURS = timedelta(hours=4)


def t(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def test_utc_refuses_naive_and_converts_other_zones():
    with pytest.raises(ValueError, match="naive"):
        utc(datetime(2024, 1, 1))
    assert utc("2024-01-01T02:00:00+02:00") == t("2024-01-01T00:00")
    assert utc("2024-02-29T23:30:00Z") == t("2024-02-29T23:30")
    assert utc(t("2024-01-01T00:00")).tzinfo is timezone.utc
    # Flooring works on the UTC instant, whatever zone the input was written in.
    assert floor_halfhour(datetime(2024, 1, 1, 1, 10, tzinfo=timezone(timedelta(hours=2)))) == t("2023-12-31T23:00")


@pytest.mark.parametrize(
    "start,end,expected",
    [
        ("2023-12-31T23:10", "2024-01-01T00:30", ["2023-12-31T23:30", "2024-01-01T00:00", "2024-01-01T00:30"]),
        ("2024-02-29T23:30", "2024-03-01T00:29", ["2024-02-29T23:30", "2024-03-01T00:00"]),
        ("2023-02-28T23:59", "2023-03-01T00:00", ["2023-03-01T00:00"]),
        ("2024-04-30T23:31", "2024-04-30T23:59", []),
    ],
)
def test_cycle_times_are_aligned_and_inclusive(start, end, expected):
    assert cycle_times(t(start), t(end)) == [t(x) for x in expected]


def test_cycle_times_over_a_leap_year_count_every_half_hour():
    cycles = cycle_times(t("2024-01-01T00:00"), t("2024-12-31T23:30"))
    assert len(cycles) == 366 * 48
    assert t("2024-02-29T12:00") in cycles
    assert all(b - a == HALF_HOUR for a, b in zip(cycles, cycles[1:]))


@pytest.mark.parametrize(
    "cycle,latency,newest",
    [
        ("2024-06-01T12:30", FOUR_HOURS, "2024-06-01T08:30"),
        ("2024-06-01T12:40", FOUR_HOURS, "2024-06-01T08:30"),  # not aligned: the granule must have ended
        ("2024-01-01T02:10", FOUR_HOURS, "2023-12-31T22:00"),  # year boundary
        ("2024-03-01T03:05", FOUR_HOURS, "2024-02-29T23:00"),  # leap day
        ("2023-03-01T03:05", FOUR_HOURS, "2023-02-28T23:00"),  # no leap day
        ("2024-05-01T00:00", FOUR_HOURS, "2024-04-30T20:00"),  # month boundary
        ("2024-06-01T10:00", timedelta(hours=3, minutes=45), "2024-06-01T06:00"),
        ("2024-06-01T10:00", timedelta(0), "2024-06-01T10:00"),
    ],
)
def test_newest_imerg_start(cycle, latency, newest):
    assert newest_imerg_start(t(cycle), latency) == t(newest)


def test_newest_imerg_start_refuses_negative_latency():
    with pytest.raises(ValueError):
        newest_imerg_start(t("2024-06-01T10:00"), -HALF_HOUR)


def test_bridge_across_new_year_has_nine_valid_times_with_leads():
    cycle = t("2024-01-01T02:00")
    newest = newest_imerg_start(cycle)
    valid = bridge_valid_times(newest, cycle)
    assert valid[0] == t("2023-12-31T22:00") and valid[-1] == cycle
    assert len(valid) == 9  # lead 0 (IMERG itself) and leads 1..8
    assert [lead_of(v, newest) for v in valid] == list(range(9))
    assert all(b - a == HALF_HOUR for a, b in zip(valid, valid[1:]))


def test_bridge_on_leap_day_and_refusal_when_reversed():
    valid = bridge_valid_times(t("2024-02-29T22:30"), t("2024-03-01T00:40"))
    assert valid == [t("2024-02-29T22:30") + k * HALF_HOUR for k in range(5)]
    with pytest.raises(ValueError, match="precedes"):
        bridge_valid_times(t("2024-03-01T01:00"), t("2024-03-01T00:00"))


def test_motion_starts_cross_midnight_oldest_first():
    expected = [t("2024-12-31T23:30"), t("2025-01-01T00:00"), t("2025-01-01T00:30")]
    assert motion_starts(t("2025-01-01T00:30"), 3) == expected
    assert motion_starts(t("2024-03-01T00:10"), 4)[0] == t("2024-02-29T22:30")


@pytest.mark.parametrize(
    "valid,before,after",
    [
        ("2024-06-01T12:00", "2024-06-01T11:30", "2024-06-01T12:30"),
        ("2024-06-01T12:30", "2024-06-01T12:30", "2024-06-01T13:30"),
        ("2024-02-29T23:30", "2024-02-29T23:30", "2024-03-01T00:30"),  # leap day into March
        ("2025-01-01T00:00", "2024-12-31T23:30", "2025-01-01T00:30"),  # year boundary
        ("2024-04-30T23:45", "2024-04-30T23:30", "2024-05-01T00:30"),  # month boundary, unaligned input
    ],
)
def test_geosfp_hours_bracket_the_half_hour_centre(valid, before, after):
    assert geosfp_hours_for(t(valid)) == (t(before), t(after))


def test_geosfp_hours_for_every_half_hour_of_a_leap_year():
    for v in cycle_times(t("2024-01-01T00:00"), t("2025-01-01T00:00")):
        before, after = geosfp_hours_for(v)
        centre = v + timedelta(minutes=15)
        assert before.minute == after.minute == 30 and after - before == timedelta(hours=1)
        assert before <= centre <= after


@pytest.mark.parametrize(
    "valid,now,init",
    [
        # Published by `now` (5 h latency) and not after the valid time.
        ("2024-03-01T01:00", "2024-03-01T04:00", "2024-02-29T18:00"),
        ("2024-02-29T13:00", "2024-03-01T12:00", "2024-02-29T12:00"),
        ("2025-01-01T02:00", "2025-01-01T03:00", "2024-12-31T18:00"),
        ("2024-05-01T05:30", "2024-05-01T11:00", "2024-05-01T00:00"),
        ("2024-05-01T06:00", "2024-05-01T11:00", "2024-05-01T06:00"),
    ],
)
def test_geosfp_init_is_newest_published_forecast_not_after_valid(valid, now, init):
    got = geosfp_init_for(t(valid), t(now))
    assert got == t(init)
    assert got.hour in (0, 6, 12, 18) and got <= t(valid) and got + timedelta(hours=5) <= t(now)
    # The forecast hours needed for `valid` come after the initialisation (lead >= 0).
    assert all(hour >= got for hour in geosfp_hours_for(t(valid))[1:])


def test_isoformat_is_compact_utc():
    assert isoformat(datetime(2024, 2, 29, 23, 30, tzinfo=timezone(timedelta(hours=-5)))) == "2024-03-01T04:30:00Z"


def test_utc_times_reads_an_xarray_time_coordinate_as_aware_utc():
    values = np.array(["2024-02-29T23:30", "2024-03-01T00:00"], dtype="datetime64[ns]")
    assert utc_times(values) == [datetime(2024, 2, 29, 23, 30, tzinfo=timezone.utc), datetime(2024, 3, 1, tzinfo=timezone.utc)]
