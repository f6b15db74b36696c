#!/usr/bin/env bash
# The test suite, offline as CI runs it (embedded / local data only, wandb offline), on 2 pytest-xdist workers
# (one per core of the 2-core CI machine; DYT_TEST_WORKERS=N to change, 0 for a plain serial run; a later -n in
# the arguments wins too). Each file runs on one worker, longest first by tests/durations.json (see conftest.py);
# `DYT_TEST_WORKERS=0 bash scripts/test.sh --record-durations tests/durations.json` re-measures them.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 WANDB_MODE=offline WANDB_SILENT=true
exec .venv/bin/python -m pytest -q -n "${DYT_TEST_WORKERS:-2}" "$@"
