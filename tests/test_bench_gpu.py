"""scripts/bench_gpu.sh works end to end: its tiny CPU case, as CI runs it (the GPU figures come from a GPU host)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_the_gpu_benchmark_runs_its_tiny_case_on_the_cpu_and_reports_every_variant(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    command = ["bash", str(REPO / "scripts" / "bench_gpu.sh"), "--tiny", "--device", "cpu", "--out", str(out),
               "--repeat", "1", "--steps", "4", "--solver", "euler"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["case"] == "tiny" and report["members"] == 3 and report["environment"]["device"] == "cpu"
    assert set(report["matmul_peak_tflops"]) == {"float32", "bfloat16"} and min(report["matmul_peak_tflops"].values()) > 0
    rows = {row["variant"]: row for row in report["variants"]}
    assert list(rows) == ["fp32", "tf32", "bf16", "bf16+channels_last", "bf16+channels_last+cuda_graph", "bf16+compile",
                          "bf16+channels_last+compile", "bf16+channels_last+compile_reduce_overhead"]
    for name in ("tf32", "bf16+channels_last+cuda_graph", "bf16+channels_last+compile_reduce_overhead"):
        assert rows[name] == {"variant": name, "skipped": "needs CUDA"}
    assert "CUDA only" in rows["bf16+compile"]["skipped"] and "CUDA only" in rows["bf16+channels_last+compile"]["skipped"]
    timed = [rows[name] for name in ("fp32", "bf16", "bf16+channels_last")]
    for row in timed:
        assert row["seconds_per_call"] > 0 and row["tflops"] > 0 and row["of_peak"] > 0
        # 15 tiles per member, 3 evaluations each: 4 Euler steps stopping at σ_min, the config's default
        assert row["seconds_per_member"] == pytest.approx(row["seconds_per_tile"] * report["patches"] * 3, rel=2e-3)
    assert report["patches"] == 15 and report["tile"] == [16, 16] and report["sampler"]["denoise_to_zero"] is False
    assert rows["fp32"]["max_abs_diff_vs_fp32"] is None
    for row in timed[1:]:  # bf16 really ran in bf16: its output differs from fp32, within bf16's precision
        assert 1e-4 * row["output_std"] < row["max_abs_diff_vs_fp32"] < 0.2 * rows["fp32"]["output_std"]
    assert report["end_to_end"]["finite"] and report["end_to_end"]["members"] == 3
    best = min(timed, key=lambda row: row["seconds_per_member"])
    assert report["best"]["variant"] == best["variant"]
    assert report["best"]["cycle_seconds_9_valid_times"] == pytest.approx(best["seconds_per_member"] * 3 * 9, rel=1e-2)
    assert "fp32" in done.stderr and "needs CUDA" in done.stderr  # the table
