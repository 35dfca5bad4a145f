#!/usr/bin/env bash
# The project's own device check: one command on a GPU machine, every table and log into one folder.
#
#   bash benchmarks/device_check.sh [OUT]        # OUT defaults to device-check/
#
# Sized for one 10-minute command on an H200 (about 9 minutes; each step has its own time limit, so a slow step
# cannot take the others' time): the CUDA test tier, then benchmarks/bench_gpu.py on real-size architectures with
# random weights (nothing is downloaded) — SD 1.5 512² 50 steps with 1 and 4 seeds, plain and with --compile;
# SDXL 1024² 30 steps under a 16 GB cap (a Colab T4 on a big card); FLUX 1024² layers 0:25:4. Each step's table
# (Markdown) and log land in OUT, with versions.txt (machine, versions, date) and summary.txt (each step's exit
# status and seconds). A step that fails or times out is recorded and the next one runs.
set -u
OUT=${1:-device-check}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."

{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  python - <<'EOF'
import platform, torch, diffusers, transformers
print(f"python {platform.python_version()}; torch {torch.__version__} (CUDA {torch.version.cuda}); "
      f"diffusers {diffusers.__version__}; transformers {transformers.__version__}")
print(f"GPU: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
EOF
} > "$OUT/versions.txt" 2>&1

step() {  # step NAME SECONDS COMMAND...: run with a time limit, keep its output, record status and time
  local name=$1 limit=$2
  shift 2
  local started=$SECONDS
  timeout --signal=INT --kill-after=10 "$limit" "$@" > "$OUT/$name.md" 2> "$OUT/$name.log"
  local status=$?
  echo "$name: exit $status in $((SECONDS - started)) s (limit $limit s)" | tee -a "$OUT/summary.txt"
}

step pytest-gpu 90 python -m pytest -m gpu -q -p no:cacheprovider tests/test_cuda.py
step sd15 120 python benchmarks/bench_gpu.py --configs sd15 --seeds 1,4
step sd15-compile 150 python benchmarks/bench_gpu.py --configs sd15 --seeds 1,4 --compile
step sdxl-16gb 100 python benchmarks/bench_gpu.py --configs sdxl --seeds 1 --steps 30
step flux 70 python benchmarks/bench_gpu.py --configs flux --seeds 1 --steps 4
echo "tables and logs in $OUT/" | tee -a "$OUT/summary.txt"
