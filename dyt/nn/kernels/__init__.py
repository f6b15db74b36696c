"""Fused DyT fast paths: a C kernel with a rational tanh on CPU, Triton kernels on CUDA.

``dyt_fused`` has the contract of the eager reference ``dyt.nn.norms.dyt_forward``; ``fused_supported`` says
whether ``DynamicTanh(impl="auto")`` routes a given input to it (a pure function of device and dtype, so
Dynamo reads it as a constant while tracing).
"""
from __future__ import annotations

import importlib.util

import torch

from dyt.nn.kernels.ops import dyt_fused

__all__ = ["dyt_fused", "fused_supported", "HAS_TRITON"]

HAS_TRITON = importlib.util.find_spec("triton") is not None
# float64 stays eager: the rational tanh (error 4e-7) is not exact enough for gradcheck-level math.
_FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def fused_supported(x: torch.Tensor) -> bool:
    if x.dtype not in _FUSED_DTYPES or x.dim() == 0:
        return False
    if x.device.type == "cpu":
        return True  # the op itself falls back to torch math (warning once) if the C kernel cannot build
    return x.device.type == "cuda" and HAS_TRITON
