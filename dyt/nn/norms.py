"""Normalization layers and the one factory every model site goes through.

`DynamicTanh` is the paper's layer: ``DyT(x) = weight * tanh(alpha * x) + bias`` with ONE learnable
scalar ``alpha`` per layer and per-channel ``weight``/``bias`` (LayerNorm's affine). No statistics, no
reduction in the forward pass. It is one of the `ElementwiseNorm` kinds (``weight * f(x) + bias``, a scalar
alpha per layer): the paper's ablations swap tanh for hardtanh / sigmoid / identity (`DynamicSquash`, Tables
8-9, alpha learnable or fixed), and the follow-ups' Derf and DyISRU. `build_norm(kind, ...)` builds any of
them, LayerNorm and RMSNorm by name (`NORM_KINDS`).
"""
from __future__ import annotations

import math
import numbers
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from dyt.errors import ConfigError
from dyt.nn.functional import affine, dyt_forward
from dyt.nn.kernels import dyt_fused, fused_supported

__all__ = ["ElementwiseNorm", "DynamicTanh", "DynamicSquash", "Derf", "DyISRU", "LayerNorm2d", "RMSNorm2d",
           "build_norm", "NORM_KINDS", "ELEMENTWISE_KINDS", "NORM_FREE"]


def _as_shape(normalized_shape) -> tuple[int, ...]:
    if isinstance(normalized_shape, numbers.Integral):
        return (int(normalized_shape),)
    return tuple(int(s) for s in normalized_shape)


class ElementwiseNorm(nn.Module):
    """Base of the statistics-free norms: ``weight * f(x) + bias``, with one scalar ``alpha`` per layer.

    Subclasses define ``f`` (``squash``). Shared here: the per-channel affine (LayerNorm's), the layouts
    (channels-last tokens or channels-first NCHW), ``alpha`` learnable or fixed (the paper's Table 9 "without
    alpha": ``learn_alpha=False`` keeps ``alpha`` as a buffer at ``alpha_init``, in the state dict but never
    trained), and values set in ``reset_parameters()`` so meta-device construction works (FSDP2).
    """

    def __init__(self, normalized_shape, channels_last: bool = True, alpha_init: float = 0.5,
                 elementwise_affine: bool = True, bias: bool = True, learn_alpha: bool = True,
                 device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.normalized_shape = _as_shape(normalized_shape)
        if not channels_last and len(self.normalized_shape) != 1:
            raise ValueError(f"channels-first {type(self).__name__} takes a single channel count, "
                             f"got normalized_shape={self.normalized_shape}")
        self.channels_last = channels_last
        self.alpha_init = float(alpha_init)
        self.elementwise_affine = elementwise_affine
        self.learn_alpha = learn_alpha
        if learn_alpha:
            self.alpha = nn.Parameter(torch.empty(1, **factory))
        else:
            self.register_buffer("alpha", torch.empty(1, **factory))
        if elementwise_affine:
            self.weight = nn.Parameter(torch.empty(self.normalized_shape, **factory))
            self.bias = nn.Parameter(torch.empty(self.normalized_shape, **factory)) if bias else None
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.alpha.fill_(self.alpha_init)
            if self.weight is not None:
                self.weight.fill_(1.0)
            if self.bias is not None:
                self.bias.zero_()

    def squash(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return affine(self.squash(x), self.weight, self.bias, self.channels_last)

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, channels_last={self.channels_last}, alpha_init={self.alpha_init}, "
                f"elementwise_affine={self.elementwise_affine}, bias={self.bias is not None}"
                + ("" if self.learn_alpha else ", learn_alpha=False"))


class DynamicTanh(ElementwiseNorm):
    """Dynamic Tanh, a drop-in replacement for LayerNorm / RMSNorm: ``weight * tanh(alpha * x) + bias``.

    Args:
        normalized_shape: channel count (int) or shape of the affine parameters, as for ``nn.LayerNorm``.
        channels_last: ``True`` for ``(..., C)`` inputs, ``False`` for ``(N, C, H, W)`` (ConvNeXt's LayerNorm2d sites).
        alpha_init: initial value of the scalar ``alpha`` (the paper's alpha0).
        elementwise_affine: learn ``weight`` (and ``bias``); ``False`` gives plain ``tanh(alpha * x)`` (DiT).
        bias: learn ``bias`` (``False`` for LLaMA: ``weight * tanh(alpha * x)``).
        learn_alpha: ``False`` fixes ``alpha`` at ``alpha_init`` (Table 9's "tanh without alpha": alpha 1).
        impl: ``"auto"`` (fused kernels from ``dyt.nn.kernels`` where they apply: Triton on CUDA, the C kernel
            on CPU, for fp32/bf16/fp16; eager otherwise, e.g. float64 or the meta device), ``"eager"`` (the
            reference formula ``dyt_forward``) or ``"fused"`` (``dyt_fused`` whatever the device; it too runs
            the reference formula for dtypes the kernels cannot match exactly, e.g. float64).
    """

    IMPLS = ("auto", "eager", "fused")

    def __init__(self, normalized_shape, channels_last: bool = True, alpha_init: float = 0.5,
                 elementwise_affine: bool = True, bias: bool = True, learn_alpha: bool = True,
                 device=None, dtype=None, impl: str = "auto"):
        if impl not in self.IMPLS:
            raise ValueError(f"unknown DynamicTanh impl {impl!r}; choose one of: {', '.join(self.IMPLS)}")
        super().__init__(normalized_shape, channels_last, alpha_init, elementwise_affine, bias, learn_alpha,
                         device, dtype)
        self.impl = impl
        self.reset_parameters()

    def squash(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.alpha * x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.impl == "fused" or (self.impl == "auto" and fused_supported(x) and fused_supported(self.alpha)):
            return dyt_fused(x, self.alpha, self.weight, self.bias, self.channels_last)
        return dyt_forward(x, self.alpha, self.weight, self.bias, self.channels_last)

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.impl == "auto" else f", impl={self.impl!r}")


def _unsquashed(t: torch.Tensor) -> torch.Tensor:
    return t


class DynamicSquash(ElementwiseNorm):
    """DyT with tanh swapped for another function (the paper's Table 8/9 ablation): ``weight * f(alpha*x) + bias``.

    ``function``: ``tanh`` (= DyT, eager), ``hardtanh`` (clip to [-1, 1]), ``sigmoid`` (the plain logistic, range
    (0, 1): the official repository has no ablation code, and a zero-centred ``2 sigmoid(x) - 1`` would be
    ``tanh(x / 2)``, i.e. DyT itself with alpha halved, so the ablation can only mean the plain one) or
    ``identity`` (``alpha * x``: no squashing, only a learnable scale; the paper's run diverges).
    Eager only: these exist to be compared, not to be fast; ``torch.compile`` fuses them (element-wise).
    """

    FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "tanh": torch.tanh, "hardtanh": F.hardtanh, "sigmoid": torch.sigmoid, "identity": _unsquashed}

    def __init__(self, normalized_shape, function: str = "tanh", channels_last: bool = True, alpha_init: float = 0.5,
                 elementwise_affine: bool = True, bias: bool = True, learn_alpha: bool = True,
                 device=None, dtype=None):
        if function not in self.FUNCTIONS:
            raise ValueError(f"unknown squashing function {function!r}; choose one of: {', '.join(self.FUNCTIONS)}")
        super().__init__(normalized_shape, channels_last, alpha_init, elementwise_affine, bias, learn_alpha,
                         device, dtype)
        self.function = function
        self.reset_parameters()

    def squash(self, x: torch.Tensor) -> torch.Tensor:
        return self.FUNCTIONS[self.function](self.alpha * x)

    def extra_repr(self) -> str:
        return f"function={self.function}, " + super().extra_repr()


class Derf(ElementwiseNorm):
    """Derf ("Stronger Normalization-Free Transformers", arXiv 2512.10938): ``weight * erf(alpha*x + s) + bias``.

    ``s`` is one learnable scalar shift per layer, init 0 (with alpha0 0.5, as DyT). Eager: one erf, an FMA and
    the affine, which ``torch.compile`` fuses; no hand-written kernel until a GPU benchmark says it matters.
    """

    def __init__(self, normalized_shape, channels_last: bool = True, alpha_init: float = 0.5,
                 elementwise_affine: bool = True, bias: bool = True, learn_alpha: bool = True,
                 device=None, dtype=None):
        super().__init__(normalized_shape, channels_last, alpha_init, elementwise_affine, bias, learn_alpha,
                         device, dtype)
        self.shift = nn.Parameter(torch.empty(1, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if hasattr(self, "shift"):  # the base __init__ does not call this; subclasses do once all exist
            with torch.no_grad():
                self.shift.zero_()

    def squash(self, x: torch.Tensor) -> torch.Tensor:
        return torch.erf(self.alpha * x + self.shift)


class DyISRU(ElementwiseNorm):
    """DyISRU (arXiv 2503.21708), the exact element-wise counterpart of RMSNorm:
    ``weight * sqrt(C) * x / sqrt(beta + x^2) + bias`` over C channels.

    Parameterised by ``alpha = sqrt(C / beta)`` (so ``beta = C / alpha^2`` stays positive and ``alpha`` means what
    it means for DyT: the slope at 0; alpha0 0.5 by default): ``alpha*x / sqrt(1 + (alpha*x)^2 / C)``, linear near
    0 and saturating at +-sqrt(C), where RMSNorm saturates for a one-hot input. Eager, as ``Derf``.
    """

    def __init__(self, normalized_shape, channels_last: bool = True, alpha_init: float = 0.5,
                 elementwise_affine: bool = True, bias: bool = True, learn_alpha: bool = True,
                 device=None, dtype=None):
        super().__init__(normalized_shape, channels_last, alpha_init, elementwise_affine, bias, learn_alpha,
                         device, dtype)
        self.channels = math.prod(self.normalized_shape)  # C of RMSNorm's sqrt(C) / ||x||
        self.reset_parameters()

    def squash(self, x: torch.Tensor) -> torch.Tensor:
        ax = self.alpha * x
        return ax * torch.rsqrt(1 + ax * ax / self.channels)


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


def _elementwise(cls, **fixed):
    """A constructor for an ElementwiseNorm kind (eps is a statistics-based option: no use here)."""
    def make(dim, channels_last=True, eps=None, alpha_init=0.5, elementwise_affine=True, bias=True,
             learn_alpha=True, **factory):
        return cls(dim, channels_last=channels_last, alpha_init=alpha_init, elementwise_affine=elementwise_affine,
                   bias=bias, learn_alpha=learn_alpha, **fixed, **factory)
    return make


def _no_norm(dim, channels_last=True, eps=None, elementwise_affine=True, bias=True, **factory):
    return nn.Identity()


#: kind -> constructor(dim, channels_last=, eps=, elementwise_affine=, bias=, [alpha_init=, learn_alpha=], device=, dtype=)
NORM_KINDS: dict[str, Callable[..., nn.Module]] = {
    "layernorm": _layernorm,
    "rmsnorm": _rmsnorm,
    "dyt": _elementwise(DynamicTanh),
    # Table 8 / 9: DyT with tanh swapped for another function (learn_alpha=False: Table 9's "without alpha")
    "dyt_hardtanh": _elementwise(DynamicSquash, function="hardtanh"),
    "dyt_sigmoid": _elementwise(DynamicSquash, function="sigmoid"),
    "dyt_identity": _elementwise(DynamicSquash, function="identity"),
    "derf": _elementwise(Derf),
    "dyisru": _elementwise(DyISRU),
    "identity": _no_norm,  # no layer at all
}
#: the kinds that are ElementwiseNorm layers (alpha per layer, no statistics): what the paper's DyT-specific
#: options (LLaMA's per-site alpha0 and embedding scale, DiT's zero-init removal) apply to
ELEMENTWISE_KINDS = frozenset({"dyt", "dyt_hardtanh", "dyt_sigmoid", "dyt_identity", "derf", "dyisru"})
#: the normalization-free methods of Table 10: not a layer at a norm site but a change to the whole model (norms
#: removed, residual branches or weights changed), which `dyt.convert_norms` applies to timm ViTs and MAE
NORM_FREE = ("fixup", "skipinit", "sigma_reparam")


def build_norm(kind: str, dim, *, channels_last: bool = True, eps: float | None = None,
               alpha_init: float | None = None, learn_alpha: bool = True, elementwise_affine: bool = True,
               bias: bool = True, device=None, dtype=None) -> nn.Module:
    """The one factory for every normalization site of our own models.

    ``eps`` applies to layernorm/rmsnorm (default 1e-6), ``alpha_init`` (default 0.5) and ``learn_alpha`` to the
    element-wise kinds; each kind ignores the options it has no use for, so a model passes the same arguments
    whatever the norm.
    """
    if kind in NORM_FREE:
        raise ConfigError(f"norm={kind} is a method on a whole Transformer (its residual blocks or its weights), not a "
                          "layer at one norm site: it applies to timm ViT / MAE models (dyt.convert_norms), not to "
                          "a model that builds its own norm sites")
    if kind not in NORM_KINDS:
        raise ConfigError(f"unknown norm kind {kind!r}; choose one of: {', '.join(sorted(NORM_KINDS))}")
    options = {"channels_last": channels_last, "elementwise_affine": elementwise_affine, "bias": bias,
               "device": device, "dtype": dtype}
    if eps is not None:
        options["eps"] = eps
    if kind in ELEMENTWISE_KINDS:
        options["learn_alpha"] = learn_alpha
        if alpha_init is not None:
            options["alpha_init"] = alpha_init
    return NORM_KINDS[kind](dim, **options)
