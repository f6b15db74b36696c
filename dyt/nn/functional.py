"""The reference formulas, as functions of tensors: what the norm modules compute and the fused kernels must match.

The lowest floor of ``dyt.nn``: the modules (`dyt.nn.norms`) and the kernels (`dyt.nn.kernels`) both import it,
so neither imports the other's module to reach the reference.
"""
from __future__ import annotations

import torch

__all__ = ["affine", "dyt_forward"]


def affine(y: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
           channels_last: bool) -> torch.Tensor:
    """``weight * y + bias`` over the channel dim (last, or dim 1 of NCHW)."""
    if not channels_last:  # NCHW: broadcast the affine over H, W
        weight = weight[:, None, None] if weight is not None else None
        bias = bias[:, None, None] if bias is not None else None
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def dyt_forward(x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor | None,
                bias: torch.Tensor | None, channels_last: bool = True) -> torch.Tensor:
    """Reference (eager) DyT: the formula, nothing else. Fused paths must match this."""
    return affine(torch.tanh(alpha * x), weight, bias, channels_last)
