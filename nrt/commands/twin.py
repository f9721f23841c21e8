"""`nrt twin generate` writes a synthetic world in the real file formats; `nrt twin serve` serves it like the real servers."""

from __future__ import annotations

import logging
import sys
from dataclasses import replace

from nrt.commands import serve_until_stopped
from nrt.errors import ConfigError
from nrt.grids import Domain
from nrt.timeline import isoformat, utc

log = logging.getLogger("nrt.twin")


def register(sub) -> None:
    parser = sub.add_parser("twin", help="synthetic twin: generate a mirror tree of every source, serve it over HTTP")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    gen = actions.add_parser("generate", help="write truth, IMERG Early, DPR, GEOS-FP and a DEM for a span")
    gen.add_argument("--start", required=True, help="first half-hour (ISO 8601, UTC)")
    gen.add_argument("--end", required=True, help="end of the span, exclusive (ISO 8601, UTC)")
    gen.add_argument("--out", required=True, metavar="DIR", help="root of the mirror tree")
    gen.add_argument("--domain", metavar="W,S,E,N", help="bounding box in degrees (default: the config's domain)")
    gen.add_argument("--seed", type=int, default=20250101, help="random seed (default: %(default)s)")
    gen.add_argument("--imerg-error-model", metavar="FILE", default="builtin:imerg-early",
                     help="IMERG error model JSON from `nrt errormodel fit` (default: %(default)s, fit to real pairs)")
    gen.add_argument("--no-progress", action="store_true", help="no progress bar")
    gen.set_defaults(handler=generate_command)

    serve = actions.add_parser("serve", help="serve a mirror tree at /pps, /gesdisc, /nccs and /dem")
    serve.add_argument("--root", required=True, metavar="DIR", help="root of the mirror tree")
    serve.add_argument("--port", type=int, default=8765, help="TCP port (default: %(default)s, as in the default config)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    serve.set_defaults(handler=serve_command)


def parse_domain(text: str) -> Domain:
    try:
        west, south, east, north = (float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError("--domain", f"expected W,S,E,N in degrees, got {text!r}") from None
    return Domain(west, south, east, north)


def _time(text: str, option: str):
    try:
        return utc(text)
    except ValueError as exc:
        raise ConfigError(option, f"not an ISO 8601 time: {exc}") from None


def generate_command(args, cfg) -> int:
    from tqdm import tqdm

    from nrt.errormodel import load_error_model
    from nrt.twin.generate import generate, work_units
    from nrt.twin.spec import spec_for_config

    domain = parse_domain(args.domain) if args.domain else cfg.domain.box()
    spec = spec_for_config(cfg, _time(args.start, "--start"), _time(args.end, "--end"), args.seed, domain)
    load_error_model(args.imerg_error_model)  # a bad file fails here, before anything is written
    spec = replace(spec, imerg=replace(spec.imerg, error_model=args.imerg_error_model))
    with tqdm(total=work_units(spec), unit="step", disable=args.no_progress, file=sys.stderr, desc="twin") as bar:
        report = generate(spec, args.out, bar.update)
    files = ", ".join(f"{n} {kind}" for kind, n in report.files.items())
    print(f"twin {isoformat(spec.start)} .. {isoformat(spec.end)} seed {spec.seed} -> {args.out}: {files} "
          f"in {report.seconds['total']:.1f} s")
    for day in report.imerg_days:
        print(f"  IMERG {day['day']}: bias {day['bias']:.3f}, correlation {day['correlation']:.3f}")
    for day in report.geosfp_days:
        print(f"  GEOS-FP {day['day']}: correlation with the truth {day['correlation']:.3f} at 0.05° (hourly), "
              f"{day['correlation_beyond_300km']:.3f} beyond 300 km (newest run, leads {day['leads_h'][0]:g}-{day['leads_h'][1]:g} h)")
    return 0


def serve_command(args, cfg) -> int:
    from pathlib import Path

    from nrt.twin import naming
    from nrt.twin.generate import load_manifest
    from nrt.twin.server import make_server

    server = make_server(args.root, args.port, args.host)
    spec = load_manifest(args.root).get("spec") if (Path(args.root) / naming.MANIFEST).is_file() else None
    if spec:
        print(f"twin {spec['start']} .. {spec['end']}, seed {spec['seed']}, domain {spec['domain']}")
    print(f"serving {args.root} at {server.base_url} (/pps: user = password = an e-mail address); Ctrl-C stops",
          flush=True)
    return serve_until_stopped(server)
