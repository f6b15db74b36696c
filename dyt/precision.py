"""Mixed precision: trainer.precision -> the autocast dtype, and the autocast context (training, evaluation,
sampling share them)."""
from __future__ import annotations

import contextlib

import torch

from dyt.errors import ConfigError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for trainer.precision (None = full fp32; 'auto' = bf16 on GPU, fp32 on CPU)."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown trainer.precision {precision!r}; choose one of: auto, {', '.join(PRECISIONS)}")
    if precision == "fp32" and device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # the paper's vision runs: FP32 with TF32 matmuls
        torch.backends.cudnn.allow_tf32 = True
    return PRECISIONS[precision]


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
