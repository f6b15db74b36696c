"""What decides a run's exact numbers beyond its config, recorded in summary.json (``env``).

On one machine a run is bitwise reproducible: the same config, seed, torch build and thread count give the same
losses (a resumed run equals an uninterrupted one; tests/test_trainer.py). Across machines the numbers differ
from the first step on in the last bits, then drift apart: the CPU kernels torch picks depend on the instruction
set (``cpu_capability``: AVX2 / AVX512 / ...; oneDNN and MKL choose their own paths too) and the thread count
changes how reductions are split; on GPUs the device, CUDA/cuDNN versions and their kernel choices do the same.
``trainer.deterministic=true`` removes run-to-run nondeterminism on one machine (GPU atomics), not these.
"""
from __future__ import annotations

import platform

import torch


def environment(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "mkl": torch.backends.mkl.is_available(),
           "onednn": torch.backends.mkldnn.is_available(),
           "deterministic": torch.are_deterministic_algorithms_enabled()}
    try:
        with open("/proc/cpuinfo") as f:
            env["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        env["cpu"] = platform.processor() or platform.machine()
    if device.type == "cuda":
        env.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(), tf32=torch.backends.cuda.matmul.allow_tf32)
    return env
