#!/usr/bin/env bash
# The multi-GPU bench on a GPU host (2 or 4 GPUs, ~8 minutes): DeepSpeed and liger-kernel
# come as wheels from .whl/ (git-ignored: bring the folder along), then bench/multi_gpu.py.
#
#   bash bench/multi_gpu.sh                 # every part the visible GPUs allow
#   bash bench/multi_gpu.sh --steps 6       # arguments go to bench/multi_gpu.py
#   BENCH=bench/check_sp_gpu.py bash bench/multi_gpu.sh   # SP on 2 GPUs = 1 GPU (losses), ~2 min
#
# Wheels are installed only for modules the host cannot import, into /tmp/site (no index,
# no dependencies resolved: .whl/ holds deepspeed's own dependencies). Results: $OUT/multi_gpu.json.
set -euo pipefail
cd "$(dirname "$0")/.."

site=/tmp/site
need=()
want() {  # want MODULE WHEEL-PATTERN...: the wheels, when MODULE does not import here
  local module=$1; shift
  if ! python3 -c "import $module" 2>/dev/null; then
    for pattern in "$@"; do
      for wheel in .whl/$pattern; do [ -e "$wheel" ] && need+=("$wheel"); done
    done
  fi
}
want deepspeed 'deepspeed-*.whl'
want pydantic 'pydantic-*.whl' 'pydantic_core-*.whl' 'annotated_types-*.whl' 'typing_inspection-*.whl' \
  'typing_extensions-*.whl'
want hjson 'hjson-*.whl'
want msgpack 'msgpack-*.whl'
want einops 'einops-*.whl'
want cpuinfo 'py_cpuinfo-*.whl'
want ninja 'ninja-*.whl'
want liger_kernel 'liger_kernel-*.whl'
if [ ${#need[@]} -gt 0 ]; then
  echo "installing into $site: ${need[*]}"
  python3 -m pip install -q --no-index --no-deps --target "$site" "${need[@]}"
fi
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
# Long sequences fragment the caching allocator; expandable segments let them reach further.
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
export PYTHONUNBUFFERED=1
python3 -c "import deepspeed" 2>/dev/null || { echo "deepspeed does not import: bring .whl/ (see docs/multi-gpu.md)"; exit 2; }
exec python3 "${BENCH:-bench/multi_gpu.py}" "$@"
