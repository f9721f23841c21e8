"""`nrt csgd fit --imerg F --truth F --out F [--hours ...]`: refit the CSGD statistical ensemble on IMERG/truth pairs."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

log = logging.getLogger("nrt.commands.csgd")


def hour_list(text: str) -> list[int]:
    """'5' -> [5]; '0-11' -> [0..11] (UTC hours of day)."""
    import argparse

    try:
        first, _, last = text.partition("-")
        hours = list(range(int(first), int(last or first) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an hour (0-23) or a range like 0-11") from None
    if not hours or hours[0] < 0 or hours[-1] > 23:
        raise argparse.ArgumentTypeError(f"{text!r}: hours run from 0 to 23")
    return hours


def register(sub) -> None:
    parser = sub.add_parser(
        "csgd",
        help="the CSGD statistical ensemble (censored shifted gamma of truth given IMERG): fit or check its parameters",
        description="Commands of the CSGD statistical ensemble, nrt's baseline and fallback method.",
    )
    csgd_sub = parser.add_subparsers(dest="csgd_command", metavar="ACTION", required=True)
    fit = csgd_sub.add_parser(
        "fit",
        help="fit CSGD parameters on coincident IMERG and truth netCDF files; write the JSON parameter file",
        description="Fit the censored shifted gamma distribution of truth given the IMERG rate (climatology, then "
        "the Scheuerer & Hamill 2015 regression, by minimum mean CRPS) and the noise's correlation length and "
        "decorrelation time from the errors, on netCDF files with `prcp`(time, lat, lon) in mm/h on one grid "
        "(e.g. ../shared/data/imerg-stageiv/20170801). Writes the parameters atomically and prints one JSON "
        "line. Point the CSGD method's parameter setting in the config at the file to use it instead of "
        "builtin:csgd.",
    )
    fit.add_argument("--imerg", required=True, metavar="FILE.nc", help="IMERG rates, variable prcp (mm/h)")
    fit.add_argument("--truth", required=True, metavar="FILE.nc", help="truth on the same grid and times, variable prcp (mm/h)")
    fit.add_argument("--out", required=True, metavar="FILE.json", help="parameter file to write")
    fit.add_argument("--hours", nargs="+", type=hour_list, metavar="H",
                     help="UTC hours to fit on, e.g. 0-11 or 0 1 2 (default: every hour in the files)")
    fit.set_defaults(handler=run_fit)
    show = csgd_sub.add_parser(
        "show",
        help="check a CSGD parameter file and print its parameters, provenance and what they mean at a few rates",
        description="Load a CSGD parameter file (exit 2 with one line if it is missing, malformed or of another "
        "version) and print one JSON object: parameters, noise scales, fit provenance, and for IMERG rates of "
        "0, 0.5, 2 and 10 mm/h the probability of rain and the mean and 5-95 % range of the truth.",
    )
    show.add_argument("params", nargs="?", default="builtin:csgd", help="builtin:csgd (default) or a JSON path")
    show.set_defaults(handler=run_show)


def run_fit(args, cfg) -> int:
    from nrt import __version__
    from nrt.csgd.fit import fit_csgd
    from nrt.csgd.pairs import read_pairs
    from nrt.csgd.params import save_params
    from nrt.io import sha256_file

    hours = sorted({h for group in args.hours for h in group}) if args.hours else None
    pairs = read_pairs(args.imerg, args.truth, hours)
    log.info("fitting the CSGD on %d frames of %s x %s cells (takes about a minute)", *pairs.rate.shape)
    provenance = {
        "imerg": {"path": pairs.files[0], "sha256": sha256_file(pairs.files[0])},
        "truth": {"path": pairs.files[1], "sha256": sha256_file(pairs.files[1])},
        "times": [str(t)[:16] for t in pairs.times],
        "hours_utc": sorted({int(str(t)[11:13]) for t in pairs.times}),
        "cell_km": [round(v, 3) for v in pairs.cell_km],
        "step_minutes": pairs.step_minutes,
        "fitted": f"{datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%SZ}",
        "nrt_version": __version__,
    }
    params = fit_csgd(pairs.rate, pairs.truth, cell_km=pairs.cell_km, step_minutes=pairs.step_minutes, times=pairs.times,
                      where=f"{args.imerg} / {args.truth}", provenance=provenance)
    save_params(params, args.out)
    fit = params.provenance["fit"]
    print(json.dumps({
        "out": str(args.out),
        "frames": len(pairs.times),
        "mean_crps_mm_h": fit["mean_crps_mm_h"],
        "imerg_mae_mm_h": fit["imerg_mae_mm_h"],
        "correlation_length_km": params.noise.correlation_length_km,
        "decorrelation_minutes": params.noise.decorrelation_minutes,
    }))
    return 0


def run_show(args, cfg) -> int:
    from dataclasses import asdict

    import numpy as np

    from nrt.csgd import distribution, load_params

    params = load_params(args.params)
    rates = np.array([0.0, 0.5, 2.0, 10.0])
    mu, sigma, delta = params.distribution(rates)
    at_rates = {
        f"{r:g}": {
            "p_rain": round(float(1 - distribution.probability_of_zero(m, s, d)), 4),
            "mean": round(float(distribution.mean(m, s, d)), 4),
            "q05_q95": [round(float(distribution.quantile(q, m, s, d)), 4) for q in (0.05, 0.95)],
        }
        for r, m, s, d in zip(rates, mu, sigma, delta)
    }
    fit = params.provenance.get("fit", {})
    print(json.dumps({
        "source": params.source,
        "climatology": asdict(params.climatology),
        "regression": asdict(params.regression),
        "noise": asdict(params.noise),
        "fit": {key: params.provenance.get(key) for key in ("hours_utc", "fitted", "nrt_version")}
        | {key: fit.get(key) for key in ("cells", "mean_crps_mm_h", "imerg_mae_mm_h")},
        "truth_given_imerg_mm_h": at_rates,
    }, indent=2))
    return 0
