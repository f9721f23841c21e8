"""`nrt demo`: run the whole system offline on the synthetic twin (no credentials, SQLite, CPU or GPU)."""

from __future__ import annotations

import sys
from pathlib import Path


def register(sub) -> None:
    parser = sub.add_parser(
        "demo",
        help="generate a synthetic twin, serve it on localhost and run the real scheduler and worker for N cycles",
    )
    parser.add_argument("--cycles", type=int, default=3, help="number of 30-minute cycles (default: %(default)s)")
    parser.add_argument("--workdir", type=Path, default=Path("nrt-demo"), help="work directory (default: ./%(default)s)")
    parser.add_argument("--seed", type=int, default=20250101, help="twin random seed (default: %(default)s)")
    parser.add_argument(
        "--steps", type=int,
        help="diffusion sampler steps (default: model.sampler_steps, the calibrated few-step sampler of docs/model.md)",
    )
    parser.add_argument(
        "--solver", choices=["euler", "heun", "dpm2m"],
        help="diffusion sampler (default: model.solver; Heun costs two network calls per step, the others one)",
    )
    parser.add_argument(
        "--method", choices=["diffusion", "csgd"], default=None,
        help="downscaling method (default: the config's model.method); csgd is the statistical CSGD ensemble, no network needed",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(handler=demo)


def demo(args, cfg) -> int:
    from nrt.service.demo import describe, run_demo
    from nrt.service.worker import hard_exit

    if args.steps is not None and args.steps < 1:
        from nrt.errors import ConfigError

        raise ConfigError("--steps", f"must be at least 1 (got {args.steps})")
    cfg.model.sampler_steps = args.steps or cfg.model.sampler_steps
    cfg.model.solver = args.solver or cfg.model.solver
    if args.method is not None:
        cfg.model.method = args.method
    try:
        result = run_demo(cfg, args.workdir, cycles=args.cycles, seed=args.seed, progress=not args.no_progress)
    except KeyboardInterrupt:
        # The mirror is stopped already, but a cycle may still run in the worker's thread, inside torch, where
        # interpreter teardown aborts (SIGABRT): leave at once, as `nrt worker` does after releasing a job.
        print("nrt: interrupted", file=sys.stderr)
        hard_exit(130)
    print(describe(result))
    failed = result.catalog_counts.get("jobs", {}).get("failed", 0)
    return 1 if failed else 0
