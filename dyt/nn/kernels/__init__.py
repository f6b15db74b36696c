"""Fused DyT fast paths: a C kernel with a rational tanh on CPU, Triton kernels on CUDA.

``dyt_fused`` has the contract of the eager reference ``dyt.nn.functional.dyt_forward``; ``fused_supported`` says
whether ``DynamicTanh(impl="auto")`` routes a given input to it (a pure function of device and dtype, so
Dynamo reads it as a constant while tracing).
"""
from __future__ import annotations

import importlib.util

import torch

from dyt.nn.kernels.ops import FUSED_DTYPES, dyt_fused

__all__ = ["dyt_fused", "fused_supported", "FUSED_DTYPES", "HAS_TRITON"]

HAS_TRITON = importlib.util.find_spec("triton") is not None


def fused_supported(x: torch.Tensor) -> bool:
    # float64 stays eager (dyt_fused itself routes it there too): the kernels compute in fp32
    if x.dtype not in FUSED_DTYPES or x.dim() == 0:
        return False
    if x.device.type == "cpu":
        return True  # the op itself falls back to torch math (warning once) if the C kernel cannot build
    return x.device.type == "cuda" and HAS_TRITON
