"""``norm.alpha_init=auto``: each element-wise norm site's alpha0 set from one probe batch before training.

The paper's Fig. 8: a trained DyT's alpha tracks 1 / std of its input. `auto` starts there: alpha0 = k / std of
the site's input (``norm.alpha_k``, one k for every site), so each site first sees alpha x of std k. The stds come
from ONE forward (no grad) of the freshly built model, every site still at the placeholder `PLACEHOLDER` (a later
site's input depends on an earlier site's alpha: the stds are those of the built model, not re-measured after
each site is set). Each value is clamped to `ALPHA_RANGE`.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
from omegaconf import OmegaConf

AUTO = "auto"
#: the alpha0 the model is built with under `auto`, until the probe replaces it (the paper's default)
PLACEHOLDER = 0.5
#: alpha0 = k / std is clamped here: an all-zero input (std 0, e.g. a zero-initialised branch) would give inf, and a
#: very spread input a vanishing alpha; 1e-3 .. 1e3 keeps tanh's argument scale within six orders of magnitude.
ALPHA_RANGE = (1e-3, 1e3)


def is_auto(norm_cfg) -> bool:
    return norm_cfg.get("alpha_init") == AUTO


def buildable(norm_cfg):
    """The norm config the model builders take: under `auto`, alpha0 = `PLACEHOLDER` (the probe sets the real one)."""
    if not is_auto(norm_cfg):
        return norm_cfg
    out = OmegaConf.create(OmegaConf.to_container(norm_cfg))
    out.alpha_init = PLACEHOLDER
    return out


@torch.no_grad()
def probe_alpha0(model: nn.Module, forward: Callable[[], object], k: float) -> dict[str, float]:
    """``{site: alpha0}`` of every element-wise norm site of `model`: k / std of its input on `forward()` (one
    forward of the model on a probe batch), by `dyt.analysis.InputStdProbe` (its stds are averaged over ranks; rank
    0's result is broadcast, so every rank sets the same values). Does not change the model."""
    from dyt import distributed as D
    from dyt.analysis import InputStdProbe, elementwise_norms  # dyt.analysis imports dyt.nn
    sites = [name for name, _ in elementwise_norms(model)]
    with InputStdProbe(model) as probe:
        forward()
    stds = {k_[len("std/"):]: v for k_, v in probe.metrics().items() if k_.startswith("std/")}
    missing = [s for s in sites if s not in stds]
    if missing:  # a compiled model ignores the hooks; a site the forward never ran has no input
        raise RuntimeError(f"norm.alpha_init=auto: no input reached {len(missing)} norm site(s) in the probe forward "
                           f"(first: {missing[0]}); set norm.alpha_init to a number")
    lo, hi = ALPHA_RANGE
    alphas = {s: min(max(k / stds[s], lo), hi) if stds[s] > 0 else hi for s in sites}
    return D.broadcast_object(alphas)


@torch.no_grad()
def set_alpha0(model: nn.Module, alphas: dict[str, float]) -> None:
    """Sets each element-wise site's alpha (a parameter, or a buffer with learn_alpha=false) and its ``alpha_init``
    (what reset_parameters() refills) to ``alphas[site]``; under FSDP2 its shard (a DTensor)."""
    from dyt.analysis import elementwise_norms
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # its older home
        from torch.distributed._composable.fsdp import FSDPModule
    for m in model.modules():  # FSDP2 leaves the last block gathered after a forward: the value set must be the shard
        if isinstance(m, FSDPModule):
            m.reshard()
    for name, m in elementwise_norms(model):
        m.alpha_init = float(alphas[name])
        m.alpha.fill_(m.alpha_init)
