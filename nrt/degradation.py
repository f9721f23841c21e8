"""Why a cycle ran degraded: one vocabulary for the code, the metrics, the product attributes and the tests.

A cycle's flags (`CycleReport.degraded`, the products' `degraded` attribute, the catalog's runs) are
`Degradation` members, or one of them joined with its detail by `flag`: `imerg_missing:<ISO start>`,
`nowcast:<NowcastReason>`, `downscale_fallback:<Fallback>`. A `Fallback` that does not make the cycle fall
back (an out-of-range input with `model.ood_fallback` off) is a flag of its own. The nowcast's reasons label
`nrt_nowcast_degraded_total{reason}`, the fallbacks `nrt_downscale_fallback_total{reason}`.
"""

from __future__ import annotations

from enum import StrEnum


class Degradation(StrEnum):
    IMERG_MISSING = "imerg_missing"  # the nominal newest granule was missing: the nowcast started earlier
    GEOSFP_PREVIOUS_FORECAST = "geosfp_previous_forecast"  # the newest forecast was missing: the one 6 h older
    GEOSFP_MISSING = "geosfp_missing"  # no GEOS-FP for some valid time: the model used its training means
    GEOSFP_UNREADABLE = "geosfp_unreadable"
    DEM_MISSING = "dem_missing"
    NOWCAST = "nowcast"  # with a NowcastReason
    DOWNSCALE_FALLBACK = "downscale_fallback"  # with a Fallback: the CSGD ensemble replaced the configured method


class NowcastReason(StrEnum):
    MISSING_PIXELS = "missing_pixels"  # NaN pixels filled as dry for motion and nowcast, re-masked downstream
    MISSING_GRANULE = "missing_granule"  # a gap in the sequence (or an all-missing granule)
    MISSING_NEWEST = "missing_newest_granule"  # started from an older granule (lead_offset > 0)
    DRY = "dry"  # no rain in the newest granule: zero rain
    NEARLY_DRY = "nearly_dry"  # too little rain for STEPS/S-PROG's cascade statistics: extrapolation
    ZERO_MOTION = "zero_motion"  # no motion found (or too few granules to find any): persistence
    MOTION_FAILED = "motion_failed"  # the optical flow raised or returned non-finite vectors: persistence
    METHOD_FAILED = "method_failed"  # the method raised or returned nothing finite: next simpler method
    MOTION_CLIPPED = "motion_clipped"  # flow faster than max_speed_kmh (what the upwind buffer is sized for): slowed to it


class Fallback(StrEnum):
    CHECKPOINT_UNLOADABLE = "checkpoint_unloadable"  # the diffusion checkpoint failed to load
    INPUTS_MISSING = "inputs_missing"  # a channel the checkpoint requires is absent
    INPUTS_OUT_OF_DISTRIBUTION = "inputs_out_of_distribution"  # a channel's domain mean is beyond model.ood_max_z


def flag(kind: Degradation, detail: str) -> str:
    """A cycle flag with its detail, e.g. `nowcast:dry`."""
    return f"{kind}:{detail}"
