"""`nrt errormodel fit` fits the IMERG error model to real pairs; `nrt errormodel compare` checks a model on them."""

from __future__ import annotations

import json
import logging

log = logging.getLogger("nrt.errormodel")

PAIRS = "../shared/data/imerg-stageiv/20170801"


def _pair_arguments(parser) -> None:
    parser.add_argument("--imerg", required=True, metavar="FILE",
                        help=f"IMERG Early netCDF, (time, lat, lon) at 0.1° (e.g. {PAIRS}/IMERGE.hourly.d1.nc)")
    parser.add_argument("--truth", required=True, metavar="FILE",
                        help=f"coincident truth on the same grid (e.g. {PAIRS}/StageIV_0.1deg.hourly.d1.nc)")
    parser.add_argument("--variable", default="prcp", help="rate variable in mm/h in both files (default: %(default)s)")
    parser.add_argument("--frame-minutes", type=float, default=60.0, help="time step of the files (default: %(default)s)")


def _seeds(text: str) -> tuple[int, ...]:
    import argparse

    try:
        return tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def register(sub) -> None:
    parser = sub.add_parser("errormodel", help="IMERG error model: fit it to real IMERG / truth pairs, compare")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    fit = actions.add_parser("fit", help="fit the error model (simulated moments, Nelder-Mead) and write its JSON")
    _pair_arguments(fit)
    fit.add_argument("--out", required=True, metavar="FILE", help="error model JSON to write")
    fit.add_argument("--seeds", type=_seeds, help="random seeds of the simulation, comma-separated (default: the fit's)")
    fit.add_argument("--max-evaluations", type=int, default=150,
                     help="evaluations at most, each one model run per seed (default: %(default)s)")
    fit.add_argument("--figure", metavar="PNG", help="also plot real against modelled statistics")
    fit.set_defaults(handler=fit_command)

    compare = actions.add_parser("compare", help="print real against modelled statistics as Markdown tables")
    _pair_arguments(compare)
    compare.add_argument("--model", default="builtin:imerg-early", help="error model JSON (default: %(default)s)")
    compare.add_argument("--seeds", type=_seeds, help="random seeds of the simulation, comma-separated (default: the fit's)")
    compare.add_argument("--figure", metavar="PNG", help="also plot real against modelled statistics")
    compare.add_argument("--json", metavar="FILE", help="also write both sets of statistics as JSON")
    compare.set_defaults(handler=compare_command)


def _summary(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if k != "error_correlogram"}


def fit_command(args, cfg) -> int:
    from pathlib import Path

    from nrt import __version__
    from nrt.errormodel.figure import plot_comparison
    from nrt.errormodel.fit import FIT_SEEDS, fit_error_model
    from nrt.errormodel.pairs import read_pair
    from nrt.errormodel.params import save_error_model
    from nrt.errormodel.statistics import comparison_table

    pair = read_pair(args.imerg, args.truth, args.variable)
    seeds = args.seeds or FIT_SEEDS
    print(f"fitting to {pair.truth.shape[0]} frames of {pair.truth.shape[1]} x {pair.truth.shape[2]} cells "
          f"(at most {args.max_evaluations} evaluations x {len(seeds)} seeds)...", flush=True)
    result = fit_error_model(pair.estimate, pair.truth, pair.latitude, frame_minutes=args.frame_minutes, seeds=seeds,
                             max_evaluations=args.max_evaluations, names=(args.imerg, args.truth))
    provenance = {
        "fit_to": {"estimate": Path(args.imerg).name, "truth": Path(args.truth).name, "variable": args.variable},
        "method": "simulated moments, Nelder-Mead", "seeds": list(seeds), "frame_minutes": args.frame_minutes,
        "evaluations": result.evaluations, "mismatch": round(result.mismatch, 3), "nrt_version": __version__,
        "real": _summary(result.real), "modelled_mean_over_seeds": _summary(result.modelled),
    }
    save_error_model(args.out, result.model, provenance)
    print(comparison_table(result.real, result.modelled))
    if args.figure:
        plot_comparison(result.real, result.modelled, result.model, args.figure)
    print(f"wrote {args.out} after {result.evaluations} evaluations (mismatch {result.mismatch:.2f})")
    return 0


def compare_command(args, cfg) -> int:
    from nrt.errormodel.figure import plot_comparison
    from nrt.errormodel.fit import FIT_SEEDS
    from nrt.errormodel.pairs import read_pair
    from nrt.errormodel.params import load_error_model
    from nrt.errormodel.statistics import comparison_table, modelled_statistics, pair_statistics
    from nrt.io import atomic_path

    model = load_error_model(args.model)
    pair = read_pair(args.imerg, args.truth, args.variable)
    real = pair_statistics(pair.estimate, pair.truth, pair.latitude)
    modelled = modelled_statistics(model, pair.truth, pair.latitude, args.seeds or FIT_SEEDS, args.frame_minutes)
    print(comparison_table(real, modelled))
    if args.figure:
        plot_comparison(real, modelled, model, args.figure)
    if args.json:
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps({"real": real, "modelled": modelled}, indent=2) + "\n")
    return 0
