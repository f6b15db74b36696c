"""The paper's analysis of what normalization layers do, as data (`scripts/figures.py` draws the figures).

- `InputStdProbe`: the std of each element-wise norm layer's input during training, logged as ``std/<module path>``
  beside ``alpha/<module path>`` (Fig. 8: alpha tracks 1/std of its input).
- `record_norm_io`: sampled (input, output, channel) points of every norm layer on one forward (Figs. 2-4: trained
  LayerNorms map inputs to outputs along tanh-like S-curves).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.distributed as torch_dist
import torch.nn as nn
import torch.nn.functional as F

from dyt import distributed as D
from dyt.nn import ElementwiseNorm, is_norm
from dyt.nn.convert import is_channels_first, norm_family
from dyt.parallel import clean_name


def elementwise_norms(model: nn.Module) -> list[tuple[str, ElementwiseNorm]]:
    """(module path without wrapper parts, layer) of every element-wise norm (DyT and its kinds, each with an
    ``alpha``): the layers named by the ``alpha/...`` and ``std/...`` metrics."""
    return [(clean_name(name), m) for name, m in model.named_modules() if isinstance(m, ElementwiseNorm)]


class InputStdProbe:
    """While open (and `enabled`), records the std of each element-wise norm layer's input in the FIRST forward
    only; `metrics()` then gives ``{"std/<module path>": value}``.

    For one training step that is logged: forward pre-hooks are added on entry and removed on exit, so other steps
    pay nothing and no extra forward runs. "First forward only" keeps the first micro-batch's value under gradient
    accumulation and when activation checkpointing re-runs a block's forward in the backward. Hooks sit on the inner
    modules, so a DDP- or FSDP2-wrapped model works; a torch.compile'd one does not call hooks added after it was
    compiled (the caller disables the probe there).
    """

    def __init__(self, model: nn.Module, enabled: bool = True):
        self.model, self.enabled = model, enabled
        self.stds: dict[str, torch.Tensor] = {}
        self._handles: list = []

    def _hook(self, name: str):
        def record(module: nn.Module, args: tuple) -> None:
            if name not in self.stds:
                self.stds[name] = args[0].detach().float().std()
        return record

    def __enter__(self) -> InputStdProbe:
        if self.enabled:
            self._handles = [m.register_forward_pre_hook(self._hook(name)) for name, m in elementwise_norms(self.model)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def metrics(self) -> dict[str, float]:
        """The recorded stds, averaged over ranks (every rank calls this on the same steps). Each rank's value comes
        from its own micro-batch: the mean is a less noisy estimate than rank 0's alone, for one all-reduce of a few
        floats per logged step. Every rank records the same layers in the same order (same model, same forward)."""
        if not self.stds:
            return {}
        names = list(self.stds)
        world = torch_dist.get_world_size() if torch_dist.is_initialized() else 1
        means = D.all_reduce_sum(torch.stack([self.stds[n] for n in names])) / world
        return {f"std/{n}": v for n, v in zip(names, means.tolist())}


# --- input/output of the norm layers (Figs. 2-4) ------------------------------------------------------------
class NormIO(NamedTuple):
    """Sampled points of one norm layer: input values, normalized outputs, channel indices (1-D, same length)."""
    input: torch.Tensor
    output: torch.Tensor
    channel: torch.Tensor


def norm_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every LayerNorm / RMSNorm (also channels-first) and element-wise norm layer, in module order."""
    return [(clean_name(name), m) for name, m in model.named_modules()
            if isinstance(m, ElementwiseNorm) or is_norm(m)]


def normalized(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's output BEFORE its learnable affine (what the paper plots), in fp32, channels last."""
    x = x.float()
    if isinstance(module, ElementwiseNorm):
        y = module.squash(x)  # element-wise: the layout does not matter
        return y.permute(0, 2, 3, 1) if is_channels_first(module) else y
    if is_channels_first(module):
        x = x.permute(0, 2, 3, 1)
    if norm_family(module) == "rmsnorm":
        eps = getattr(module, "eps", None) or getattr(module, "variance_epsilon", None) or torch.finfo(x.dtype).eps
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return F.layer_norm(x, module.normalized_shape, eps=module.eps)


@torch.no_grad()
def record_norm_io(model: nn.Module, forward_fn: Callable[[], object], max_points: int = 20_000,
                   seed: int = 0) -> dict[str, NormIO]:
    """Runs `forward_fn()` (one forward of `model`) with a hook on every norm layer (`norm_layers`) and returns, per
    layer that ran (module path -> `NormIO`), up to `max_points` points of its input and normalized output
    (`normalized`), sampled with a fixed seed; a layer called several times is recorded on its first call.

    Points are drawn with replacement: a permutation of a large model's activations would cost gigabytes, and a
    repeated point changes nothing in a scatter plot. A layer with at most `max_points` values gives all of them,
    in order (rows of the channels-last input)."""
    found: dict[str, NormIO] = {}

    def hook(name: str):
        def record(module: nn.Module, args: tuple) -> None:
            if name in found:
                return
            x = args[0].detach()
            y = normalized(module, x).flatten(0, -2)  # (values per channel, C)
            x = (x.float().permute(0, 2, 3, 1) if is_channels_first(module) else x.float()).flatten(0, -2)
            n, c = x.shape
            if n * c <= max_points:
                idx = torch.arange(n * c, device=x.device)
            else:
                g = torch.Generator(device=x.device).manual_seed(seed)
                idx = torch.randint(n * c, (max_points,), generator=g, device=x.device)
            found[name] = NormIO(x.flatten()[idx].cpu(), y.flatten()[idx].cpu(), (idx % c).cpu())
        return record

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in norm_layers(model)]
    try:
        forward_fn()
    finally:
        for h in handles:
            h.remove()
    return found
