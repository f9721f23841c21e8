"""The upwind buffer: how far around the domain the nowcast's input must reach for rain to move in from it."""

from __future__ import annotations

import math

from nrt.grids import KM_PER_DEGREE
from nrt.nowcast.methods import TIMESTEP_MINUTES


def buffer_degrees_for(max_speed_kmh: float, horizon_h: float, lat: float) -> float:
    """Degrees to add around a domain so rain moving at `max_speed_kmh` for `horizon_h` starts inside it.

    Distance / km per degree of longitude at `lat` (the longitude degree is the shorter one, so the same
    buffer also covers the meridional direction). Pass the domain's most poleward latitude.
    """
    if max_speed_kmh < 0 or horizon_h < 0:
        raise ValueError("speed and horizon must not be negative")
    km_per_lon_degree = KM_PER_DEGREE * max(math.cos(math.radians(min(abs(lat), 89.0))), 1e-3)
    return max_speed_kmh * horizon_h / km_per_lon_degree


def nowcast_domain(domain, settings, steps: int | None = None, lead_offset: int = 0):
    """The domain plus its upwind buffer: the larger of `settings.buffer_degrees` and speed x horizon."""
    steps = settings.steps if steps is None else steps
    horizon_h = (steps + lead_offset) * TIMESTEP_MINUTES / 60
    poleward = max(abs(domain.south), abs(domain.north))
    return domain.buffered(max(settings.buffer_degrees, buffer_degrees_for(settings.max_speed_kmh, horizon_h, poleward)))
