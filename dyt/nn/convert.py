"""Swap the normalization layers of any model for another kind (DyT by default), in place.

This is how timm models get DyT, as in the paper's code: build the model with its LayerNorms, then replace
each one. Channels-first norms (timm's ``LayerNorm2d``, ConvNeXt's stem and downsample) become channels-first
DyT. The new layer keeps the old one's device, dtype, affine and bias flags (an RMSNorm, which has no bias,
becomes ``weight * tanh(alpha * x)`` as in the paper's LLaMA). ``replace`` names the families replaced:
LayerNorm and RMSNorm by default; ``("batchnorm",)`` is the paper's Table 15 (BatchNorm2d in ResNet / VGG ->
channels-first DyT). GroupNorm is always left alone.

The normalization-free methods of the paper's Table 10 (`NORM_FREE`: fixup, skipinit, sigma_reparam) are not one
layer per norm site: they remove the norms AND change the residual branches or the weights, so `convert_norms`
hands the whole model to them (dyt/nn/residual.py, dyt/nn/sigma_reparam.py).
"""
from __future__ import annotations

import sys
from typing import Callable, Union

import torch.nn as nn

from dyt.nn.norms import NORM_FREE, LayerNorm2d, RMSNorm2d, build_norm
from dyt.nn.residual import fixup, skipinit
from dyt.nn.sigma_reparam import sigma_reparam

__all__ = ["apply_norm", "convert_norms", "is_norm", "is_channels_first", "norm_family", "NORM_FAMILIES", "NORM_FREE"]

AlphaInit = Union[float, Callable[[str], float]]


def _timm_classes(*names: str) -> tuple[type, ...]:
    """timm's norm classes of these names, looked up only where timm is already imported: a model can hold a
    timm layer only then, and importing dyt.nn stays free of timm (validating a config imports it)."""
    tl = sys.modules.get("timm.layers")
    return tuple(getattr(tl, n) for n in names if hasattr(tl, n)) if tl is not None else ()


def _channels_first() -> tuple[type, ...]:
    return (LayerNorm2d, RMSNorm2d) + _timm_classes("LayerNorm2d", "RmsNorm2d", "SimpleNorm2d")


def _rms_like() -> tuple[type, ...]:
    return (nn.RMSNorm,) + _timm_classes("RmsNorm", "RmsNorm2d", "SimpleNorm", "SimpleNorm2d")


#: what ``replace=`` may name
NORM_FAMILIES = ("layernorm", "rmsnorm", "batchnorm")


def _is_hf_rmsnorm(module: nn.Module) -> bool:
    # Hugging Face models define their own RMSNorm class per architecture (LlamaRMSNorm, MistralRMSNorm, ...).
    return type(module).__name__.lower().endswith("rmsnorm") and isinstance(getattr(module, "weight", None), nn.Parameter)


def norm_family(module: nn.Module) -> str | None:
    """``layernorm`` / ``rmsnorm`` / ``batchnorm`` for the layers `convert_norms` can replace, else None."""
    if isinstance(module, _rms_like()) or _is_hf_rmsnorm(module):
        return "rmsnorm"
    if isinstance(module, nn.LayerNorm):
        return "layernorm"
    if isinstance(module, nn.BatchNorm2d):  # timm's BatchNormAct2d too (its activation is kept, see _replacement)
        return "batchnorm"
    return None


def is_channels_first(module: nn.Module) -> bool:
    """True for norms over dim 1 of an NCHW tensor (LayerNorm2d / RMSNorm2d / BatchNorm2d / channels-first DyT)."""
    return isinstance(module, _channels_first() + (nn.BatchNorm2d,)) or getattr(module, "channels_last", True) is False


def is_norm(module: nn.Module, replace: tuple[str, ...] = ("layernorm", "rmsnorm")) -> bool:
    """True for the normalization layers `convert_norms(..., replace=replace)` replaces."""
    return norm_family(module) in replace


def _channels(module: nn.Module) -> int:
    if isinstance(module, nn.BatchNorm2d):
        return module.num_features
    shape = getattr(module, "normalized_shape", None)
    if shape is None:  # Hugging Face RMSNorm keeps only its weight
        shape = module.weight.shape
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if len(shape) != 1:
        raise ValueError(f"cannot convert a norm over several dims {shape} ({type(module).__name__})")
    return shape[0]


def _replacement(module: nn.Module, kind: str, alpha_init: float, learn_alpha: bool) -> nn.Module:
    weight = getattr(module, "weight", None)
    bias = getattr(module, "bias", None)
    # device / dtype from a parameter, else a float buffer (an affine-free BatchNorm has only its running stats)
    ref = next((t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()), None)
    family = norm_family(module)
    new = build_norm(
        kind, _channels(module),
        channels_last=not is_channels_first(module),
        eps=getattr(module, "eps", None) or getattr(module, "variance_epsilon", None),
        alpha_init=alpha_init, learn_alpha=learn_alpha,
        elementwise_affine=isinstance(weight, nn.Parameter),
        bias=isinstance(bias, nn.Parameter) and family != "rmsnorm",
        device=ref.device if ref is not None else None,
        dtype=ref.dtype if ref is not None else None,
    )
    # timm's BatchNormAct2d is norm + dropout + activation in one module: keep what follows the norm
    tail = [m for m in (getattr(module, "drop", None), getattr(module, "act", None))
            if m is not None and not isinstance(m, nn.Identity)]
    return nn.Sequential(new, *tail) if tail else new


def _replace_each(model: nn.Module, replace: tuple[str, ...], make: Callable[[str, nn.Module], nn.Module]) -> None:
    """Every norm of the `replace` families below `model` becomes ``make(path, norm)``."""
    targets = [(path, m) for path, m in model.named_modules() if path and is_norm(m, replace)]
    for path, module in targets:
        parent_path, _, child = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, child, make(path, module))


def _convert_norm_free(model: nn.Module, kind: str, replace: tuple[str, ...]) -> nn.Module:
    def replace_norms(make: Callable[[nn.Module], nn.Module]) -> None:  # the norms the method does not place itself
        _replace_each(model, replace, lambda _, norm: make(norm))

    if kind == "sigma_reparam":
        replace_norms(lambda norm: nn.Identity())  # the authors' recipe drops every norm
        return sigma_reparam(model)
    return {"fixup": fixup, "skipinit": skipinit}[kind](model, replace_norms)


def convert_norms(model: nn.Module, kind: str = "dyt", alpha_init: AlphaInit = 0.5, *, learn_alpha: bool = True,
                  replace: tuple[str, ...] = ("layernorm", "rmsnorm")) -> nn.Module:
    """Replace every norm of the ``replace`` families in ``model`` by ``build_norm(kind, ...)``; returns the model.

    ``alpha_init`` is a float for every site, or a function of the module's dotted path (e.g. the LLaMA
    per-site values: ``lambda path: 0.8 if "attention_norm" in path else 0.2``). ``learn_alpha=False`` fixes
    alpha (Table 9). ``replace``: any of ``layernorm``, ``rmsnorm``, ``batchnorm``. A model that is itself a
    norm is returned converted. A `NORM_FREE` kind converts the whole model (its norms removed, its residual
    branches or weights changed as the method says).
    """
    unknown = set(replace) - set(NORM_FAMILIES)
    if unknown:
        raise ValueError(f"convert_norms(replace=...) got {sorted(unknown)}; choose from: {', '.join(NORM_FAMILIES)}")

    def swap(path: str, module: nn.Module) -> nn.Module:
        return _replacement(module, kind, alpha_init(path) if callable(alpha_init) else alpha_init, learn_alpha)

    if kind in NORM_FREE:
        return _convert_norm_free(model, kind, replace)
    if is_norm(model, replace):
        return swap("", model)
    _replace_each(model, replace, swap)
    return model


def apply_norm(model: nn.Module, model_cfg, norm_cfg) -> nn.Module:
    """Swap the model's own norms (``model.norm_sites``) for the configured kind (a no-op for the baseline)."""
    sites = model_cfg.get("norm_sites", "layernorm")  # .get: run configs written before the key existed
    if norm_cfg.name == sites:
        return model
    return convert_norms(model, kind=norm_cfg.name, alpha_init=norm_cfg.alpha_init,
                         learn_alpha=norm_cfg.get("learn_alpha", True), replace=(sites,))
