#!/usr/bin/env bash
# The GPU check of issue 18 (scripts/gpu_check.py): every CUDA path of dyt in under 8 minutes on one H100, results
# into docs/GPU.md. On the GPU machine, from the repository root:
#     bash scripts/gpu_check.sh              # all steps (installs the wheels of .whl/ first, if any)
#     bash scripts/gpu_check.sh --dry-run    # each step and the exact commands it would run (no GPU needed)
#     bash scripts/gpu_check.sh --only lm_eval
# The GPU machine has no internet: packages it lacks travel as wheels in .whl/ (bash scripts/gpu_wheels.sh, run
# where PyPI is reachable), installed here into /tmp/site, first on PYTHONPATH.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [[ " $* " != *" --dry-run "* ]] && compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || echo "[gpu_check] installing .whl/ failed: the steps that need those packages will say so" >&2
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
exec "$PY" scripts/gpu_check.py "$@"
