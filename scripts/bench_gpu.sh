#!/usr/bin/env bash
# One-go GPU benchmark of the production downscaler on CONUS (scripts/bench_gpu.py has the details).
#   bash scripts/bench_gpu.sh                                   # on an H100/H200: under 5 min, writes bench-gpu.json
#   bash scripts/bench_gpu.sh --steps 18 --solver heun          # per-member figures for another sampler
#   bash scripts/bench_gpu.sh --config config/production.example.toml   # end to end as the GPU server runs (compile on)
#   bash scripts/bench_gpu.sh --tiny --device cpu --out /tmp/b.json   # the seconds-long CPU check that CI runs
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's nrt, whatever is installed
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv,noheader >&2 || true
fi
exec "$PYTHON" scripts/bench_gpu.py "$@"
