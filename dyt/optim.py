"""AdamW with the paper's weight-decay rule, and warmup + cosine through timm's scheduler."""
from __future__ import annotations

import warnings

import torch
import torch.nn as nn
from timm.scheduler import CosineLRScheduler

from dyt.errors import ConfigError


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on 1-D parameters (alpha, norm weights, biases) nor on the model's own skip list."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    if cfg.name != "adamw":
        raise ConfigError(f"unknown optim.name {cfg.name!r}; choose one of: adamw")
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg, total_steps: int, warmup_steps: int) -> CosineLRScheduler:
    """Linear warmup from 0 over `warmup_steps`, then cosine to ``lr * min_lr_ratio`` at `total_steps`.

    The lr is a pure function of the step (``scheduler.step_update(step + 1)`` before each update), so resuming
    needs no scheduler state.
    """
    if warmup_steps >= total_steps:  # e.g. a short smoke run of a long recipe: keep a cosine phase
        warnings.warn(f"warmup ({warmup_steps} steps) >= training ({total_steps} steps); "
                      f"using {total_steps // 10} warmup steps", stacklevel=2)
        warmup_steps = total_steps // 10
    return CosineLRScheduler(optimizer, t_initial=max(1, total_steps - warmup_steps), lr_min=cfg.lr * cfg.min_lr_ratio,
                             warmup_t=warmup_steps, warmup_lr_init=0.0, warmup_prefix=True, t_in_epochs=False)
