"""sigmaReparam (Zhai et al., ICML 2023, "Stabilizing Transformer Training by Preventing Attention Entropy
Collapse"; github.com/apple/ml-sigma-reparam): every linear weight is used as ``W_hat = gamma / sigma(W) * W``.

``sigma(W)`` is W's spectral norm, estimated by power iteration: ONE step per forward from the stored right
singular vector ``u`` (a buffer, so checkpoints and resumes carry it), stored back only in training mode, with no
gradient through ``u`` / ``v`` (the gradient flows through ``sigma = v^T W u`` to W). ``gamma`` is a learnable
scalar initialised, as in the authors' code, to W's exact top singular value (an SVD at construction, which also
gives ``u``), so that ``W_hat = W`` at init. Convolutions use their weight as an (out, in x kh x kw) matrix.
Hence no ``trainer.init=meta`` (shards initialised in place never hold the initial weights) and no activation
checkpointing (a recomputed forward would take a second step): `dyt.validate` refuses both.

As the authors' ViT recipe (its README: ``remove_all_normalization_layers(convert_to_sn(vit))``) the model also
loses every normalization layer: this is a normalization-free method (DyT's Table 10). Unlike that code we keep the
model's own weight initialisation (for timm ViT's linear layers it is the same truncated normal, std 0.02).

Implemented as a ``torch.nn.utils.parametrize`` parametrization (not torch's ``spectral_norm``: that has no
gamma, starts from 15 random power steps rather than the SVD, and keeps its vectors in private attributes).
Every rank computes the same step from the same weights and ``u`` (DDP also broadcasts buffers from rank 0).
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from dyt.errors import ConfigError

__all__ = ["SpectralReparam", "sigma_reparam", "REPARAMETRIZED"]

#: the layers whose weight is reparametrised (the authors' convert_to_sn: Linear and Conv2d)
REPARAMETRIZED = (nn.Linear, nn.Conv2d)


def _precise(dtype: torch.dtype) -> torch.dtype:
    """The power iteration's dtype: fp32 at least (bf16 / fp16 weights), float64 stays float64."""
    return torch.promote_types(dtype, torch.float32)


class SpectralReparam(nn.Module):
    """The parametrization ``W -> gamma * W / sigma(W)`` of one weight (register it with `sigma_reparam`)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        factory = {"device": weight.device, "dtype": _precise(weight.dtype)}
        self.register_buffer("u", torch.empty(weight[0].numel(), **factory))
        self.gamma = nn.Parameter(torch.empty(1, **factory))  # shape (1,), as DyT's alpha: FSDP2 shards dim 0
        if weight.device.type != "meta":  # a meta build gets its values from rank 0's build (trainer.init=exact)
            self.init_from(weight)

    @torch.no_grad()
    def init_from(self, weight: torch.Tensor) -> None:
        """u = W's top right singular vector, gamma = its top singular value (so W_hat = W)."""
        _, s, vh = torch.linalg.svd(weight.detach().flatten(1).to(self.u.dtype), full_matrices=False)
        self.u.copy_(vh[0])
        self.gamma.fill_(s[0])

    def sigma(self, weight: torch.Tensor) -> torch.Tensor:
        """One power-iteration step from ``u``; ``v^T W u`` with u, v held constant (stored in training mode)."""
        w = weight.flatten(1).to(_precise(weight.dtype))
        u = self.u.to(w.dtype)
        with torch.no_grad():
            v = F.normalize(w @ u, dim=0)
            u = F.normalize(w.t() @ v, dim=0)
            if self.training:
                self.u.copy_(u)
        return v @ w @ u

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        device = weight.device.type  # sigma in fp32 whatever the autocast (the meta device has none)
        with torch.autocast(device, enabled=False) if torch.amp.is_autocast_available(device) else nullcontext():
            scale = self.gamma / self.sigma(weight)
        return weight * scale.to(weight.dtype)


def sigma_reparam(model: nn.Module) -> nn.Module:
    """Reparametrise the weight of every Linear / Conv2d of `model` (in place; returns it). The caller removes the
    normalization layers (`dyt.nn.convert_norms(model, "sigma_reparam")` does both)."""
    layers = [m for m in model.modules() if isinstance(m, REPARAMETRIZED) and not parametrize.is_parametrized(m)]
    if not layers:
        raise ConfigError(f"norm=sigma_reparam: {type(model).__name__} has no Linear or Conv2d layer to reparametrise")
    for m in layers:
        # unsafe: skip torch's check call, which would run (and store) one power step at construction
        parametrize.register_parametrization(m, "weight", SpectralReparam(m.weight), unsafe=True)
    return model
