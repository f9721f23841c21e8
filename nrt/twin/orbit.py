"""The GPM core satellite's ground track and the DPR full-swath scan geometry.

A circular orbit (65° inclination, ~407 km) with the J2 drift of the node and of the argument of latitude,
over a spherical Earth that rotates beneath it. The reference node crossing is the one recorded in the real
DPR fixture (orbit 144, 2014-03-08), so the twin's orbit has GPM's phase, not merely its shape.

Each scan is a line of `rays` footprints across the track, perpendicular to it, spanning `swath_km` on the
ground; scans follow each other every `scan_period_s`. Ray 0 lies on the right of the flight direction, as in
the real files. Near-real-time granules cut the continuous scan sequence every `granule_minutes`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np

from nrt.grids import Domain
from nrt.timeline import utc
from nrt.twin.spec import DprSettings

R_EARTH_KM = 6371.0  # sphere of the ground geometry
R_EQUATOR_KM = 6378.137  # reference radius of J2
MU_KM3_S2 = 398600.4418
J2 = 1.08262668e-3
OMEGA_EARTH = 7.2921150e-5  # rad/s
GPS_EPOCH = datetime(1980, 1, 6, tzinfo=timezone.utc)
# Ascending node of the real DPR fixture's orbit (its NavigationRecord: UTCDateTimeOnEquator, LongitudeOnEquator).
NODE_EPOCH = datetime(2014, 3, 8, 22, 32, 57, 505000, tzinfo=timezone.utc)
NODE_LONGITUDE = -116.149478


@dataclass(frozen=True)
class Orbit:
    inclination: float  # radians
    altitude_km: float
    epoch: datetime = NODE_EPOCH
    node_longitude: float = math.radians(NODE_LONGITUDE)

    @classmethod
    def from_settings(cls, settings: DprSettings) -> Orbit:
        return cls(math.radians(settings.inclination_degrees), settings.altitude_km)

    @property
    def semi_major_km(self) -> float:
        return R_EQUATOR_KM + self.altitude_km

    @property
    def mean_motion(self) -> float:
        return math.sqrt(MU_KM3_S2 / self.semi_major_km**3)

    @property
    def _j2_factor(self) -> float:
        return 1.5 * J2 * (R_EQUATOR_KM / self.semi_major_km) ** 2 * self.mean_motion

    @property
    def node_rate(self) -> float:
        """Inertial drift of the ascending node (rad/s), negative for a prograde orbit."""
        return -self._j2_factor * math.cos(self.inclination)

    @property
    def latitude_argument_rate(self) -> float:
        """d(argument of latitude)/dt: mean motion plus the J2 drifts of perigee and mean anomaly (circular orbit)."""
        c2 = math.cos(self.inclination) ** 2
        return self.mean_motion + self._j2_factor * (0.5 * (3 * c2 - 1) + 0.5 * (5 * c2 - 1))

    @property
    def period_s(self) -> float:
        return 2 * math.pi / self.latitude_argument_rate

    def seconds(self, t: datetime) -> float:
        return (utc(t) - self.epoch).total_seconds()

    def nadir(self, seconds: np.ndarray) -> np.ndarray:
        """Earth-fixed unit vectors (n, 3) of the sub-satellite points at `seconds` after the epoch."""
        seconds = np.asarray(seconds, dtype=np.float64)
        u = self.latitude_argument_rate * seconds
        node = self.node_longitude + (self.node_rate - OMEGA_EARTH) * seconds
        ci, si = math.cos(self.inclination), math.sin(self.inclination)
        x = np.cos(node) * np.cos(u) - np.sin(node) * np.sin(u) * ci
        y = np.sin(node) * np.cos(u) + np.cos(node) * np.sin(u) * ci
        z = np.sin(u) * si
        return np.stack([x, y, z], axis=-1)


def to_lonlat(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lon, lat) in degrees of Earth-fixed unit vectors (..., 3)."""
    lon = np.degrees(np.arctan2(vectors[..., 1], vectors[..., 0]))
    lat = np.degrees(np.arcsin(np.clip(vectors[..., 2], -1.0, 1.0)))
    return lon, lat


@dataclass(frozen=True)
class Scans:
    """Geometry of consecutive scans: times and footprint centres."""

    seconds: np.ndarray  # (nscan,) since the orbit epoch
    lat: np.ndarray  # (nscan, nray) degrees
    lon: np.ndarray
    sc_lat: np.ndarray  # (nscan,) sub-satellite point
    sc_lon: np.ndarray
    heading: np.ndarray  # (nscan,) ground-track azimuth, degrees clockwise from north

    def times(self, epoch: datetime) -> np.ndarray:
        """Scan times as numpy datetime64[ms] (UTC, naive by numpy's convention)."""
        base = np.datetime64(utc(epoch).replace(tzinfo=None), "ms")
        return base + np.round(self.seconds * 1000).astype("timedelta64[ms]")


def scan_geometry(orbit: Orbit, seconds: np.ndarray, settings: DprSettings) -> Scans:
    """Footprint centres of the scans at `seconds`: rays spread across the track on great circles."""
    seconds = np.asarray(seconds, dtype=np.float64)
    nadir = orbit.nadir(seconds)
    ahead = orbit.nadir(seconds + 0.5)
    along = ahead - nadir
    left = np.cross(nadir, along)
    left /= np.linalg.norm(left, axis=-1, keepdims=True)
    offsets = np.linspace(-settings.swath_km / 2, settings.swath_km / 2, settings.rays) / R_EARTH_KM
    footprints = nadir[:, None, :] * np.cos(offsets)[None, :, None] + left[:, None, :] * np.sin(offsets)[None, :, None]
    lon, lat = to_lonlat(footprints)
    sc_lon, sc_lat = to_lonlat(nadir)
    north = np.stack([-nadir[:, 2] * nadir[:, 0], -nadir[:, 2] * nadir[:, 1], 1 - nadir[:, 2] ** 2], axis=-1)
    east = np.stack([-nadir[:, 1], nadir[:, 0], np.zeros(len(seconds))], axis=-1)
    heading = np.degrees(np.arctan2(np.sum(along * east, axis=-1) / np.linalg.norm(east, axis=-1),
                                    np.sum(along * north, axis=-1) / np.linalg.norm(north, axis=-1))) % 360
    return Scans(seconds, lat, lon, sc_lat, sc_lon, heading)


@dataclass(frozen=True)
class Granule:
    """One near-real-time granule: the scans with times in [epoch + index·length, epoch + (index+1)·length)."""

    index: int
    first_scan: int
    nscan: int
    start: datetime  # time of the first scan
    end: datetime  # time of the last scan


def granule(orbit: Orbit, index: int, settings: DprSettings) -> Granule:
    length = settings.granule_minutes * 60
    first = math.ceil(round(index * length / settings.scan_period_s, 6))
    last = math.ceil(round((index + 1) * length / settings.scan_period_s, 6)) - 1
    start = orbit.epoch + timedelta(seconds=first * settings.scan_period_s)
    end = orbit.epoch + timedelta(seconds=last * settings.scan_period_s)
    return Granule(index, first, last - first + 1, start, end)


def granule_scans(orbit: Orbit, g: Granule, settings: DprSettings) -> Scans:
    return scan_geometry(orbit, (g.first_scan + np.arange(g.nscan)) * settings.scan_period_s, settings)


def in_region(lat: np.ndarray, lon: np.ndarray, region: Domain) -> np.ndarray:
    return (lat >= region.south) & (lat <= region.north) & (lon >= region.west) & (lon <= region.east)


def granules_over(orbit: Orbit, region: Domain, start: datetime, end: datetime, settings: DprSettings) -> list[Granule]:
    """Granules lying wholly inside [start, end) whose swath has at least one footprint inside `region`.

    The nadir track is screened every 10 s against the region grown by the half swath, then the candidates'
    footprints are checked one by one.
    """
    length = settings.granule_minutes * 60
    first = math.ceil(orbit.seconds(start) / length)
    last = math.floor(orbit.seconds(end) / length) - 1
    if last < first:
        return []
    coarse = np.arange(first * length, (last + 1) * length, 10.0)
    lon, lat = to_lonlat(orbit.nadir(coarse))
    margin_lat = settings.swath_km / 2 / (R_EARTH_KM * math.pi / 180) + 0.2
    widest = max(abs(region.south), abs(region.north)) + margin_lat
    margin_lon = margin_lat / max(math.cos(math.radians(min(widest, 89.0))), 0.01)
    near = (
        (lat >= region.south - margin_lat) & (lat <= region.north + margin_lat)
        & (lon >= region.west - margin_lon) & (lon <= region.east + margin_lon)
    )
    candidates = sorted(set((coarse[near] // length).astype(int).tolist()))
    found = []
    for index in candidates:
        g = granule(orbit, index, settings)
        scans = granule_scans(orbit, g, settings)
        if in_region(scans.lat, scans.lon, region).any():
            found.append(g)
    return found


def gps_seconds(t: datetime) -> float:
    """Seconds since 1980-01-06 without leap seconds, as GPM's time fields count them."""
    return (utc(t) - GPS_EPOCH).total_seconds()
