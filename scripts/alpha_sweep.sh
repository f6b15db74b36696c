#!/usr/bin/env bash
# The embedded alpha0 sweep (Tables 11/12 in miniature) from one command, then its table of val losses:
#   scripts/alpha_sweep.sh                       # tiny LLaMA + DyT on pydoc text, CPU, a few minutes per run
#   scripts/alpha_sweep.sh trainer.max_steps=50  # extra overrides go to every run
# Re-running skips finished runs. Results: multirun/alpha_sweep_tiny/*/summary.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
"$PY" train.py -m experiment=alpha_sweep_tiny "$@"
"$PY" - <<'PYEOF'
from dyt.rundir import RunDir, read_config, read_summary
rows = []
for rd in RunDir("multirun/alpha_sweep_tiny").find_runs():
    model, d = read_config(rd.path)["model"], read_summary(rd.path)
    rows.append((float(model["alpha_attn"]), float(model["alpha_ffn"]), d["status"], d.get("val/loss", float("nan"))))
print(f"{'alpha_attn':>10} {'alpha_other':>11} {'status':>10} {'val/loss':>9}")
for a, o, st, v in sorted(rows):
    print(f"{a:>10} {o:>11} {st:>10} {v:>9.4f}")
PYEOF
