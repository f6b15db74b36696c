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

    from dyt.families import setup
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


def cpu_share() -> int:
    """The cores one test may use: all of them in a serial run, an equal share under pytest-xdist (-n N)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))


def pytest_configure(config):
    import torch
    torch.set_num_threads(1)  # tiny models: one thread is as fast, and immune to a busy second core


# --- scheduling under pytest-xdist (scripts/test.sh: -n 2; pyproject: --dist loadfile --no-loadscope-reorder) -------
# Each file runs whole on one worker, so a module-scoped fixture (one expensive run feeding several tests) still runs
# once. The files are handed out longest first, so that no long file starts last: rough seconds of each file run
# serially on a busy 2-core machine (a file not listed counts 10). Only this ordering uses the numbers.
FILE_COST = {"test_cli.py": 290, "test_launch.py": 245, "test_dit_train.py": 214, "test_fsdp.py": 189,
             "test_validation.py": 110, "test_exits.py": 103, "test_fid.py": 102, "test_kernels.py": 81,
             "test_bench_scripts.py": 75, "test_faults.py": 63, "test_language_cli.py": 51, "test_llama_train.py": 48,
             "test_latents.py": 40, "test_plan.py": 22}


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Under xdist: the files in decreasing order of their cost, each file's tests in their own order."""
    if not hasattr(config, "workerinput"):
        return  # a plain run keeps the collection order
    first = {}
    for i, item in enumerate(items):
        first.setdefault(item.path.name, i)
    items.sort(key=lambda it: (-FILE_COST.get(it.path.name, 10), first[it.path.name]))  # stable: keeps test order
