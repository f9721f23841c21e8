"""`nrt demo`: run the whole system offline on the synthetic twin (no credentials, SQLite, CPU or GPU)."""

from __future__ import annotations

import sys
from pathlib import Path

# A 30-member, 9-valid-time cycle of the demo checkpoint costs about 2 s per network call on 2 CPU cores
# (docs/model.md): Euler with 4 steps keeps 3 cycles within a few minutes. A GPU affords the full sampler.
DEMO_STEPS, DEMO_SOLVER = 4, "euler"


def register(sub) -> None:
    parser = sub.add_parser(
        "demo",
        help="generate a synthetic twin, serve it on localhost and run the real scheduler and worker for N cycles",
    )
    parser.add_argument("--cycles", type=int, default=3, help="number of 30-minute cycles (default: %(default)s)")
    parser.add_argument("--workdir", type=Path, default=Path("nrt-demo"), help="work directory (default: ./%(default)s)")
    parser.add_argument("--seed", type=int, default=20250101, help="twin random seed (default: %(default)s)")
    parser.add_argument(
        "--steps", type=int, default=DEMO_STEPS,
        help="diffusion sampler steps (default: %(default)s, for a few minutes on 2 CPU cores; production uses model.sampler_steps)",
    )
    parser.add_argument(
        "--solver", choices=["euler", "heun"], default=DEMO_SOLVER,
        help="diffusion sampler (default: %(default)s; Heun costs two network calls per step)",
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

    if args.steps < 1:
        from nrt.errors import ConfigError

        raise ConfigError("--steps", f"must be at least 1 (got {args.steps})")
    cfg.model.sampler_steps, cfg.model.solver = args.steps, args.solver
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
