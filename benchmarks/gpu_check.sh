#!/usr/bin/env bash
# The precompute at SD 1.5's real shapes (random weights) against a plain
# StableDiffusionPipeline on one GPU, in under 8 minutes (benchmarks/gpu_check.py says
# what it measures). Results: $OUT/gpu_check.json (or .bench/) and a table on stdout.
#
#   bash benchmarks/gpu_check.sh            # GPU: 512 px, 50 steps
#   bash benchmarks/gpu_check.sh --quick    # any CPU, seconds: the test runs this
#
# The GPU machine has no network and no diffusers: carry its wheel in .whl/ (ignored by
# git), made here once with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform any -d .whl diffusers==0.42.1
# and name .whl in the device run's carry; this script installs it into /tmp/site.
set -euo pipefail
cd "$(dirname "$0")/.."
# $PYTHON when set (the test passes its own interpreter), else the project's venv, else python3
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
if ! "$PY" -c "import diffusers" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "gpu_check: diffusers is not installed and .whl/ holds no wheel (see this script's header)" >&2
    exit 2
  fi
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
results="${OUT:-.bench}"
mkdir -p "$results"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv > "$results/gpu_check_nvidia_smi.csv" 2>&1 || true
fi
exec "$PY" benchmarks/gpu_check.py --out "$results/gpu_check.json" "$@"
