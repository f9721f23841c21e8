"""The nowcast methods through pysteps: the dB transform, the optical flow, the advection of the missing area,
and the methods themselves.

Methods are plain functions `f(MethodInputs) -> ndarray(member, step, lat, lon)` in `METHODS` (steps, sprog,
extrapolation), chosen by name as in pysteps; `FALLBACKS` holds the two the degradation ladder
(`nrt.nowcast.ladder`) ends on, persistence and zero rain.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("nrt.nowcast")

TIMESTEP_MINUTES = 30
DB_ZEROVALUE = -15.0  # dB value given to dry pixels (pysteps' customary choice, 5 dB under a 0.1 mm/h threshold)
MAX_AR_ORDER = 2

MOTION_METHODS = {"lucaskanade": "LK", "vet": "VET", "darts": "DARTS"}
# `nowcast.num_workers = 0` takes one thread per usable core up to this many: each worker adds to the peak
# memory (a second one added 180-187 MiB on CONUS 0.1°, docs/benchmarks.md), and the threads share the GIL.
AUTO_WORKERS_MAX = 8


def worker_count(setting: int) -> int:
    """Threads for the ensemble: `setting`, or for 0 the cores this process may run on, capped at AUTO_WORKERS_MAX."""
    if setting < 0:
        raise ValueError(f"nowcast.num_workers must be >= 0, got {setting}")
    if setting:
        return setting
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(usable, AUTO_WORKERS_MAX))


@dataclass(frozen=True)
class MethodInputs:
    """What every method receives: finite mm/h frames 30 min apart (oldest first) and their motion."""

    precip: np.ndarray  # (t, lat, lon) mm/h, NaN already filled as dry
    velocity: np.ndarray  # (2, lat, lon) grid cells per time step: [0] towards +lon, [1] towards +lat
    steps: int
    members: int
    seed: int
    km_per_pixel: float
    threshold: float  # mm/h; the dB transform's threshold and STEPS' rain/no-rain threshold
    cascade_levels: int
    workers: int = 1  # threads over STEPS' members (pysteps runs them through dask)


def _quiet(func: Callable, *args, **kwargs):
    """Call a pysteps function, sending what it prints (stdout, warnings) to the debug log instead."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = func(*args, **kwargs)
    lines = [line for line in buffer.getvalue().splitlines() if line.strip()] + [str(w.message) for w in caught]
    if lines:
        log.debug("pysteps: %s", " | ".join(lines))
    return result


def _pysteps():
    """Import pysteps once, swallowing the banner it prints on import."""
    return _quiet(__import__, "pysteps")


def to_db(precip: np.ndarray, threshold: float) -> np.ndarray:
    _pysteps()
    from pysteps.utils import transformation

    db, _ = transformation.dB_transform(precip, threshold=threshold, zerovalue=DB_ZEROVALUE)
    return db


def from_db(db: np.ndarray, threshold: float) -> np.ndarray:
    _pysteps()
    from pysteps.utils import transformation

    metadata = {"transform": "dB", "threshold": 10 * math.log10(threshold), "zerovalue": DB_ZEROVALUE}
    precip, _ = transformation.dB_transform(db, metadata, inverse=True)
    return precip


def estimate_motion(precip: np.ndarray, method: str, threshold: float) -> np.ndarray:
    """Optical flow on 30-min frames (t >= 2, mm/h, finite) -> (2, lat, lon) grid cells per step."""
    motion = _pysteps().motion
    # DARTS needs its temporal order N_t below T-1 (pysteps' default N_t=4 wants 6+ frames).
    options = {"N_t": min(4, precip.shape[0] - 2)} if method == "darts" and precip.shape[0] >= 3 else {}
    flow = _quiet(motion.get_method(MOTION_METHODS[method]), to_db(precip, threshold), **options)
    return np.asarray(flow, dtype=np.float64)


def advect_mask(mask: np.ndarray, velocity: np.ndarray, steps: int) -> np.ndarray:
    """Where each lead's back-trajectory starts on a missing pixel: the missing area moves with the rain."""
    if not mask.any():
        return np.zeros((steps,) + mask.shape, dtype=bool)
    if not velocity.any():
        return np.repeat(mask[np.newaxis], steps, axis=0)
    extrapolation = _pysteps().extrapolation
    moved = _quiet(extrapolation.get_method("semilagrangian"), mask.astype(float), velocity, steps, outval=0.0)
    return moved > 0.5


def steps_method(inp: MethodInputs) -> np.ndarray:
    """STEPS ensemble (Bowler et al. 2006, Seed et al. 2013) in dB, spectral domain, seeded."""
    nowcasts = _pysteps().nowcasts
    ar_order = min(MAX_AR_ORDER, inp.precip.shape[0] - 1)
    out = np.empty((inp.members, inp.steps) + inp.precip.shape[1:], dtype=np.float32)
    done = []

    def store(step_db: np.ndarray) -> None:
        # pysteps hands over each lead as it is made: keep it as float32 mm/h instead of a float64 dB stack.
        # NaN marks rain drawn from beyond the frames: a member's perturbed motion (bps, Laplace-distributed, so
        # unbounded) can outrun the upwind buffer, which is sized for max_speed_kmh. Count it dry, as pysteps'
        # outval="min" would; steps passes its own outval positionally, so extrap_kwargs can't carry it.
        out[:, len(done)] = np.nan_to_num(from_db(step_db, inp.threshold), nan=0.0)
        done.append(True)

    _quiet(
        nowcasts.get_method("steps"),
        to_db(inp.precip[-(ar_order + 1) :], inp.threshold),
        inp.velocity,
        inp.steps,
        n_ens_members=inp.members,
        n_cascade_levels=inp.cascade_levels,
        precip_thr=10 * math.log10(inp.threshold),
        kmperpixel=inp.km_per_pixel,
        timestep=TIMESTEP_MINUTES,
        ar_order=ar_order,
        noise_method="nonparametric",
        vel_pert_method="bps",
        mask_method="incremental",
        probmatching_method="cdf",
        domain="spectral",
        # numpy FFT: pyfftw gave wrong fields and crashes with parallel members (pysteps issues #30, #337).
        fft_method="numpy",
        seed=inp.seed,
        num_workers=inp.workers,
        callback=store,
        return_output=False,
    )
    if len(done) != inp.steps:
        raise RuntimeError(f"STEPS returned {len(done)} of {inp.steps} leads")
    return out


def sprog_method(inp: MethodInputs) -> np.ndarray:
    """S-PROG (Seed 2003): the deterministic, scale-filtered cascade forecast, in dB, spectral domain."""
    nowcasts = _pysteps().nowcasts
    ar_order = min(MAX_AR_ORDER, inp.precip.shape[0] - 1)
    db = _quiet(
        nowcasts.get_method("sprog"),
        to_db(inp.precip[-(ar_order + 1) :], inp.threshold),
        inp.velocity,
        inp.steps,
        n_cascade_levels=inp.cascade_levels,
        precip_thr=10 * math.log10(inp.threshold),
        ar_order=ar_order,
        probmatching_method="cdf",
        domain="spectral",
        fft_method="numpy",
    )
    return from_db(db, inp.threshold)[np.newaxis]


def extrapolation_method(inp: MethodInputs) -> np.ndarray:
    """Semi-Lagrangian advection of the newest frame in mm/h (keeps the rain total away from the edges)."""
    nowcasts = _pysteps().nowcasts
    return _quiet(nowcasts.get_method("extrapolation"), inp.precip[-1], inp.velocity, inp.steps)[np.newaxis]


def persistence(inp: MethodInputs) -> np.ndarray:
    """Eulerian persistence: the newest frame repeated."""
    return np.repeat(inp.precip[-1][np.newaxis, np.newaxis], inp.steps, axis=1)


def zero_rain(inp: MethodInputs) -> np.ndarray:
    return np.zeros((1, inp.steps) + inp.precip.shape[1:])


METHODS: dict[str, Callable[[MethodInputs], np.ndarray]] = {
    "steps": steps_method,
    "extrapolation": extrapolation_method,
    "sprog": sprog_method,
}
FALLBACKS: dict[str, Callable[[MethodInputs], np.ndarray]] = {"persistence": persistence, "zero": zero_rain}
