"""`nrt train`: build (or reuse) the training set, then train the regression and diffusion models.

Resumes from `<run_dir>/state.safetensors` after an interruption. For several GPUs or nodes, launch it with
torchrun, e.g. `torchrun --nproc-per-node 4 -m nrt.cli --config FILE train` (build the training set first).
"""

from __future__ import annotations

import os
from pathlib import Path

from nrt.errors import ConfigError


def register(sub) -> None:
    parser = sub.add_parser("train", help="train the regression + diffusion downscaling models ([train] section)")
    parser.add_argument("--dataset", type=Path, help="training set file (default: train.dataset or <workdir>/train/dataset.safetensors)")
    parser.add_argument("--output", type=Path, help="checkpoint to write, .safetensors + .json (default: train.output)")
    parser.add_argument("--run-dir", type=Path, help="directory of the resumable training state (default: train.run_dir)")
    parser.add_argument("--start", help="build the training set from collocated granules from this UTC time (ISO)")
    parser.add_argument("--end", help="... up to this UTC time (ISO)")
    parser.add_argument("--register-tree", type=Path, metavar="DIR",
                        help="first validate and catalog the granule files under DIR (a bulk download or a twin tree)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the training set even if the file exists")
    parser.add_argument("--build-only", action="store_true", help="build the training set and stop")
    parser.add_argument("--fresh", action="store_true", help="ignore a saved training state and start over")
    parser.add_argument("--regression-steps", type=int, help="override train.regression_steps")
    parser.add_argument("--diffusion-steps", type=int, help="override train.diffusion_steps")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (losses are still logged)")
    parser.set_defaults(handler=run_train)


def paths(cfg, args) -> tuple[Path, Path, Path]:
    base = cfg.workdir / "train"
    dataset = args.dataset or cfg.train.dataset or base / "dataset.safetensors"
    output = args.output or cfg.train.output or base / "model.safetensors"
    run_dir = args.run_dir or cfg.train.run_dir or base / "run"
    return Path(dataset).expanduser(), Path(output).expanduser(), Path(run_dir).expanduser()


def build_realrain(cfg, args, dataset: Path) -> None:
    """Real-rain examples (prepared events cached under train.realrain_cache), plus twin examples from the tree
    given by --register-tree when train.twin_fraction > 0."""
    from nrt.model.realset import build_mixed

    def tell(message: str) -> None:
        if not args.no_progress:
            print(message, flush=True)

    if cfg.train.twin_fraction > 0:
        from nrt.store import Catalog
        from nrt.model import dataset as dataset_mod

        if not args.register_tree:
            raise ConfigError("train.twin_fraction", f"{cfg.train.twin_fraction} needs a twin tree: give --register-tree DIR")
        with Catalog.from_config(cfg, migrate=True) as catalog:
            dataset_mod.register_tree(cfg, catalog, args.register_tree)
            build_mixed(cfg, dataset, catalog, Path(args.register_tree) / "truth", progress=tell)
    else:
        build_mixed(cfg, dataset, progress=tell)


def run_train(args, cfg) -> int:
    from nrt.model import dataset as dataset_mod
    from nrt.model.train import train

    if args.regression_steps is not None:
        cfg.train.regression_steps = args.regression_steps
    if args.diffusion_steps is not None:
        cfg.train.diffusion_steps = args.diffusion_steps
    dataset, output, run_dir = paths(cfg, args)
    if (args.rebuild or not dataset.is_file()) and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(str(dataset), "no training set; build it first with a single process (nrt train --build-only)")
    if (args.rebuild or not dataset.is_file()) and cfg.train.build_from == "realrain":
        build_realrain(cfg, args, dataset)
    elif args.rebuild or not dataset.is_file():
        start, end = args.start or cfg.train.start, args.end or cfg.train.end
        if not start or not end:
            raise ConfigError("train.start", f"no training set at {dataset}; give --start/--end (or train.start/train.end) to build one")
        from nrt.store import Catalog
        from nrt.timeline import utc

        try:
            start, end = utc(start), utc(end)
        except ValueError as exc:
            raise ConfigError("--start/--end", str(exc)) from None
        with Catalog.from_config(cfg, migrate=True) as catalog:
            if args.register_tree:
                dataset_mod.register_tree(cfg, catalog, args.register_tree)
            dataset_mod.build_from_catalog(cfg, catalog, start, end, dataset)
    if args.build_only:
        return 0
    result = train(cfg, dataset, output, run_dir, resume=not args.fresh, progress=not args.no_progress)
    if result.output is not None:
        print(f"{result.output} sha256={result.sha256}")
    return 0
