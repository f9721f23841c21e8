"""GPU benchmark of the production-size downscaler in one go (a benchmark, not a test); `bench_gpu.sh` runs it.

The production networks (128 channels, mult [1,2,2,2,2], 4 blocks, ~80M parameters each, random weights:
timing does not depend on them) on the CONUS 0.05° domain (520 x 1160 cells, 210 tiles of 64 x 64), 30 members:

1. the device's measured matmul peaks: fp32 (TF32 off), TF32 and bf16;
2. one diffusion-network call on a fixed batch of tiles under each variant, each factor on and off against
   the one before it: fp32 -> TF32 -> bf16 autocast -> channels_last -> CUDA graph (captured by hand); then
   bf16 + torch.compile in NCHW and in channels_last, and torch.compile(mode="reduce-overhead"); per variant: seconds per tile and per member (for
   the sampler given, `--steps`/`--solver`, by default the configured one), peak GPU memory, achieved TFLOP/s
   against the measured peak of its precision, and its largest difference from the fp32 output on the same tiles;
3. one whole valid time end to end: `Downscaler.sample` of all members with that sampler and the `[model]`
   options of `--config` (bf16 where the device runs it natively, channels_last, torch.compile, max_batch), the
   regression included; nine of them make a cycle.

Variants run in that order and each is skipped, with the reason recorded, once `--budget-s` is spent; a variant
that fails records its error and the run goes on. The JSON report goes to `--out`; a table goes to stderr.
`--tiny` is a seconds-long case (8-channel networks, 40 x 60 cells, 3 members) that CI runs on the CPU, where
bf16 is CPU autocast and the CUDA-only variants (graphs, reduce-overhead, TF32) are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

import efficiency
from bench_model import CONUS_SHAPE, PRODUCTION, conditioning, random_downscaler

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nrt import config  # noqa: E402
from nrt.grids import LatLonGrid  # noqa: E402
from nrt.model.inference import pick_device, sampler_settings  # noqa: E402
from nrt.model.networks import parameter_count  # noqa: E402
from nrt.model.patching import PatchGrid  # noqa: E402

TINY = {"model_channels": 8, "channel_mult": (1, 2), "num_blocks": 1}
VARIANTS = [  # name, bf16, tf32, channels_last, CUDA graph, torch.compile mode (None = eager)
    ("fp32", False, False, False, False, None),
    ("tf32", False, True, False, False, None),
    ("bf16", True, False, False, False, None),
    ("bf16+channels_last", True, False, True, False, None),
    ("bf16+channels_last+cuda_graph", True, False, True, True, None),
    ("bf16+compile", True, False, False, False, "default"),
    ("bf16+channels_last+compile", True, False, True, False, "default"),
    ("bf16+channels_last+compile_reduce_overhead", True, False, True, False, "reduce-overhead"),
]
CUDA_ONLY = {"tf32", "bf16+channels_last+cuda_graph", "bf16+channels_last+compile_reduce_overhead"}


def significant(value: float, digits: int = 4) -> float:
    return float(f"{value:.{digits}g}")


def nonzero_weights(module: torch.nn.Module, seed: int = 0) -> None:
    """Give the layers that start at zero (edm's init_zero: each block's last conv, the output conv, attention's
    projection) PyTorch's default init, so that the output depends on every layer and precision differences show."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, torch.nn.Conv2d) and not layer.weight.any():
                bound = 1 / (layer.weight[0].numel() ** 0.5)
                layer.weight.copy_((torch.rand(layer.weight.shape, generator=generator) * 2 - 1) * bound)


def log(message: str) -> None:
    print(f"[bench_gpu {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def environment(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "device": str(device), "host": platform.node(), "cpus": os.cpu_count(),
            "threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                    capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count)
    return info


def network_call(net, inputs, device, bf16: bool, channels_last: bool, graph: bool, reduce_overhead: bool = False):
    """A zero-argument callable running `net` on the fixed `inputs`; with `graph`, a replay of a captured CUDA graph."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    inputs = [t.contiguous(memory_format=memory_format) if t.dim() == 4 else t for t in inputs]

    def run():
        if reduce_overhead:  # a new step: the previous call's CUDA-graph outputs may be overwritten (torch.compile docs)
            torch.compiler.cudagraph_mark_step_begin()
        with torch.no_grad(), efficiency.amp(device, bf16):
            return net(*inputs)

    if not graph:
        return run
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graphs asks before capture
        for _ in range(2):
            run()
    torch.cuda.current_stream().wait_stream(side)
    captured = torch.cuda.CUDAGraph()
    with torch.cuda.graph(captured):
        static_output = run()

    def replay():
        captured.replay()
        return static_output

    return replay


def bench_variant(variant, ds, inputs, reference, peaks, flops_per_tile, per_member_tiles, args, device) -> dict:
    name, bf16, tf32, channels_last, graph, compile_mode = variant
    row = {"variant": name, "bf16": bf16, "tf32": tf32, "channels_last": channels_last, "cuda_graph": graph,
           "compile": compile_mode}
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    net = ds.diffusion.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if compile_mode:
        net = torch.compile(net, mode=compile_mode)
    started = time.perf_counter()
    call = network_call(net, inputs, device, bf16, channels_last, graph, reduce_overhead=compile_mode == "reduce-overhead")
    output = call().float().clone()  # first call: compilation, capture, autotuning; a copy, as a CUDA graph reuses its output
    efficiency.sync(device)
    row["first_call_s"] = round(time.perf_counter() - started, 2)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    wall, _ = efficiency.best_seconds(call, device, repeat=args.repeat)
    batch = inputs[0].shape[0]
    per_tile = wall / batch
    evals = args.sampler.evaluations
    precision = "bfloat16" if bf16 else ("tf32" if tf32 else "float32")
    tflops = flops_per_tile * batch / wall / 1e12
    row.update({
        "batch_tiles": batch, "seconds_per_call": round(wall, 4), "seconds_per_tile": significant(per_tile),
        "seconds_per_member": significant(per_tile * per_member_tiles * evals),
        "tflops": significant(tflops), "peak_tflops": peaks.get(precision),
        "of_peak": round(tflops / peaks[precision], 3) if peaks.get(precision) else None,
        "max_abs_diff_vs_fp32": None if reference is None else significant(float((output - reference).abs().max())),
        "output_std": significant(float(output.std())),
    })
    if device.type == "cuda":
        row["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return row, output


def end_to_end(ds, shape, members, layout, flops_per_tile, regression_flops, args, device) -> dict:
    """One valid time: `Downscaler.sample` with the config's options (bf16, channels_last, compile, max_batch).

    The warm-up is a whole sample of the same size, so that torch.compile has compiled every batch shape."""
    grid = LatLonGrid(0.05, 24.025, -124.975, *shape)
    cond = conditioning(grid)
    started = time.perf_counter()
    ds.sample(cond, members=members, seed=0, steps=args.steps, solver=args.solver)
    efficiency.sync(device)
    warm_up = time.perf_counter() - started
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    efficiency.sync(device)
    start = time.perf_counter()
    out = ds.sample(cond, members=members, seed=1, steps=args.steps, solver=args.solver)
    efficiency.sync(device)
    seconds = time.perf_counter() - start
    evals = ds.sampler.overridden(args.steps, args.solver).evaluations
    flops = len(layout) * (members * evals * flops_per_tile + cond.precip.shape[0] * regression_flops)
    row = {
        "members": members, "steps": args.steps, "solver": args.solver, "bf16": ds.autocast,
        "channels_last": ds.memory_format == torch.channels_last, "compile": ds.diffusion_call is not ds.diffusion,
        "max_batch": ds.max_batch, "warm_up_seconds": round(warm_up, 1), "seconds": round(seconds, 3),
        "seconds_per_member_per_evaluation": significant(seconds / members / evals),
        "cycle_seconds_9_valid_times": significant(9 * seconds),
        "tflops": significant(flops / seconds / 1e12), "finite": bool(torch.isfinite(torch.from_numpy(out)).all()),
    }
    if device.type == "cuda":
        row["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cuda or cpu")
    parser.add_argument("--tiny", action="store_true", help="a seconds-long case for CI on the CPU")
    parser.add_argument("--out", type=Path, default=Path("bench-gpu.json"), help="JSON report (default bench-gpu.json)")
    parser.add_argument("--members", type=int, help="ensemble members (default 30; tiny 3)")
    parser.add_argument("--steps", type=int, help="sampler steps (default: the config's model.sampler_steps)")
    parser.add_argument("--solver", choices=["heun", "euler", "dpm2m"], help="sampler solver (default: the config's model.solver)")
    parser.add_argument("--batch", type=int, help="tiles per timed network call (default 512; tiny 8)")
    parser.add_argument("--repeat", type=int, default=3, help="timed calls per variant (the best is kept)")
    parser.add_argument("--budget-s", type=float, default=270.0, help="skip the remaining variants after this long")
    parser.add_argument("--matmul-n", type=int, help="side of the peak matmul (default 8192; tiny 256)")
    parser.add_argument("--config", type=Path, help="nrt config whose [model] options (bf16, channels_last, compile, "
                        "max_batch, sampler) the end-to-end sample uses (default: the built-in defaults)")
    parser.add_argument("--variants", nargs="+", choices=[v[0] for v in VARIANTS], metavar="NAME",
                        help="time only these network variants (default: all, in order)")
    args = parser.parse_args()
    began = time.perf_counter()
    device = pick_device(args.device)
    members = args.members or (3 if args.tiny else 30)
    sizes, shape = (TINY, (40, 60)) if args.tiny else (PRODUCTION, CONUS_SHAPE)
    patch, overlap = (16, 4) if args.tiny else (64, 8)
    cfg = config.load(args.config)
    args.steps = args.steps or cfg.model.sampler_steps
    args.solver = args.solver or cfg.model.solver
    args.sampler = sampler_settings(cfg.model).overridden(args.steps, args.solver)
    report = {"environment": environment(device), "case": "tiny" if args.tiny else "production-conus",
              "grid": list(shape), "members": members,
              "sampler": {"steps": args.steps, "solver": args.solver, "denoise_to_zero": args.sampler.denoise_to_zero,
                          "evaluations": args.sampler.evaluations}}
    log(f"{report['case']} on {report['environment'].get('gpu', device)}")

    matmul_n = args.matmul_n or (256 if args.tiny else 8192)
    peaks = {}
    for dtype, tf32 in ((torch.float32, False), (torch.float32, True), (torch.bfloat16, False)):
        if tf32 and device.type != "cuda":
            continue
        torch.backends.cuda.matmul.allow_tf32 = tf32
        row = efficiency.matmul_peak(device, dtype, n=matmul_n)
        peaks["tf32" if tf32 else row["dtype"]] = significant(row["gflops"] / 1e3)
    torch.backends.cuda.matmul.allow_tf32 = False
    report["matmul_peak_tflops"] = peaks
    log(f"matmul peaks (TFLOP/s): {peaks}")

    ds = random_downscaler(cfg, sizes, device, patch_size=patch, patch_overlap=overlap, max_batch=args.batch or 512)
    nonzero_weights(ds.diffusion)
    nonzero_weights(ds.regression, seed=1)
    layout = PatchGrid(*shape, patch, overlap, ds.tile_multiple)
    flops_per_tile, regression_flops = efficiency.spec_tile_flops(ds.spec, layout.tile)
    report.update(parameters_per_network=parameter_count(ds.diffusion), patches=len(layout), tile=list(layout.tile),
                  gflop_per_tile_call=round(flops_per_tile / 1e9, 3))
    batch = min(args.batch or (8 if args.tiny else 512), members * len(layout))
    inputs = efficiency.diffusion_call_inputs(ds.spec.diffusion.in_channels, layout.tile, batch, device, sigma=2.0)

    report["variants"], reference = [], None
    for variant in VARIANTS:
        name = variant[0]
        if args.variants and name not in args.variants:
            continue
        if name in CUDA_ONLY and device.type != "cuda":
            report["variants"].append({"variant": name, "skipped": "needs CUDA"})
            continue
        if variant[5] and device.type != "cuda":
            report["variants"].append({"variant": name, "skipped": "torch.compile is timed on CUDA only (minutes on a CPU)"})
            continue
        if time.perf_counter() - began > args.budget_s:
            report["variants"].append({"variant": name, "skipped": f"time budget of {args.budget_s:.0f} s spent"})
            continue
        log(f"variant {name}")
        try:
            row, output = bench_variant(variant, ds, inputs, reference, peaks, flops_per_tile, len(layout), args, device)
        except Exception as exc:  # one failing variant must not lose the others' figures
            row, output = {"variant": name, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}, None
        if reference is None and output is not None:
            reference = output
        report["variants"].append(row)
        log(json.dumps(row))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    ds.diffusion.to(memory_format=torch.contiguous_format)

    log("end-to-end sample")
    try:
        options = {"bf16": cfg.model.bf16, "channels_last": cfg.model.channels_last, "compile": cfg.model.compile,
                   "max_batch": args.batch or cfg.model.max_batch, "sampler": sampler_settings(cfg.model)}
        e2e = random_downscaler(cfg, sizes, device, patch_size=patch, patch_overlap=overlap, **options)
        report["end_to_end"] = end_to_end(e2e, shape, members, layout, flops_per_tile, regression_flops, args, device)
    except Exception as exc:  # the variants' figures are still written
        report["end_to_end"] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    timed = [row for row in report["variants"] if "seconds_per_member" in row]
    if timed:
        best = min(timed, key=lambda row: row["seconds_per_member"])
        report["best"] = {"variant": best["variant"], "seconds_per_member": best["seconds_per_member"],
                          "cycle_seconds_9_valid_times": significant(best["seconds_per_member"] * members * 9)}
    report["wall_seconds"] = round(time.perf_counter() - began, 1)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(args.out)
    log(f"wrote {args.out} in {report['wall_seconds']} s")
    print(f"{'variant':45} {'s/member':>9} {'TFLOP/s':>8} {'of peak':>8} {'GiB':>6} {'max|Δ|':>8}", file=sys.stderr)
    for row in report["variants"]:
        if "seconds_per_member" in row:
            print(f"{row['variant']:45} {row['seconds_per_member']:9.3f} {row['tflops']:8.4g} {row['of_peak'] or 0:8.3f} "
                  f"{row.get('peak_gpu_memory_gib', 0):6.1f} {row['max_abs_diff_vs_fp32'] or 0:8.4f}", file=sys.stderr)
        else:
            print(f"{row['variant']:45} {row.get('skipped') or row.get('error')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
