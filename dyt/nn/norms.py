"""Normalization layers and the one factory every model site goes through.

`DynamicTanh` is the paper's layer: ``DyT(x) = weight * tanh(alpha * x) + bias`` with ONE learnable
scalar ``alpha`` per layer and per-channel ``weight``/``bias`` (LayerNorm's affine). No statistics, no
reduction in the forward pass.
"""
from __future__ import annotations

import numbers
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from dyt.errors import ConfigError
from dyt.nn.kernels import dyt_fused, fused_supported

__all__ = ["DynamicTanh", "LayerNorm2d", "RMSNorm2d", "build_norm", "NORM_KINDS", "dyt_forward"]


def _as_shape(normalized_shape) -> tuple[int, ...]:
    if isinstance(normalized_shape, numbers.Integral):
        return (int(normalized_shape),)
    return tuple(int(s) for s in normalized_shape)


def dyt_forward(x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor | None,
                bias: torch.Tensor | None, channels_last: bool = True) -> torch.Tensor:
    """Reference (eager) DyT: the formula, nothing else. Fused paths must match this."""
    y = torch.tanh(alpha * x)
    if not channels_last:  # NCHW: the channel dim is 1, broadcast the affine over H, W
        weight = weight[:, None, None] if weight is not None else None
        bias = bias[:, None, None] if bias is not None else None
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


class DynamicTanh(nn.Module):
    """Dynamic Tanh, a drop-in replacement for LayerNorm / RMSNorm.

    Args:
        normalized_shape: channel count (int) or shape of the affine parameters, as for ``nn.LayerNorm``.
        channels_last: ``True`` for ``(..., C)`` inputs, ``False`` for ``(N, C, H, W)`` (ConvNeXt's LayerNorm2d sites).
        alpha_init: initial value of the scalar ``alpha`` (the paper's alpha0).
        elementwise_affine: learn ``weight`` (and ``bias``); ``False`` gives plain ``tanh(alpha * x)`` (DiT).
        bias: learn ``bias`` (``False`` for LLaMA: ``weight * tanh(alpha * x)``).
        impl: ``"auto"`` (fused kernels from ``dyt.nn.kernels`` where they apply: Triton on CUDA, the C kernel
            on CPU, for fp32/bf16/fp16; eager otherwise, e.g. float64 or the meta device), ``"eager"`` (the
            reference formula ``dyt_forward``) or ``"fused"`` (``dyt_fused`` whatever the device; it too runs
            the reference formula for dtypes the kernels cannot match exactly, e.g. float64).
    """

    IMPLS = ("auto", "eager", "fused")

    def __init__(self, normalized_shape, channels_last: bool = True, alpha_init: float = 0.5,
                 elementwise_affine: bool = True, bias: bool = True, device=None, dtype=None,
                 impl: str = "auto"):
        super().__init__()
        if impl not in self.IMPLS:
            raise ValueError(f"unknown DynamicTanh impl {impl!r}; choose one of: {', '.join(self.IMPLS)}")
        self.impl = impl
        factory = {"device": device, "dtype": dtype}
        self.normalized_shape = _as_shape(normalized_shape)
        self.channels_last = channels_last
        self.alpha_init = float(alpha_init)
        self.elementwise_affine = elementwise_affine
        self.alpha = nn.Parameter(torch.empty(1, **factory))
        if elementwise_affine:
            self.weight = nn.Parameter(torch.empty(self.normalized_shape, **factory))
            self.bias = nn.Parameter(torch.empty(self.normalized_shape, **factory)) if bias else None
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if not channels_last and len(self.normalized_shape) != 1:
            raise ValueError("channels-first DynamicTanh takes a single channel count, "
                             f"got normalized_shape={self.normalized_shape}")
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.alpha.fill_(self.alpha_init)
            if self.weight is not None:
                self.weight.fill_(1.0)
            if self.bias is not None:
                self.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.impl == "fused" or (self.impl == "auto" and fused_supported(x) and fused_supported(self.alpha)):
            return dyt_fused(x, self.alpha, self.weight, self.bias, self.channels_last)
        return dyt_forward(x, self.alpha, self.weight, self.bias, self.channels_last)

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, channels_last={self.channels_last}, alpha_init={self.alpha_init}, "
                f"elementwise_affine={self.elementwise_affine}, bias={self.bias is not None}"
                + ("" if self.impl == "auto" else f", impl={self.impl!r}"))


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dim of an NCHW tensor (ConvNeXt's stem/downsample norm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class RMSNorm2d(nn.RMSNorm):
    """RMSNorm over the channel dim of an NCHW tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _layernorm(dim, channels_last=True, eps=1e-6, elementwise_affine=True, bias=True, **factory):
    cls = nn.LayerNorm if channels_last else LayerNorm2d
    return cls(dim, eps=eps, elementwise_affine=elementwise_affine, bias=bias, **factory)


def _rmsnorm(dim, channels_last=True, eps=1e-6, elementwise_affine=True, bias=True, **factory):
    # RMSNorm has no bias by definition; the flag is accepted so every kind takes the same options.
    cls = nn.RMSNorm if channels_last else RMSNorm2d
    return cls(dim, eps=eps, elementwise_affine=elementwise_affine, **factory)


def _dyt(dim, channels_last=True, eps=None, alpha_init=0.5, elementwise_affine=True, bias=True, **factory):
    return DynamicTanh(dim, channels_last=channels_last, alpha_init=alpha_init,
                       elementwise_affine=elementwise_affine, bias=bias, **factory)


def _identity(dim, channels_last=True, eps=None, elementwise_affine=True, bias=True, **factory):
    return nn.Identity()


#: kind -> constructor(dim, channels_last=, eps=, elementwise_affine=, bias=, [alpha_init=], device=, dtype=)
NORM_KINDS: dict[str, Callable[..., nn.Module]] = {
    "layernorm": _layernorm,
    "rmsnorm": _rmsnorm,
    "dyt": _dyt,
    "identity": _identity,
}


def build_norm(kind: str, dim, *, channels_last: bool = True, eps: float | None = None,
               alpha_init: float | None = None, elementwise_affine: bool = True, bias: bool = True,
               device=None, dtype=None) -> nn.Module:
    """The one factory for every normalization site of our own models.

    ``eps`` applies to layernorm/rmsnorm (default 1e-6), ``alpha_init`` to dyt (default 0.5); each kind
    ignores the options it has no use for, so a model passes the same arguments whatever the norm.
    """
    if kind not in NORM_KINDS:
        raise ConfigError(f"unknown norm kind {kind!r}; choose one of: {', '.join(sorted(NORM_KINDS))}")
    options = {"channels_last": channels_last, "elementwise_affine": elementwise_affine, "bias": bias,
               "device": device, "dtype": dtype}
    if eps is not None:
        options["eps"] = eps
    if alpha_init is not None and kind == "dyt":
        options["alpha_init"] = alpha_init
    return NORM_KINDS[kind](dim, **options)
