"""Benchmark the downscaling model (a benchmark, not a test): seconds per 30-member sample.

Cases:
- `demo`: the demo domain (default config, Iowa, 66 x 132 cells at 0.05°) with the demo network sizes
  (config/train-demo.toml), a full 30-member, 18-step Heun sample plus the regression mean.
- `production`: the production network (128 channels, mult [1,2,2,2,2], 4 blocks, ~80M parameters) on a
  CONUS-sized domain (520 x 1160). Where the full sample is too slow (CPU), `--tiles N` times N patches of one
  network call and scales by the number of calls a 30-member sample makes; FLOPs are counted for one patch.
  With `--variants` it measures bf16, channels_last and torch.compile, each on and off (they only act on GPU,
  except channels_last and compile which also run on CPU).

Weights are freshly initialised (timing does not depend on them) unless `--checkpoint` names one.

    OMP_NUM_THREADS=2 nice -n 10 python scripts/bench_model.py --case demo
    OMP_NUM_THREADS=2 nice -n 10 python scripts/bench_model.py --case production --tiles 4
    python scripts/bench_model.py --case production --device cuda --variants        # on a GPU host
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nrt import config  # noqa: E402
from nrt.grids import LatLonGrid, target_grid  # noqa: E402
from nrt.model.conditioning import ChannelSet, Conditioning  # noqa: E402
from nrt.model.inference import Downscaler, pick_device  # noqa: E402
from nrt.model.networks import NetworkSpec, parameter_count  # noqa: E402
from nrt.model.normalize import ChannelStats  # noqa: E402
from nrt.model.patching import PatchGrid  # noqa: E402
from nrt.model.spec import ModelSpec  # noqa: E402
from nrt.model.transforms import PrecipTransform  # noqa: E402

CONUS_SHAPE = (520, 1160)
PRODUCTION = {"model_channels": 128, "channel_mult": (1, 2, 2, 2, 2), "num_blocks": 4}


def random_downscaler(cfg, sizes: dict, device, **options) -> Downscaler:
    channels = ChannelSet(
        geosfp_variables=tuple(cfg.sources.geosfp.slv_variables + cfg.sources.geosfp.flx_variables),
        random_error=True, dem=True, position=True,
    )
    n = len(channels.names())
    spec = ModelSpec(
        channels=channels,
        transform=PrecipTransform(),
        input_stats=ChannelStats(tuple(channels.names()), np.zeros(n), np.ones(n)),
        target_stats=ChannelStats(("precip",), np.zeros(1), np.ones(1)),
        regression=NetworkSpec(in_channels=n, **sizes),
        diffusion=NetworkSpec(in_channels=n + 2, **sizes),
    )
    regression, diffusion = spec.build()
    tensors = {f"regression.{k}": v for k, v in regression.state_dict().items()}
    tensors.update({f"diffusion.{k}": v for k, v in diffusion.state_dict().items()})
    return Downscaler(spec, tensors, meta={}, sha256="random", name="random", device=device, **options)


def conditioning(grid: LatLonGrid, seed: int = 0) -> Conditioning:
    rng = np.random.default_rng(seed)
    coarse = np.clip(rng.gamma(0.4, 3.0, size=(1, grid.nlat // 2, grid.nlon // 2)) - 0.3, 0, None).astype(np.float32)
    return Conditioning(coarse, grid, lead=2, random_error=coarse[0] * 0.5)


def patch_flops(ds: Downscaler, tile: tuple[int, int]) -> float:
    """FLOPs of one diffusion-network call on one tile."""
    from torch.utils.flop_counter import FlopCounterMode

    n = ds.spec.diffusion.in_channels
    x = torch.zeros(1, 1, *tile, device=ds.device)
    cond = torch.zeros(1, n - 1, *tile, device=ds.device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        ds.diffusion(x, torch.ones(1, device=ds.device), cond, torch.zeros(1, dtype=torch.long, device=ds.device))
    return float(counter.get_total_flops())


def cpu_usage() -> tuple[float, float, int]:
    """(user s, system s, minor page faults) of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime, usage.ru_minflt


def usage_since(start: tuple[float, float, int]) -> dict:
    user, system, faults = (now - then for now, then in zip(cpu_usage(), start))
    return {"user_s": round(user, 2), "system_s": round(system, 2), "system_share": round(system / max(user + system, 1e-9), 3),
            "minor_faults": int(faults), "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_demo(cfg, args, device) -> dict:
    demo = config.load(REPO / "config" / "train-demo.toml").train.diffusion
    sizes = {"model_channels": demo.model_channels, "channel_mult": tuple(demo.channel_mult), "num_blocks": demo.num_blocks}
    options = dict(patch_size=cfg.model.patch_size, patch_overlap=cfg.model.patch_overlap, max_batch=cfg.model.max_batch)
    ds = Downscaler.load(args.checkpoint, device, cfg.model) if args.checkpoint else random_downscaler(cfg, sizes, device, **options)
    grid = target_grid(cfg.domain.box())
    cond = conditioning(grid)
    ds.sample(cond, members=2, seed=0, steps=2)  # warm-up
    sync(device)
    usage, t0 = cpu_usage(), time.perf_counter()
    out = ds.sample(cond, members=args.members, seed=1, steps=args.steps, solver=args.solver)
    sync(device)
    seconds = time.perf_counter() - t0
    usage = usage_since(usage)
    tiles = PatchGrid(*grid.shape, ds.patch_size, ds.patch_overlap, ds.tile_multiple)
    patches = f"{len(tiles)} of {tiles.tile[0]}x{tiles.tile[1]}"
    return {
        "case": "demo", "grid": list(grid.shape), "members": args.members, "steps": args.steps, "solver": args.solver,
        "patches": patches, "parameters_per_network": parameter_count(ds.diffusion),
        "seconds_per_sample": round(seconds, 2), **usage, "output_shape": list(out.shape),
        "gflop_per_patch_call": round(patch_flops(ds, tiles.tile) / 1e9, 3),
    }


def bench_production(cfg, args, device) -> list[dict]:
    grid = LatLonGrid(0.05, 24.025, -124.975, *CONUS_SHAPE)
    evals = 2 * args.steps - 1 if args.solver == "heun" else args.steps
    variants = list(itertools.product([False, True], repeat=3)) if args.variants else [(device.type == "cuda", False, False)]
    results = []
    for bf16, channels_last, compiled in variants:
        ds = random_downscaler(cfg, PRODUCTION, device, patch_size=64, patch_overlap=8, max_batch=args.max_batch,
                               bf16=bf16, channels_last=channels_last, compile=compiled)
        layout = PatchGrid(*CONUS_SHAPE, 64, 8, ds.tile_multiple)
        patches = len(layout)
        row = {"case": "production", "grid": list(CONUS_SHAPE), "members": args.members, "steps": args.steps,
               "solver": args.solver, "bf16": bf16 and device.type == "cuda", "channels_last": channels_last,
               "compile": compiled, "patches": patches, "parameters_per_network": parameter_count(ds.diffusion),
               "tile": list(layout.tile), "gflop_per_patch_call": round(patch_flops(ds, layout.tile) / 1e9, 2)}
        if args.tiles:
            n = ds.spec.diffusion.in_channels
            x = torch.randn(args.tiles, 1, *layout.tile, device=device)
            cond = torch.randn(args.tiles, n - 1, *layout.tile, device=device)
            sig = torch.full((args.tiles,), 1.0, device=device)
            lead = torch.zeros(args.tiles, dtype=torch.long, device=device)
            with torch.no_grad():
                ds.run_batched(ds.diffusion_call, x, sig, cond, lead)  # warm-up (and compilation)
                sync(device)
                t0 = time.perf_counter()
                ds.run_batched(ds.diffusion_call, x, sig, cond, lead)
                sync(device)
            per_tile = (time.perf_counter() - t0) / args.tiles
            calls = patches * args.members * evals
            row.update({"timed_tiles": args.tiles, "seconds_per_tile": round(per_tile, 4),
                        "estimated_seconds_per_sample": round(per_tile * calls, 1), "tile_calls_per_sample": calls})
        else:
            cond = conditioning(grid)
            ds.sample(cond, members=2, seed=0, steps=2)
            sync(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            ds.sample(cond, members=args.members, seed=1, steps=args.steps, solver=args.solver)
            sync(device)
            row["seconds_per_sample"] = round(time.perf_counter() - t0, 2)
            if device.type == "cuda":
                row["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        results.append(row)
        print(json.dumps(row), flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=["demo", "production"], default="demo")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--members", type=int, default=30)
    parser.add_argument("--steps", type=int, default=18)
    parser.add_argument("--solver", choices=["heun", "euler"], default="heun")
    parser.add_argument("--tiles", type=int, default=0, help="production: time this many patches and extrapolate")
    parser.add_argument("--max-batch", type=int, default=256)
    parser.add_argument("--variants", action="store_true", help="production: bf16 x channels_last x compile on/off")
    parser.add_argument("--checkpoint", help="demo: time this checkpoint instead of random weights")
    args = parser.parse_args()
    device = pick_device(args.device)
    cfg = config.load(None)
    info = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "device": str(device),
            "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None}
    print(json.dumps(info), flush=True)
    if args.case == "demo":
        print(json.dumps(bench_demo(cfg, args, device)), flush=True)
    else:
        bench_production(cfg, args, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
