#!/usr/bin/env bash
# The GPU check in one command (see benchmarks/gpu/README.md): backbones at full size with MFU,
# correctness on the device, the toy over-optimisation experiment at the paper's batch.
#   bash benchmarks/gpu/check.sh [--tiny] [--out DIR] [--budget-seconds 480] [--stages backbones,correctness,overopt]
# Re-running with the same --out resumes. Wheels the GPU image lacks (benchmarks/gpu/wheels.sh puts
# them in .whl/) are installed into a private folder first when .whl/ is there.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=$(command -v python3 || command -v python)
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gg-site .whl/*.whl
  export PYTHONPATH="/tmp/gg-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
exec "$PY" benchmarks/gpu/check.py "$@"
