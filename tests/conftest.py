"""Shared fixtures: offline environment, Hydra composition, and running the real entry points."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OFFLINE_ENV = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
os.environ.update(OFFLINE_ENV)

# Few steps, frequent events: enough to exercise every path of the trainer in seconds.
TINY = ["trainer.max_steps=12", "optim.warmup_steps=2", "trainer.eval_every=6", "trainer.ckpt_every=6", "trainer.log_every=3",
        "model.kwargs.depth=2", "model.kwargs.embed_dim=32", "model.kwargs.num_heads=2"]


def compose(overrides=()):
    """The composed config for `overrides`, exactly as `python train.py <overrides>` would see it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from dyt.config import setup
    setup()
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        return hydra_compose("train", overrides=list(overrides))


def run_script(args, cwd, timeout=300, env=None, check=True) -> subprocess.CompletedProcess:
    """Runs ``python <args>`` (or torchrun) from the repo with the offline environment; returns the result."""
    full_env = {**os.environ, **OFFLINE_ENV, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    cmd = args if args[0] != "python" else [sys.executable, *args[1:]]
    out = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


@pytest.fixture
def compose_cfg():
    return compose


def pytest_configure(config):
    import torch
    torch.set_num_threads(1)  # tiny models: one thread is as fast, and immune to a busy second core
