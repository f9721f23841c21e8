"""Shared by the model benchmarks: a device's measured peaks and the network's FLOP counts (not a test, not a CLI).

Peaks are measured, not taken from a data sheet: a large square matmul (the best the BLAS/cuBLAS reaches) and a
3 x 3 convolution at each of the network's channel counts and resolutions (what the UNet's own layers can reach),
and the network's own convolutions re-run alone on the activations of one call (`network_conv_rate`). FLOPs
come from `torch.utils.flop_counter.FlopCounterMode` (a multiply-add counts 2).

On a CPU shared with other work, wall-clock rates fall with the load; each rate is also given per CPU second
of this process times its threads (`*_cpu`), what the same work would reach with the cores to itself if
time-slicing were the only effect (cache and memory-bandwidth contention still count against it).
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_seconds(fn, device: torch.device, repeat: int = 3, min_block: float = 0.25) -> tuple[float, float]:
    """(wall, process CPU) seconds per call, each the least of `repeat` timed blocks after two untimed calls.

    A block repeats the call until it lasts about `min_block` seconds: Linux adds a running thread's CPU time to
    its process only at a scheduler tick or a switch, so a call of a few milliseconds on two threads reads as
    little as half its CPU time (a 2.4 ms convolution once gave twice the CPU's peak per CPU second).
    """
    fn()
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    calls = max(1, math.ceil(min_block / max(time.perf_counter() - start, 1e-9)))
    wall = cpu = float("inf")
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(calls):
            fn()
        sync(device)
        wall = min(wall, (time.perf_counter() - start) / calls)
        cpu = min(cpu, (time.process_time() - start_cpu) / calls)
    return wall, cpu


def rates(flops: float, wall: float, cpu: float, device: torch.device) -> dict:
    """GFLOP/s on the wall clock and, on a CPU, per CPU second times the threads in use."""
    out = {"seconds": round(wall, 5), "gflops": round(flops / wall / 1e9, 1)}
    if device.type == "cpu":
        out["gflops_cpu"] = round(flops / max(cpu, 1e-9) * torch.get_num_threads() / 1e9, 1)
    return out


def counted_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return int(counter.get_total_flops())


def matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048, repeat: int = 3) -> dict:
    """GFLOP/s of an n x n x n matmul in `dtype` (on CUDA, float32 means true fp32: TF32 off unless the caller set it)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    wall, cpu = best_seconds(lambda: a @ b, device, repeat)
    return {"measure": "matmul_peak", "dtype": str(dtype).removeprefix("torch."), "n": n,
            "tf32": device.type == "cuda" and dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32,
            **rates(2 * n**3, wall, cpu, device)}


def level_shapes(network_spec, tile: tuple[int, int]) -> list[tuple[int, int, int]]:
    """(channels, rows, cols) of the UNet's 3 x 3 convolutions at each resolution level."""
    ch = network_spec.model_channels
    return [(ch * mult, tile[0] >> level, tile[1] >> level) for level, mult in enumerate(network_spec.channel_mult)]


def conv_rates(network_spec, tile: tuple[int, int], batch: int, device: torch.device, dtype: torch.dtype = torch.float32,
               channels_last: bool = False, repeat: int = 3) -> list[dict]:
    """GFLOP/s of one c -> c 3 x 3 convolution on `batch` tiles at each level of the network."""
    rows = []
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for channels, h, w in level_shapes(network_spec, tile):
        conv = nn.Conv2d(channels, channels, 3, padding=1).to(device=device, dtype=dtype, memory_format=memory_format)
        x = torch.randn(batch, channels, h, w, device=device).to(dtype).contiguous(memory_format=memory_format)
        flops = counted_flops(lambda: conv(x))
        with torch.no_grad():
            wall, cpu = best_seconds(lambda: conv(x), device, repeat)
        rows.append({"measure": "conv3x3", "dtype": str(dtype).removeprefix("torch."), "channels": channels,
                     "cells": f"{h}x{w}", "batch": batch, "channels_last": channels_last,
                     "gflop": round(flops / 1e9, 3), **rates(flops, wall, cpu, device)})
    return rows


def amp(device: torch.device, bf16: bool):
    """bf16 autocast on `device`, or nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def diffusion_call_inputs(in_channels: int, tile: tuple[int, int], batch: int, device: torch.device, sigma: float = 1.0,
                          memory_format: torch.memory_format = torch.contiguous_format) -> list[torch.Tensor]:
    """One diffusion-network call's arguments on `batch` tiles: a state of noise level `sigma`, σ, a random
    condition of the other channels, lead 2 (the same values on any device)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, *tile, generator=generator) * sigma
    condition = torch.randn(batch, in_channels - 1, *tile, generator=generator)
    return [x.to(device).contiguous(memory_format=memory_format), torch.full((batch,), float(sigma), device=device),
            condition.to(device).contiguous(memory_format=memory_format), torch.full((batch,), 2, device=device)]


def network_conv_rate(network: nn.Module, inputs: list, device: torch.device, dtype: torch.dtype = torch.float32,
                      repeat: int = 3) -> dict:
    """GFLOP/s of the network's own convolutions timed alone: every Conv2d of one forward pass on `inputs`, each
    re-run on the input it saw (under bf16 autocast for `dtype` bfloat16, as the sampler runs it), their FLOPs
    and best seconds summed. What the sample's arithmetic could reach if nothing but its convolutions ran."""
    def precision():
        return amp(device, dtype == torch.bfloat16)

    seen = []
    hooks = [module.register_forward_hook(lambda module, args, output: seen.append((module, args[0])))
             for module in network.modules() if isinstance(module, nn.Conv2d)]
    try:
        with torch.no_grad(), precision():
            network(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
    flops = wall = cpu = 0.0
    for conv, x in seen:
        def call(conv=conv, x=x):
            with torch.no_grad(), precision():
                conv(x)
        flops += counted_flops(call)
        seconds = best_seconds(call, device, repeat)
        wall, cpu = wall + seconds[0], cpu + seconds[1]
    return {"measure": "network_convolutions", "dtype": str(dtype).removeprefix("torch."), "convolutions": len(seen),
            "batch": int(inputs[0].shape[0]), "gflop": round(flops / 1e9, 3), **rates(flops, wall, cpu, device)}


def spec_tile_flops(model_spec, tile: tuple[int, int]) -> tuple[int, int]:
    """(diffusion, regression) FLOPs of one call on one tile, counted on PyTorch's meta device (no arithmetic runs)."""
    with torch.device("meta"):
        regression, diffusion = model_spec.build()
        lead = torch.zeros(1, dtype=torch.long)
        return (counted_flops(lambda: diffusion(torch.zeros(1, 1, *tile), torch.ones(1),
                                                torch.zeros(1, model_spec.diffusion.in_channels - 1, *tile), lead)),
                counted_flops(lambda: regression(torch.zeros(1, model_spec.regression.in_channels, *tile), lead)))


def sample_flops(downscaler, patches: int, tile: tuple[int, int], members: int, nowcast_members: int, steps: int, solver: str) -> int:
    """FLOPs of `Downscaler.sample` (its sampler with `steps` and `solver`): the regression on each nowcast member,
    the diffusion network per member and evaluation."""
    diffusion, regression = spec_tile_flops(downscaler.spec, tile)
    calls = downscaler.sampler.overridden(steps, solver).evaluations
    return patches * (members * calls * diffusion + nowcast_members * regression)


def cpu_flags(*wanted: str) -> list[str]:
    """Which of `wanted` the CPU advertises in /proc/cpuinfo (empty where there is no such file)."""
    path = Path("/proc/cpuinfo")
    if not path.is_file():
        return []
    flags = set()
    for line in path.read_text().splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return [flag for flag in wanted if flag in flags]
