"""Swap the normalization layers of any model for another kind (DyT by default), in place.

This is how timm models get DyT, as in the paper's code: build the model with its LayerNorms, then replace
each one. Channels-first norms (timm's ``LayerNorm2d``, ConvNeXt's stem and downsample) become channels-first
DyT. The new layer keeps the old one's device, dtype, affine and bias flags (an RMSNorm, which has no bias,
becomes ``weight * tanh(alpha * x)`` as in the paper's LLaMA). BatchNorm and GroupNorm are left alone.
"""
from __future__ import annotations

from typing import Callable, Union

import torch.nn as nn

from dyt.nn.norms import LayerNorm2d, RMSNorm2d, build_norm

__all__ = ["convert_norms", "is_norm"]

AlphaInit = Union[float, Callable[[str], float]]


def _timm_classes(*names: str) -> tuple[type, ...]:
    try:
        import timm.layers as tl
    except ImportError:  # timm is a dependency, but the converter itself does not need it
        return ()
    return tuple(getattr(tl, n) for n in names if hasattr(tl, n))


_CHANNELS_FIRST = (LayerNorm2d, RMSNorm2d) + _timm_classes("LayerNorm2d", "RmsNorm2d", "SimpleNorm2d")
_RMS_LIKE = (nn.RMSNorm,) + _timm_classes("RmsNorm", "RmsNorm2d", "SimpleNorm", "SimpleNorm2d")


def _is_hf_rmsnorm(module: nn.Module) -> bool:
    # Hugging Face models define their own RMSNorm class per architecture (LlamaRMSNorm, MistralRMSNorm, ...).
    return type(module).__name__.lower().endswith("rmsnorm") and isinstance(getattr(module, "weight", None), nn.Parameter)


def is_norm(module: nn.Module) -> bool:
    """True for the normalization layers `convert_norms` replaces."""
    return isinstance(module, (nn.LayerNorm,) + _RMS_LIKE) or _is_hf_rmsnorm(module)


def _channels(module: nn.Module) -> int:
    shape = getattr(module, "normalized_shape", None)
    if shape is None:  # Hugging Face RMSNorm keeps only its weight
        shape = module.weight.shape
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if len(shape) != 1:
        raise ValueError(f"cannot convert a norm over several dims {shape} ({type(module).__name__})")
    return shape[0]


def _replacement(module: nn.Module, kind: str, alpha_init: float) -> nn.Module:
    weight = getattr(module, "weight", None)
    bias = getattr(module, "bias", None)
    ref = next(module.parameters(), None)
    rms = isinstance(module, _RMS_LIKE) or _is_hf_rmsnorm(module)
    new = build_norm(
        kind, _channels(module),
        channels_last=not isinstance(module, _CHANNELS_FIRST),
        eps=getattr(module, "eps", None) or getattr(module, "variance_epsilon", None),
        alpha_init=alpha_init,
        elementwise_affine=weight is not None,
        bias=isinstance(bias, nn.Parameter) and not rms,
        device=ref.device if ref is not None else None,
        dtype=ref.dtype if ref is not None else None,
    )
    return new


def convert_norms(model: nn.Module, kind: str = "dyt", alpha_init: AlphaInit = 0.5) -> nn.Module:
    """Replace every LayerNorm / RMSNorm in ``model`` by ``build_norm(kind, ...)``; returns the model.

    ``alpha_init`` is a float for every site, or a function of the module's dotted path (e.g. the LLaMA
    per-site values: ``lambda path: 0.8 if "attention_norm" in path else 0.2``). A model that is itself a
    norm is returned converted.
    """
    def alpha_for(path: str) -> float:
        return alpha_init(path) if callable(alpha_init) else alpha_init

    if is_norm(model):
        return _replacement(model, kind, alpha_for(""))
    targets = [(path, m) for path, m in model.named_modules() if path and is_norm(m)]
    for path, module in targets:
        parent_path, _, child = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, child, _replacement(module, kind, alpha_for(path)))
    return model
