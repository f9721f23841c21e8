"""The error model's parameters and the small versioned JSON artefact that holds them.

The artefact has a `format` tag, the `parameters` that `degrade` reads, and a `provenance` block (the
data it was fit on, the seed, the real and modelled statistics) that no code path depends on.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path

from nrt.errors import DataError
from nrt.io import atomic_path, read_json_file

FORMAT = "nrt-imerg-error-model/1"
BUILTIN_PREFIX = "builtin:"
BUILTIN = {"imerg-early": "imerg_early.json"}


@dataclass(frozen=True)
class ErrorModel:
    """IMERG Early's errors against a 0.1° truth. Lengths in km, times in hours or minutes, rates in mm/h."""

    bias: float  # the last factor: mean(IMERG) / mean(truth)
    smoothing_km: float  # Gaussian FWHM in space
    smoothing_minutes: float  # Gaussian FWHM in time (IMERG morphs between microwave overpasses)
    displacement_km: float  # RMS of each component of a smooth displacement field
    displacement_scale_km: float  # e-folding distance of that field
    displacement_lifetime_h: float
    log_sigma: float  # standard deviation of ln M, M the mean-one lognormal multiplicative error
    error_length_km: float  # e-folding distance of ln M
    error_lifetime_h: float  # e-folding time of ln M (and of the miss and false-alarm fields)
    miss_fraction: float  # chance that the lightest rain is missed ...
    miss_rate_mmh: float  # ... falling off as exp(-rate / miss_rate_mmh)
    false_fraction: float  # fraction of dry cells given spurious rain
    false_mmh: float  # mean rate of that spurious rain
    occurrence_length_km: float  # e-folding distance of the miss and false-alarm fields
    dry_below_mmh: float  # the smoothed truth counts as dry below this
    random_error_floor_mmh: float  # randomError = hypot(floor, coef * rate ** exponent) where rate > 0, else floor
    random_error_coef: float
    random_error_exponent: float

    def replace(self, **changes) -> ErrorModel:
        return ErrorModel(**{**asdict(self), **changes})

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


PARAMETER_NAMES = tuple(f.name for f in fields(ErrorModel))


def _parse(data, where: str) -> ErrorModel:
    if not isinstance(data, dict):
        raise DataError(where, "not an IMERG error model (expected a JSON object)")
    if data.get("format") != FORMAT:
        raise DataError(where, f"error model format {data.get('format')!r}, this nrt reads {FORMAT!r}")
    values = data.get("parameters")
    if not isinstance(values, dict):
        raise DataError(where, "no 'parameters' object")
    missing = [n for n in PARAMETER_NAMES if n not in values]
    unknown = sorted(set(values) - set(PARAMETER_NAMES))
    if missing or unknown:
        raise DataError(where, f"parameters missing {missing} / unknown {unknown}")
    bad = [n for n in PARAMETER_NAMES
           if isinstance(values[n], bool) or not isinstance(values[n], (int, float)) or not math.isfinite(values[n])
           or values[n] < 0]
    if bad:
        raise DataError(where, f"parameters {bad} must be finite numbers >= 0")
    if values["miss_fraction"] > 1 or values["false_fraction"] >= 1:
        raise DataError(where, "miss_fraction must lie in [0, 1] and false_fraction in [0, 1)")
    return ErrorModel(**{n: float(values[n]) for n in PARAMETER_NAMES})


def load_error_model(source: str | os.PathLike = "builtin:imerg-early") -> ErrorModel:
    """The parameters in `source`: "builtin:<name>" (shipped in the package) or a JSON file's path.

    A missing, malformed or other-version file raises DataError naming it and the reason.
    """
    text = str(source)
    if text.startswith(BUILTIN_PREFIX):
        name = text[len(BUILTIN_PREFIX):]
        if name not in BUILTIN:
            raise DataError(text, f"no built-in error model of that name (known: {', '.join(sorted(BUILTIN))})")
        path = resources.files("nrt.errormodel") / BUILTIN[name]
    else:
        path = Path(source)
    data = read_json_file(path, "error model file", str(source))
    return _parse(data, str(source))


def save_error_model(path: str | os.PathLike, model: ErrorModel, provenance: dict) -> Path:
    """Write the artefact atomically, and read it back so a file that would not load is never left behind."""
    document = {"format": FORMAT, "parameters": model.as_dict(), "provenance": provenance}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(document, indent=2) + "\n")
        _parse(json.loads(tmp.read_text()), str(path))
    return Path(path)
