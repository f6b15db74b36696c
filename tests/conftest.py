"""Shared fixtures: offline environment, Hydra composition, and running the real entry points."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
import time
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
    from dyt.families import compose as dyt_compose  # imported when used: collecting the tests stays light
    return dyt_compose(overrides)


def run_script(args, cwd, timeout=300, env=None, check=True) -> subprocess.CompletedProcess:
    """Runs ``python <args>`` (or torchrun) from the repo with the offline environment; returns the result."""
    full_env = {**os.environ, **OFFLINE_ENV, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    cmd = args if args[0] != "python" else [sys.executable, *args[1:]]
    out = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def killed_and_resumed(tmp_path: Path, overrides: list[str], step: int = 10, timeout: float = 600):
    """`python train.py <overrides>` in <tmp_path>/killed, SIGKILLed once it has checkpointed step `step` or later,
    then resumed here with the same overrides; and the same run trained here uninterrupted in <tmp_path>/straight.
    Returns (resumed summary, uninterrupted summary)."""
    from dyt.run import train
    env = {**os.environ, **OFFLINE_ENV, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *overrides, f"hydra.run.dir={tmp_path}/killed"],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = tmp_path / "killed/checkpoints"
    deadline = time.time() + timeout
    while time.time() < deadline and not any(int(p.stem[5:]) >= step for p in ckpts.glob("step_*.pt")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed/summary.json").exists(), "the run finished before it could be killed"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        resumed = train(compose(overrides), tmp_path / "killed")
    assert "resumed from" in out.getvalue(), out.getvalue()[-2000:]
    return resumed, train(compose(overrides), tmp_path / "straight")


def script(path: str):
    """The script at `path` (from the repository root: "eval.py", "scripts/fid_stats.py") as a module, to call its
    main(argv) in this process where a fresh interpreter proves nothing more (each one imports torch again)."""
    spec = importlib.util.spec_from_file_location(f"{Path(path).stem}_script", ROOT / path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import does: dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def compose_cfg():
    return compose


@pytest.fixture(scope="session")
def vit_runs(tmp_path_factory):
    """A finished tiny DyT run and LayerNorm run (ViT on digits, 4 steps, logged at steps 3 and 4) in
    ``<root>/dyt`` and ``<root>/layernorm``: read, never changed, by the tests of run records and figures."""
    from dyt.run import train
    root = tmp_path_factory.mktemp("vit_runs")
    for norm in ("dyt", "layernorm"):
        train(compose([*TINY, "trainer.max_steps=4", "trainer.eval_every=4", "trainer.ckpt_every=4", f"norm={norm}"]),
              root / norm)
    return root


def cpu_share() -> int:
    """The cores one test may use: all of them in a serial run, an equal share under pytest-xdist (-n N)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))


def pytest_configure(config):
    import torch
    torch.set_num_threads(1)  # tiny models: one thread is as fast, and immune to a busy second core


# --- scheduling under pytest-xdist (scripts/test.sh: -n 2; pyproject: --dist loadfile --no-loadscope-reorder) -------
# Each file runs whole on one worker, so a module-scoped fixture (one expensive run feeding several tests) still runs
# once. The files are handed out longest first, so that no long file starts last, by the serial seconds per file
# measured into durations.json (a file not listed there counts UNMEASURED_S). Re-measure after changing a heavy file:
#     DYT_TEST_WORKERS=0 bash scripts/test.sh --record-durations tests/durations.json [tests/test_x.py ...]
DURATIONS = Path(__file__).with_name("durations.json")
UNMEASURED_S = 10.0


def pytest_addoption(parser):
    parser.addoption("--record-durations", metavar="PATH", default=None,
                     help="add up each test file's time (setup, call, teardown) and write it into this JSON file "
                          "(merged with the files it lists); conftest.py orders the files by tests/durations.json")


_file_seconds: dict[str, float] = {}


def pytest_runtest_logreport(report):
    name = Path(report.nodeid.split("::")[0]).name
    _file_seconds[name] = _file_seconds.get(name, 0.0) + report.duration


def pytest_sessionfinish(session):
    path = session.config.getoption("--record-durations")
    if path and not hasattr(session.config, "workerinput") and _file_seconds:  # the controller (or a serial run)
        out = Path(path)
        known = json.loads(out.read_text()) if out.exists() else {}
        known.update({name: round(s, 1) for name, s in _file_seconds.items()})
        out.write_text(json.dumps(dict(sorted(known.items(), key=lambda kv: -kv[1])), indent=1) + "\n")


def pytest_terminal_summary(terminalreporter, config):
    if config.getoption("--record-durations") and _file_seconds:
        terminalreporter.write_sep("=", "seconds per file (setup + call + teardown)")
        for name, s in sorted(_file_seconds.items(), key=lambda kv: -kv[1]):
            terminalreporter.write_line(f"{s:8.1f}  {name}")
        terminalreporter.write_line(f"{sum(_file_seconds.values()):8.1f}  total")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Under xdist: the files in decreasing order of their measured cost, each file's tests in their own order."""
    if not hasattr(config, "workerinput"):
        return  # a plain run keeps the collection order
    cost = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}
    first = {}
    for i, item in enumerate(items):
        first.setdefault(item.path.name, i)
    items.sort(key=lambda it: (-cost.get(it.path.name, UNMEASURED_S), first[it.path.name]))  # stable: keeps test order
