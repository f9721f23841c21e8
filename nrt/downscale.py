"""Downscale: the cycle's step from the coarse inputs to the 0.05° ensemble, the method's choice and its fallback.

`plan_downscale` decides how a cycle downscales (the input check, the method, why CSGD replaces the configured
one, the flags) and `downscale` runs that plan. The methods are a small registry of plain functions with one
signature (pysteps style):

    method(inputs, models, settings, *, seed, callback=None) -> (member, time, lat, lon) float32 mm/h

`inputs` holds one `Conditioning` per valid time of the cycle (the coarse IMERG or nowcast members at 0.1°,
GEOS-FP, DEM, lead), `models` what the worker loaded once (`load_models`), `settings` the `DownscaleSettings`,
`seed` the cycle's and `callback(k)` hears that valid time k is done. Member i of the output conditions on
coarse member i (mod the number given: lead 0 is IMERG itself, one field every member shares).

- `diffusion`: the residual diffusion model (`nrt.model.inference.Downscaler`), one valid time at a time.
- `csgd`: the statistical ensemble (`nrt.csgd`): truth | IMERG from a censored shifted gamma distribution,
  drawn with space-time correlated noise over all valid times at once, so members keep their texture in time.

CSGD is also the fallback: when the diffusion checkpoint cannot load (`load_models`), or a caller finds a
reason not to trust it (`choose`), the cycle writes the CSGD ensemble and flags why.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from nrt.degradation import Degradation, Fallback, flag
from nrt.errors import ConfigError, DataError
from nrt.grids import cell_km

log = logging.getLogger("nrt.downscale")

DIFFUSION, CSGD = "diffusion", "csgd"


@dataclass
class Models:
    """What a worker loads once and every cycle uses.

    `method` is the configured method; `diffusion` its network (None for csgd, or when it failed to load);
    `csgd` the CSGD parameters (for the csgd method, and for the fallback unless `model.fallback` is off);
    `unavailable` the fallback reason while the configured method cannot run, `error` its one-line cause.
    """

    method: str
    diffusion: Any = None
    csgd: Any = None
    csgd_sha256: str = ""
    unavailable: Fallback | None = None
    error: str = ""

    @property
    def sha256(self) -> str:
        """Identity of what the products are made with: the checkpoint's, else the CSGD parameter file's."""
        return self.diffusion.sha256 if self.diffusion is not None else self.csgd_sha256

    @property
    def diffusion_loaded(self) -> bool:
        """Whether the configured diffusion network is there to run (only it reads GEOS-FP and checks its inputs)."""
        return self.method == DIFFUSION and self.diffusion is not None

    @property
    def device(self) -> str:
        return str(self.diffusion.device) if self.diffusion is not None else "cpu"


@dataclass(frozen=True)
class DownscaleSettings:
    """What downscaling uses, taken from the `[model]` config once by `downscale_settings(cfg)`."""

    members: int
    seed: int  # each cycle's draw is seeded from it and the cycle time (`downscale`)
    sampler_steps: int  # the diffusion sampler's network evaluations per sample
    solver: str
    ood_max_z: float  # inputs further from training (in sigma) are flagged
    ood_fallback: bool  # ... and fall back to CSGD


def downscale_settings(cfg) -> DownscaleSettings:
    m = cfg.model
    return DownscaleSettings(m.members, m.seed, m.sampler_steps, m.solver, m.ood_max_z, m.ood_fallback)


def csgd_params_sha256(source: str) -> str:
    """sha256 of the CSGD parameter file `source` (`builtin:NAME` or a path), as products record it."""
    from nrt.csgd.params import BUILTIN, builtin_path

    data = builtin_path(source).read_bytes() if source in BUILTIN else Path(source).expanduser().read_bytes()
    return hashlib.sha256(data).hexdigest()


def load_models(options) -> Models:
    """Load the configured method's model, and the CSGD parameters it falls back to (`options` = `[model]`).

    A diffusion checkpoint that cannot be read (missing, malformed JSON or safetensors, altered, weights that
    do not fit) is logged and leaves `unavailable` set, so every cycle writes the CSGD ensemble instead; with
    `model.fallback` off it raises. A bad CSGD parameter file always raises: it is the last resort.
    """
    from nrt.csgd import load_params

    get_method(options.method)
    csgd = sha = None
    if options.method == CSGD or options.fallback:
        csgd = load_params(options.csgd_params)
        sha = csgd_params_sha256(options.csgd_params)
    if options.method == CSGD:
        return Models(CSGD, csgd=csgd, csgd_sha256=sha)

    from nrt.model.inference import Downscaler

    try:
        network = Downscaler.load(options.checkpoint, options.device, options)
    except DataError as exc:
        if csgd is None:
            raise
        error = " ".join(str(exc).split())
        log.error("checkpoint cannot load, cycles will write the CSGD ensemble (degraded): %s", error)
        return Models(DIFFUSION, csgd=csgd, csgd_sha256=sha, unavailable=Fallback.CHECKPOINT_UNLOADABLE, error=error)
    return Models(DIFFUSION, diffusion=network, csgd=csgd, csgd_sha256=sha or "")


def choose(models: Models, reason: Fallback | None = None) -> tuple[str, Fallback | None]:
    """(method to run, fallback reason or None). The fallback hook: `reason` is a caller's cause to distrust
    the diffusion model (say, inputs outside its training range); a model that failed to load is one too.

    Without CSGD parameters (`model.fallback` off) a caller's reason is only logged and diffusion runs.
    """
    if models.method == CSGD:
        return CSGD, None
    reason = models.unavailable or reason
    if reason is None:
        return DIFFUSION, None
    if models.csgd is None:
        log.warning("diffusion model distrusted (%s) but model.fallback is off: running it anyway", reason)
        return DIFFUSION, None
    return CSGD, reason


@dataclass(frozen=True)
class InputVerdict:
    reason: Fallback | None  # None: the inputs are fine
    max_z: float
    fallback: bool  # whether the cycle falls back to CSGD because of it


def check_inputs(models: Models, conditions: Sequence, max_z: float, fall_back_out_of_range: bool) -> InputVerdict | None:
    """The diffusion checkpoint's input guard (`nrt.model.guard`), None unless a diffusion model runs: a required
    channel missing always falls back to CSGD; inputs beyond `max_z` are flagged, and fall back when
    `fall_back_out_of_range` (`model.ood_fallback`)."""
    if not models.diffusion_loaded:
        return None
    from nrt.model.guard import check_inputs as guard

    check = guard(models.diffusion.spec, conditions, max_z)
    if check.reason is None:
        return InputVerdict(None, check.max_z, False)
    log.warning("%s (%s)", check.reason, check.detail)
    return InputVerdict(check.reason, check.max_z, check.reason == Fallback.INPUTS_MISSING or fall_back_out_of_range)


@dataclass(frozen=True)
class DownscalePlan:
    """How one cycle downscales, decided before it runs."""

    method: str
    fallback: Fallback | None  # why CSGD replaces the configured method
    check: InputVerdict | None  # the diffusion model's input check, None when it did not run
    degraded: tuple[str, ...]  # the flags this adds to the cycle's
    checkpoint_sha256: str  # identity of what the products are made with


def plan_downscale(s: DownscaleSettings, models: Models, inputs: Sequence) -> DownscalePlan:
    """The input check of the cycle's `inputs`, then the method it runs (`choose`) and the flags both raise."""
    check = check_inputs(models, inputs, s.ood_max_z, s.ood_fallback)
    degraded = [check.reason] if check and check.reason and not check.fallback else []
    method, fallback = choose(models, check.reason if check and check.fallback else None)
    if fallback:
        degraded.append(flag(Degradation.DOWNSCALE_FALLBACK, fallback))
    checkpoint = models.diffusion.sha256 if method == DIFFUSION else models.csgd_sha256
    return DownscalePlan(method, fallback, check, tuple(degraded), checkpoint)


def downscale(s: DownscaleSettings, models: Models, plan: DownscalePlan, inputs: Sequence, cycle_time: datetime,
              callback: Callable[[int], None] | None = None) -> np.ndarray:
    """The ensemble of the cycle at `cycle_time`, (member, time, lat, lon) float32 mm/h, by the planned method;
    each cycle draws from its own seed, 97 apart per half-hour."""
    half_hours = int(cycle_time.timestamp()) // 1800
    return get_method(plan.method)(list(inputs), models, s, seed=s.seed + half_hours * 97, callback=callback)


# ---------------------------------------------------------------------------------------------- methods


def diffusion(inputs: Sequence, models: Models, s: DownscaleSettings, *, seed: int,
              callback: Callable[[int], None] | None = None) -> np.ndarray:
    """Residual diffusion per valid time; valid time k gets seed + k."""
    if models.diffusion is None:
        raise ConfigError("model.checkpoint", f"the diffusion model is not loaded ({models.error or 'method is ' + models.method})")
    out = []
    for k, cond in enumerate(inputs):
        out.append(models.diffusion.sample(cond, members=s.members, seed=seed + k, steps=s.sampler_steps, solver=s.solver))
        if callback is not None:
            callback(k)
    return np.stack(out, axis=1)


def csgd(inputs: Sequence, models: Models, s: DownscaleSettings, *, seed: int,
         callback: Callable[[int], None] | None = None) -> np.ndarray:
    """The CSGD ensemble of the bilinearly upsampled coarse members, all valid times in one draw.

    The IMERG `randomError` (of the newest granule, as the diffusion model gets it) is passed as the
    covariate when present.
    """
    from nrt.csgd import csgd_ensemble
    from nrt.model.conditioning import upsample

    if models.csgd is None:
        raise ConfigError("model.csgd_params", "no CSGD parameters loaded (model.fallback is off)")
    rate = np.stack([_per_member(upsample(cond.precip), s.members) for cond in inputs], axis=1)
    errors = [cond.random_error for cond in inputs]
    random_error = None
    if all(e is not None for e in errors):
        random_error = np.stack([upsample(e) for e in errors])  # (time, lat, lon), shared by every member
    ensemble = csgd_ensemble(rate, models.csgd, members=s.members, cell_km=cell_km(inputs[0].grid), seed=seed,
                             frame_minutes=30.0, random_error=random_error)
    if callback is not None:
        for k in range(len(inputs)):
            callback(k)
    return ensemble


def _per_member(fields: np.ndarray, members: int) -> np.ndarray:
    """(given, lat, lon) -> (members, lat, lon): member i takes field i mod the number given."""
    return fields[np.arange(members) % fields.shape[0]]


METHODS: dict[str, Callable[..., np.ndarray]] = {DIFFUSION: diffusion, CSGD: csgd}


def get_method(name: str) -> Callable[..., np.ndarray]:
    """The downscaling method called `name`; ConfigError naming `model.method` for any other."""
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError("model.method", f"unknown downscaling method {name!r} (known: {', '.join(sorted(METHODS))})") from None
