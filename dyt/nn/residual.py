"""The initialization-based normalization-free methods of DyT's Table 10, on pre-norm Transformer blocks.

Both work on the residual branches ``x + ls(branch(norm(x)))`` of timm's ViT ``Block`` (MAE's encoder and decoder
use the same block): ``norm1`` / ``norm2`` sit right before each branch and the LayerScale slots ``ls1`` / ``ls2``
(``nn.Identity`` unless timm's ``init_values`` is set) right on its output, the seams these methods need.

SkipInit (De & Smith, NeurIPS 2020): no normalization; a learnable scalar on each residual branch, initialised at
0 (``ls = ScalarScale(0)``), so every block is the identity at init. The other norms (final / fc_norm) are removed.

Fixup (Zhang, Dauphin & Ma, ICLR 2019), as its authors adapted it to Transformers (their fairseq code, read for
behaviour): no normalization; the last layer of each branch (attention ``proj``, MLP ``fc2``) and the classifier
zero-initialised, so every block is the identity at init; the other weight layers of a branch scaled by
``L ** (-1 / (2m - 2))`` (L residual branches in the model; m = 2 for the MLP, and m = 4 for attention, whose
q.k.v product plus projection the authors' code counts as 4 layers: ``L ** (-1/6)`` on ``qkv``); a scalar bias
(init 0) before each branch and before ``fc2`` (the norm slots ``norm1`` / ``norm2`` / ``mlp.norm``) and a scalar
multiplier (init 1) on each branch's output (``ls``). The final norm becomes a scalar bias then a multiplier. The
linear layers keep timm's per-channel biases (zero at init; the authors' code has none).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from dyt.errors import ConfigError

__all__ = ["ScalarShift", "ScalarScale", "residual_blocks", "fixup", "skipinit", "fixup_scale"]

#: what a pre-norm residual block must have for these methods (timm's ViT Block)
BLOCK_SLOTS = ("norm1", "attn", "ls1", "norm2", "mlp", "ls2")


class ScalarShift(nn.Module):
    """``x + bias``: one learnable scalar, init 0 (Fixup's scalar bias)."""

    def __init__(self, device=None, dtype=None):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, device=device, dtype=dtype))

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


class ScalarScale(nn.Module):
    """``scale * x``: one learnable scalar, init `init` (SkipInit's 0, Fixup's 1)."""

    def __init__(self, init: float, device=None, dtype=None):
        super().__init__()
        self.init = float(init)
        self.scale = nn.Parameter(torch.full((1,), self.init, device=device, dtype=dtype))

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.scale.fill_(self.init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale

    def extra_repr(self) -> str:
        return f"init={self.init}"


def residual_blocks(model: nn.Module, method: str) -> list[nn.Module]:
    """The pre-norm residual blocks of `model` (every module with `BLOCK_SLOTS`); a clear error when none."""
    blocks = [m for m in model.modules() if all(hasattr(m, s) for s in BLOCK_SLOTS)]
    if not blocks:
        raise ConfigError(f"norm={method} acts on pre-norm Transformer blocks (timm's ViT Block: "
                          f"{', '.join(BLOCK_SLOTS)}); {type(model).__name__} has none (ViT and MAE models do)")
    return blocks


def _factory(module: nn.Module) -> dict:
    p = next(module.parameters(), None)
    return {"device": p.device, "dtype": p.dtype} if p is not None else {}


def _layer(block: nn.Module, path: str, method: str) -> nn.Linear:
    try:
        layer = block.get_submodule(path)
    except AttributeError:
        layer = None
    if not isinstance(layer, nn.Linear):
        raise ConfigError(f"norm={method}: expected a Linear at {path} of {type(block).__name__} (timm's Attention / "
                          f"Mlp), found {type(layer).__name__}")
    return layer


def fixup_scale(branches: int, layers: int) -> float:
    """Fixup's rescaling of the non-last weight layers of a branch: ``L ** (-1 / (2m - 2))``."""
    return branches ** (-1.0 / (2 * layers - 2))


NormReplacer = Callable[[Callable[[nn.Module], nn.Module]], None]  # replace_norms(make): each other norm -> make(norm)


def skipinit(model: nn.Module, replace_norms: NormReplacer) -> nn.Module:
    """SkipInit on `model` in place: each branch gets ``ScalarScale(0)``; every other norm goes
    (``replace_norms(make)`` replaces each norm left by ``make(norm)``; `dyt.nn.convert_norms` passes its own)."""
    for block in residual_blocks(model, "skipinit"):
        f = _factory(block)
        block.norm1, block.norm2 = nn.Identity(), nn.Identity()
        block.ls1, block.ls2 = ScalarScale(0.0, **f), ScalarScale(0.0, **f)
    replace_norms(lambda norm: nn.Identity())
    return model


@torch.no_grad()
def fixup(model: nn.Module, replace_norms: NormReplacer) -> nn.Module:
    """Fixup on `model` in place (see the module docstring); `replace_norms` as for `skipinit`."""
    blocks = residual_blocks(model, "fixup")
    branches = 2 * len(blocks)
    for block in blocks:
        f = _factory(block)
        qkv, proj = _layer(block, "attn.qkv", "fixup"), _layer(block, "attn.proj", "fixup")
        fc1, fc2 = _layer(block, "mlp.fc1", "fixup"), _layer(block, "mlp.fc2", "fixup")
        qkv.weight.mul_(fixup_scale(branches, 4))
        fc1.weight.mul_(fixup_scale(branches, 2))
        for last in (proj, fc2):
            last.weight.zero_()
            if last.bias is not None:
                last.bias.zero_()
        block.norm1, block.norm2 = ScalarShift(**f), ScalarShift(**f)
        if hasattr(block.mlp, "norm"):  # timm's Mlp: the slot between the activation and fc2
            block.mlp.norm = ScalarShift(**f)
        block.ls1, block.ls2 = ScalarScale(1.0, **f), ScalarScale(1.0, **f)
    replace_norms(lambda norm: nn.Sequential(ScalarShift(**_factory(norm)), ScalarScale(1.0, **_factory(norm))))
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(head, nn.Linear):  # Fixup zero-initialises the classification layer too
        head.weight.zero_()
        if head.bias is not None:
            head.bias.zero_()
    return model
