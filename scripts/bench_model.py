"""Benchmark the downscaling model (a benchmark, not a test): seconds per 30-member sample.

Cases:
- `demo`: the demo domain (default config, Iowa, 66 x 132 cells at 0.05°) with the demo network sizes
  (config/train-demo.toml), a full 30-member, 18-step Heun sample plus the regression mean.
- `production`: the production network (128 channels, mult [1,2,2,2,2], 4 blocks, ~80M parameters) on a
  CONUS-sized domain (520 x 1160). Where the full sample is too slow (CPU), `--tiles N` times N patches of one
  network call and scales by the number of calls a 30-member sample makes; FLOPs are counted for one patch.
  With `--variants` it measures bf16, channels_last and torch.compile, each on and off (they only act on GPU,
  except channels_last and compile which also run on CPU).

`--efficiency` (demo case) measures the machine against itself in one run: the peak of a large fp32 matmul
(and bf16 where the CPU has avx512_bf16/amx_bf16), a 3 x 3 convolution at each of the network's channel counts
on the sampler's batch (the fastest is the "conv peak"), the diffusion network's own convolutions timed alone on
one call's activations (all of them: their summed rate), the sample's FLOPs (FlopCounterMode), and the achieved
GFLOP/s with its ratio to each; `--bf16` adds the same sample with `model.bf16` on (bf16 autocast, the default
where the CPU has avx512_bf16/amx_bf16) against the bf16 peaks too, with its largest difference from fp32.

`--scaling` (demo networks) times one sample against the grid (66 x 132, 132 x 264, 264 x 528 at
`--scaling-members`) and against the members (10, 30, 60 on 66 x 132). Each case runs in a fresh subprocess
(its own peak RSS) with a fixed thread count (`--threads`): a cold sample (first use of that shape: the
workspace and the network's activations are allocated), then `--repeat` warm ones, the fastest of which is
reported, with the process CPU time of its parts (prepare = the condition tensor, tile extraction, the
diffusion and regression networks, blending, and the rest: the sampler update and the output) and the load.
Ratios are against the first case of each sweep: time against cells x members, and against the cells the
network actually sees (tiles x tile cells x members, overlap included).

Weights are freshly initialised (timing does not depend on them) unless `--checkpoint` names one.

    OMP_NUM_THREADS=2 nice -n 10 python scripts/bench_model.py --case demo
    OMP_NUM_THREADS=2 python scripts/bench_model.py --checkpoint builtin:demo --steps 4 --solver dpm2m --efficiency --bf16 --channels-last
    OMP_NUM_THREADS=2 nice -n 10 python scripts/bench_model.py --case production --tiles 4
    python scripts/bench_model.py --case production --device cuda --variants        # on a GPU host
    nice -n 5 python scripts/bench_model.py --scaling --threads 1 --steps 2 --solver euler --repeat 3
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

import efficiency

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
SCALING_GRIDS = ((66, 132), (132, 264), (264, 528))
SCALING_MEMBERS = (10, 30, 60)
PARTS = ("prepare", "extract", "diffusion", "regression", "blend")
PRODUCTION = {"model_channels": 128, "channel_mult": (1, 2, 2, 2, 2), "num_blocks": 4}


def random_downscaler(cfg, sizes: dict, device, **options) -> Downscaler:
    channels = ChannelSet(
        geosfp_variables=tuple(cfg.sources.geosfp.slv_variables + cfg.sources.geosfp.flx_variables),
        random_error=True, dem=True, position=False, masks=True,  # as the shipped checkpoint: any input may be absent
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


def cpu_usage() -> tuple[float, float, int]:
    """(user s, system s, minor page faults) of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime, usage.ru_minflt


def usage_since(start: tuple[float, float, int]) -> dict:
    user, system, faults = (now - then for now, then in zip(cpu_usage(), start))
    return {"user_s": round(user, 2), "system_s": round(system, 2), "system_share": round(system / max(user + system, 1e-9), 3),
            "minor_faults": int(faults), "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def demo_downscaler(cfg, args, device, bf16: bool) -> Downscaler:
    model_cfg = cfg.model.model_copy(update={"channels_last": args.channels_last, "bf16": bf16})
    if args.checkpoint:
        return Downscaler.load(args.checkpoint, device, model_cfg)
    demo = config.load(REPO / "config" / "train-demo.toml").train.diffusion
    sizes = {"model_channels": demo.model_channels, "channel_mult": tuple(demo.channel_mult), "num_blocks": demo.num_blocks}
    options = dict(patch_size=cfg.model.patch_size, patch_overlap=cfg.model.patch_overlap, max_batch=cfg.model.max_batch,
                   channels_last=args.channels_last, bf16=bf16)
    return random_downscaler(cfg, sizes, device, **options)


def timed_sample(ds: Downscaler, cond: Conditioning, args) -> tuple[np.ndarray, float, dict]:
    """One sample after a 2-member warm-up: (members, seconds, CPU usage)."""
    ds.sample(cond, members=2, seed=0, steps=2)
    efficiency.sync(ds.device)
    usage, t0 = cpu_usage(), time.perf_counter()
    out = ds.sample(cond, members=args.members, seed=1, steps=args.steps, solver=args.solver)
    efficiency.sync(ds.device)
    return out, time.perf_counter() - t0, usage_since(usage)


def bench_demo(cfg, args, device) -> dict:
    ds = demo_downscaler(cfg, args, device, cfg.model.bf16)
    grid = target_grid(cfg.domain.box())
    cond = conditioning(grid)
    out, seconds, usage = timed_sample(ds, cond, args)
    tiles = PatchGrid(*grid.shape, ds.patch_size, ds.patch_overlap, ds.tile_multiple)
    patches = f"{len(tiles)} of {tiles.tile[0]}x{tiles.tile[1]}"
    return {
        "case": "demo", "grid": list(grid.shape), "members": args.members, "steps": args.steps, "solver": args.solver,
        "channels_last": args.channels_last, "bf16": ds.autocast, "patches": patches,
        "parameters_per_network": parameter_count(ds.diffusion), "seconds_per_sample": round(seconds, 2), **usage, "output_shape": list(out.shape),
        "gflop_per_patch_call": round(efficiency.spec_tile_flops(ds.spec, tiles.tile)[0] / 1e9, 3),
    }


def bench_efficiency(cfg, args, device) -> list[dict]:
    """Peaks of this machine, then the sample's achieved GFLOP/s against them (JSON lines)."""
    ds = demo_downscaler(cfg, args, device, bf16=False)
    grid = target_grid(cfg.domain.box())
    cond = conditioning(grid)
    layout = PatchGrid(*grid.shape, ds.patch_size, ds.patch_overlap, ds.tile_multiple)
    batch = min(ds.max_batch, args.members * len(layout))
    bf16_flags = efficiency.cpu_flags("avx512_bf16", "amx_bf16") if device.type == "cpu" else ["cuda"]
    rows = [{"measure": "cpu_flags", "bf16": bf16_flags, "avx512f": bool(efficiency.cpu_flags("avx512f"))}]
    rows.append(efficiency.matmul_peak(device, torch.float32))
    if bf16_flags:
        rows.append(efficiency.matmul_peak(device, torch.bfloat16))
    rows += efficiency.conv_rates(ds.spec.diffusion, layout.tile, batch, device, channels_last=args.channels_last)
    if args.bf16:
        rows += efficiency.conv_rates(ds.spec.diffusion, layout.tile, batch, device, dtype=torch.bfloat16,
                                      channels_last=args.channels_last)
    inputs = efficiency.diffusion_call_inputs(ds.spec.diffusion.in_channels, layout.tile, batch, device,
                                              memory_format=ds.memory_format)
    for dtype in [torch.float32] + ([torch.bfloat16] if args.bf16 else []):
        rows.append(efficiency.network_conv_rate(ds.diffusion, inputs, device, dtype))
    for row in rows:
        print(json.dumps(row), flush=True)
    rate = "gflops_cpu" if device.type == "cpu" else "gflops"  # the load-robust rate where the CPU is shared
    network_convs = {row["dtype"]: row[rate] for row in rows if row["measure"] == "network_convolutions"}
    matmul = {row["dtype"]: row[rate] for row in rows if row["measure"] == "matmul_peak"}
    conv_peaks = {dtype: max(row[rate] for row in rows if row["measure"] == "conv3x3" and row["dtype"] == dtype)
                  for dtype in {row["dtype"] for row in rows if row["measure"] == "conv3x3"}}
    conv_peak = conv_peaks["float32"]
    flops = efficiency.sample_flops(ds, len(layout), layout.tile, args.members, cond.precip.shape[0], args.steps, args.solver)
    reference = None
    for precision in ["fp32"] + (["bf16"] if args.bf16 else []):
        if precision == "bf16":
            ds = demo_downscaler(cfg, args, device, bf16=True)
            if not ds.autocast:
                print(json.dumps({"measure": "sample", "precision": "bf16", "skipped": "this device does not run bf16 natively"}))
                continue
        out, seconds, usage = timed_sample(ds, cond, args)
        speeds = efficiency.rates(flops, seconds, usage["user_s"] + usage["system_s"], device)
        achieved = speeds[rate]
        row = {"measure": "sample", "precision": precision, "grid": list(grid.shape), "members": args.members,
               "steps": args.steps, "solver": args.solver, "channels_last": args.channels_last,
               "patches": f"{len(layout)} of {layout.tile[0]}x{layout.tile[1]}", "batch": batch,
               "gflop": round(flops / 1e9, 1), **speeds, "ratios_from": rate,
               "of_fp32_matmul_peak": round(achieved / matmul["float32"], 3), "of_conv_peak": round(achieved / conv_peak, 3),
               "of_network_convolutions": round(achieved / network_convs["float32" if precision == "fp32" else "bfloat16"], 3),
               **usage}
        if reference is None:
            reference = out
        else:
            row["max_abs_diff_vs_fp32_mmh"] = round(float(np.nanmax(np.abs(out - reference))), 4)
            row["mean_spread_fp32_mmh"] = round(float(np.nanmean(reference.std(axis=0))), 4)
            row["of_bf16_matmul_peak"] = round(achieved / matmul["bfloat16"], 3) if "bfloat16" in matmul else None
            row["of_bf16_conv_peak"] = round(achieved / conv_peaks["bfloat16"], 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


@contextlib.contextmanager
def part_timers(ds: Downscaler):
    """Process CPU seconds spent in each of PARTS while the block runs (none of them calls another)."""
    seconds = dict.fromkeys(PARTS, 0.0)

    def timed(original, name_of):
        def wrapper(*args, **kwargs):
            start = time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                seconds[name_of(args)] += time.process_time() - start
        return wrapper

    network = {id(ds.diffusion_call): "diffusion", id(ds.regression_call): "regression"}
    with mock.patch.object(PatchGrid, "extract", timed(PatchGrid.extract, lambda a: "extract")), \
            mock.patch.object(PatchGrid, "blend", timed(PatchGrid.blend, lambda a: "blend")), \
            mock.patch.object(ds, "_prepare", timed(ds._prepare, lambda a: "prepare")), \
            mock.patch.object(ds, "run_batched", timed(ds.run_batched, lambda a: network[id(a[0])])):
        yield seconds


def scaling_case(cfg, args, device, shape: tuple[int, int], members: int) -> dict:
    """One scaling case in this process: a cold sample, then the fastest of `--repeat` warm ones, by part."""
    ds = demo_downscaler(cfg, args, device, bf16=False)  # float32, as the recorded scaling figures
    grid = LatLonGrid(0.05, 40.325, -96.675, *shape)
    cond = conditioning(grid)
    layout = PatchGrid(*shape, ds.patch_size, ds.patch_overlap, ds.tile_multiple)
    runs = []
    for _ in range(1 + args.repeat):
        load = os.getloadavg()[0]
        usage, wall0, cpu0 = cpu_usage(), time.perf_counter(), time.process_time()
        with part_timers(ds) as parts:
            ds.sample(cond, members=members, seed=1, steps=args.steps, solver=args.solver)
        cpu = time.process_time() - cpu0
        parts["other"] = cpu - sum(parts.values())
        runs.append({"wall_s": time.perf_counter() - wall0, "cpu_s": cpu, "load_1min": round(load, 2),
                     "parts_cpu_s": {k: round(v, 3) for k, v in parts.items()}, **usage_since(usage)})
    best = min(runs[1:], key=lambda r: r["cpu_s"])
    tiles = members * len(layout)
    return {
        "measure": "scaling", "grid": list(shape), "members": members, "steps": args.steps, "solver": args.solver,
        "threads": torch.get_num_threads(), "cells": shape[0] * shape[1], "patches": len(layout), "tile": list(layout.tile),
        "tile_cells_per_member": len(layout) * layout.tile[0] * layout.tile[1],
        "network_chunks": math.ceil(tiles / ds.max_batch), "batch": min(tiles, ds.max_batch),
        "cold_wall_s": round(runs[0]["wall_s"], 2), "cold_cpu_s": round(runs[0]["cpu_s"], 2),
        "cold_minor_faults": runs[0]["minor_faults"],
        "wall_s": round(best["wall_s"], 2), "cpu_s": round(best["cpu_s"], 2),
        "cpu_s_all": [round(r["cpu_s"], 2) for r in runs[1:]], "wall_s_all": [round(r["wall_s"], 2) for r in runs[1:]],
        "load_1min_all": [r["load_1min"] for r in runs], "system_share": best["system_share"],
        "minor_faults": best["minor_faults"], "parts_cpu_s": best["parts_cpu_s"],
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "workspace_mib": round(ds.workspace.nbytes() / 2**20, 1),
    }


def bench_scaling(args) -> list[dict]:
    """Every scaling case in its own subprocess; JSON lines, then a table of ratios against each sweep's first case."""
    cases = [(shape, args.scaling_members) for shape in SCALING_GRIDS]
    cases += [(SCALING_GRIDS[0], m) for m in SCALING_MEMBERS if (SCALING_GRIDS[0], m) not in cases]
    rows = []
    for (h, w), members in cases:
        command = [sys.executable, __file__, "--scaling-case", str(h), str(w), str(members), "--threads", str(args.threads),
                   "--steps", str(args.steps), "--solver", args.solver, "--repeat", str(args.repeat)]
        command += ["--channels-last"] if args.channels_last else []
        command += ["--checkpoint", args.checkpoint] if args.checkpoint else []
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        rows.append(json.loads(done.stdout.splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    print("\n| sweep | grid | members | cells x members | tiles x tile cells x members | CPU s (best) | ratio: cells x members / network cells / CPU s "
          "| CPU s per Mcell-member | prepare / extract / diffusion / regression / blend / other (CPU s) | cold CPU s | minor faults warm (cold) | peak RSS MiB | wall s | load |")
    print("|---|---|---:|---:|---:|---:|---|---:|---|---:|---|---:|---:|---|")
    sweeps = {"grid": [r for r in rows if r["members"] == args.scaling_members],
              "members": [r for r in rows if r["grid"] == list(SCALING_GRIDS[0])]}
    for sweep, group in sweeps.items():
        base = group[0]
        for r in group:
            work, network = r["cells"] * r["members"], r["tile_cells_per_member"] * r["members"]
            ratios = (f"{work / (base['cells'] * base['members']):.2f} / {network / (base['tile_cells_per_member'] * base['members']):.2f} / "
                      f"{r['cpu_s'] / base['cpu_s']:.2f}")
            parts = " / ".join(f"{r['parts_cpu_s'][k]:.2f}" for k in (*PARTS, "other"))
            print(f"| {sweep} | {r['grid'][0]} x {r['grid'][1]} | {r['members']} | {work / 1e6:.3f} M | {network / 1e6:.3f} M | {r['cpu_s']} | {ratios} | "
                  f"{r['cpu_s'] / (work / 1e6):.2f} | {parts} | {r['cold_cpu_s']} | {r['minor_faults']} ({r['cold_minor_faults']}) | "
                  f"{r['peak_rss_mib']} | {r['wall_s']} | {r['load_1min_all']} |")
    return rows


def bench_production(cfg, args, device) -> list[dict]:
    grid = LatLonGrid(0.05, 24.025, -124.975, *CONUS_SHAPE)
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
               "tile": list(layout.tile), "gflop_per_patch_call": round(efficiency.spec_tile_flops(ds.spec, layout.tile)[0] / 1e9, 2)}
        if args.tiles:
            inputs = efficiency.diffusion_call_inputs(ds.spec.diffusion.in_channels, layout.tile, args.tiles, device)
            with torch.no_grad():
                ds.run_batched(ds.diffusion_call, *inputs)  # warm-up (and compilation)
                efficiency.sync(device)
                t0 = time.perf_counter()
                ds.run_batched(ds.diffusion_call, *inputs)
                efficiency.sync(device)
            per_tile = (time.perf_counter() - t0) / args.tiles
            calls = patches * args.members * ds.sampler.overridden(args.steps, args.solver).evaluations
            row.update({"timed_tiles": args.tiles, "seconds_per_tile": round(per_tile, 4),
                        "estimated_seconds_per_sample": round(per_tile * calls, 1), "tile_calls_per_sample": calls})
        else:
            cond = conditioning(grid)
            ds.sample(cond, members=2, seed=0, steps=2)
            efficiency.sync(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            ds.sample(cond, members=args.members, seed=1, steps=args.steps, solver=args.solver)
            efficiency.sync(device)
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
    parser.add_argument("--solver", choices=["heun", "euler", "dpm2m"], default="heun")
    parser.add_argument("--tiles", type=int, default=0, help="production: time this many patches and extrapolate")
    parser.add_argument("--max-batch", type=int, default=256)
    parser.add_argument("--variants", action="store_true", help="production: bf16 x channels_last x compile on/off")
    parser.add_argument("--checkpoint", help="demo: time this checkpoint instead of random weights")
    parser.add_argument("--channels-last", action="store_true", help="demo: channels_last memory format")
    parser.add_argument("--efficiency", action="store_true", help="demo: peaks of this machine and the sample's share of them")
    parser.add_argument("--bf16", action="store_true", help="efficiency: also time the sample with model.bf16 on (bf16 autocast)")
    parser.add_argument("--scaling", action="store_true", help="demo networks: time per sample against grid size and members")
    parser.add_argument("--scaling-members", type=int, default=10, help="scaling: members of the grid sweep")
    parser.add_argument("--scaling-case", type=int, nargs=3, metavar=("H", "W", "M"), help=argparse.SUPPRESS)  # one case, in this process
    parser.add_argument("--repeat", type=int, default=3, help="scaling: warm samples per case (the fastest is reported)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    cfg = config.load(None)
    if args.scaling_case:
        h, w, members = args.scaling_case
        print(json.dumps(scaling_case(cfg, args, device, (h, w), members)), flush=True)
        return 0
    info = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "device": str(device),
            "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None}
    print(json.dumps(info), flush=True)
    if args.scaling:
        bench_scaling(args)
    elif args.efficiency:
        bench_efficiency(cfg, args, device)
    elif args.case == "demo":
        print(json.dumps(bench_demo(cfg, args, device)), flush=True)
    else:
        bench_production(cfg, args, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
