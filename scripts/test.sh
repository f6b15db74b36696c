#!/usr/bin/env bash
# The test suite, offline as CI runs it (embedded / local data only, wandb offline).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 WANDB_MODE=offline WANDB_SILENT=true
exec .venv/bin/python -m pytest -q "$@"
