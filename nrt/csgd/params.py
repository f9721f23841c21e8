"""The CSGD parameter file: small versioned JSON, written atomically, read with a one-line error on any fault.

    {"format": "nrt-csgd", "version": 1,
     "climatology": {"mu", "sigma", "delta"},
     "regression": {"a1", "a2", "a3", "a4", "rate_mean", "covariate", "a5", "covariate_mean"},
     "noise": {"correlation_length_km", "decorrelation_minutes"},
     "provenance": {...}}

`load_params("builtin:csgd")` reads the file shipped in the package (fit on the real IMERG Early / Stage IV
pairs, see docs/verification.md); any other string is a path.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from importlib import resources
from pathlib import Path

from nrt.csgd.regression import Climatology, CsgdParams, NoiseSettings, Regression
from nrt.errors import DataError
from nrt.io import atomic_path, read_json_file

FORMAT, VERSION = "nrt-csgd", 1
BUILTIN = {"builtin:csgd": "imerg_early_stageiv.json"}
COVARIATES = (None, "random_error")
# Every number must be finite; these must also be positive (delta is a shift <= 0).
POSITIVE = {"climatology": ("mu", "sigma"), "regression": ("a1", "a2", "a4", "rate_mean", "covariate_mean"),
            "noise": ("correlation_length_km", "decorrelation_minutes")}
NON_NEGATIVE = {"regression": ("a3", "a5")}


def builtin_path(name: str):
    return resources.files("nrt.csgd").joinpath("params", BUILTIN[name])


def load_params(source: str | Path = "builtin:csgd") -> CsgdParams:
    """Read CSGD parameters from `builtin:csgd` or a JSON path; DataError (an NrtError) names the file and the fault."""
    source = str(source)
    if source.startswith("builtin:"):
        if source not in BUILTIN:
            raise DataError(source, f"no such built-in CSGD parameter set (known: {', '.join(sorted(BUILTIN))})")
        where, path = source, builtin_path(source)
    else:
        where = path = str(Path(source))
    doc = read_json_file(path, "CSGD parameter file", where)
    return params_from_dict(doc, where)


def params_from_dict(doc, where: str = "<dict>") -> CsgdParams:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise DataError(where, f"not a CSGD parameter file (format is not {FORMAT!r})")
    if doc.get("version") != VERSION:
        raise DataError(where, f"CSGD parameter file version {doc.get('version')!r}; this nrt reads version {VERSION}")
    try:
        sections = {name: dict(doc[name]) for name in ("climatology", "regression", "noise")}
        covariate = sections["regression"].get("covariate")
        if covariate not in COVARIATES:
            raise ValueError(f"regression.covariate {covariate!r} is not one of {COVARIATES}")
        for section, values in sections.items():
            for key, value in values.items():
                if key != "covariate" and not (isinstance(value, (int, float)) and math.isfinite(value)):
                    raise ValueError(f"{section}.{key} = {value!r} is not a finite number")
        for section, keys in POSITIVE.items():
            for key in keys:
                if sections[section].get(key, 1.0) <= 0:
                    raise ValueError(f"{section}.{key} must be positive")
        for section, keys in NON_NEGATIVE.items():
            for key in keys:
                if sections[section].get(key, 0.0) < 0:
                    raise ValueError(f"{section}.{key} must not be negative")
        if sections["climatology"]["delta"] > 0:
            raise ValueError("climatology.delta (the shift) must not be positive")
        return CsgdParams(
            Climatology(**sections["climatology"]),
            Regression(**sections["regression"]),
            NoiseSettings(**sections["noise"]),
            provenance=dict(doc.get("provenance", {})),
            source=where,
        )
    except KeyError as exc:
        raise DataError(where, f"CSGD parameter file lacks {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise DataError(where, f"malformed CSGD parameters: {exc}") from None


def params_to_dict(params: CsgdParams) -> dict:
    return {
        "format": FORMAT,
        "version": VERSION,
        "climatology": asdict(params.climatology),
        "regression": asdict(params.regression),
        "noise": asdict(params.noise),
        "provenance": params.provenance,
    }


def save_params(params: CsgdParams, path: str | Path) -> Path:
    """Write atomically, then read back through `load_params` so a file that would not load is never left behind."""
    path = Path(path)
    text = json.dumps(params_to_dict(params), indent=2) + "\n"
    params_from_dict(json.loads(text), str(path))
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path
