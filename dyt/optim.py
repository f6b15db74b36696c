"""AdamW (or SGD for the CNN recipes) with the paper's weight-decay rule, and warmup + cosine through timm's scheduler.

Two switches exist for the LLaMA recipe, whose released code (fms-fsdp, as modified in jiachenzhu/DyT) differs
from the vision recipes:
  optim.decay_1d      the released LLaMA code builds AdamW on ``model.parameters()`` with weight decay 0.1, so
                      every parameter is decayed: alpha, norm weights, the embedding scale, biases.
  optim.warmup_shape  ``quadratic``: lr * (1 - (1 - s/w)^2) over the warmup, the released LLaMA schedule;
                      ``linear``: lr * s/w, timm's (and the vision recipes').
  optim.cosine_steps  where the cosine reaches ``lr * min_lr_ratio``: null = the run's last step (the paper's text);
                      the released LLaMA code's cosine spans fms-fsdp's default ``num_steps`` of 1,000,000 steps,
                      whatever the run's length, so its 47,684-step runs end at ~0.995x the peak lr.

Muon (``optim.name=muon``, Keller Jordan's recipe, as arXiv 2604.01563 runs it): torch's ``torch.optim.Muon`` for
the 2-D weights of the repeated blocks, AdamW for the rest (embeddings, the head, 1-D parameters), as one optimizer
(`MuonWithAdamW`): one ``param_groups`` list, so the schedule sets every group's lr, and one ``state_dict()``, so a
checkpoint resumes both exactly.

One more for fine-tuning (MAE's recipe, util/lr_decay.py in facebookresearch/mae):
  optim.layer_decay   layer-wise lr decay: the embeddings get lr x decay^(L+1), block i lr x decay^(L-i), the head
                      and final norms lr (L blocks). timm's ``param_groups_layer_decay`` builds the groups (each with
                      its ``lr_scale``; MAE's ``param_groups_lrd`` gives the same scales, tests/test_optim.py) and
                      timm's scheduler multiplies every scheduled lr, min lr included, by it, as MAE's schedule does.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.optim import param_groups_layer_decay
from timm.scheduler import CosineLRScheduler

from dyt.errors import ConfigError

WARMUP_SHAPES = ("linear", "quadratic")


def param_groups(model: nn.Module, weight_decay: float, decay_1d: bool = False) -> list[dict]:
    """[decayed, not decayed] parameter groups.

    By default (the paper's vision recipes) 1-D parameters (alpha, norm weights, biases, the LLaMA embedding
    scale) and the model's own ``no_weight_decay()`` names are not decayed. With `decay_1d` every trainable
    parameter is decayed, as the released LLaMA code does; the second group is then empty (kept, so optimizer
    states always have the same two groups).
    """
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exempt = not decay_1d and (p.ndim <= 1 or name.endswith(".bias") or name in skip)
        (no_decay if exempt else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


OPTIMIZERS = ("adamw", "sgd", "muon")  # sgd: the CNN recipes of Table 15 (momentum, no Nesterov)
MUON_LR_ADJUST = ("original", "match_rms_adamw")  # torch.optim.Muon's adjust_lr_fn


def layer_decay_groups(model: nn.Module, weight_decay: float, layer_decay: float, decay_1d: bool = False) -> list[dict]:
    """Parameter groups per (layer, decayed or not), each with the ``lr_scale`` of its layer (timm's
    ``param_groups_layer_decay``: layers from the model's ``group_matcher``). Weight decay as `param_groups`:
    1-D parameters and ``no_weight_decay()`` names are not decayed unless `decay_1d`."""
    if not hasattr(model, "group_matcher"):  # timm's fallback guesses layers from module order: refuse instead
        raise ConfigError(f"optim.layer_decay: {type(model).__name__} does not say which layer each parameter is in "
                          "(no timm group_matcher()); layer-wise lr decay is for timm models (ViT, ConvNeXt)")
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    groups = param_groups_layer_decay(model, weight_decay, no_weight_decay_list=skip, layer_decay=layer_decay)
    for g in groups if decay_1d else ():  # (timm < 1.0.12 has no switch for its 1-D rule)
        g["weight_decay"] = weight_decay
    return groups


def scheduled_lr(optimizer: torch.optim.Optimizer) -> float:
    """The schedule's lr at this step: a group's lr without its layer-decay ``lr_scale`` (what train/lr logs)."""
    group = optimizer.param_groups[0]
    return group["lr"] / group.get("lr_scale", 1.0)


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    if cfg.name not in OPTIMIZERS:
        raise ConfigError(f"unknown optim.name {cfg.name!r}; choose one of: {', '.join(OPTIMIZERS)}")
    decay_1d = bool(getattr(cfg, "decay_1d", False))
    layer_decay = getattr(cfg, "layer_decay", None)
    groups = (layer_decay_groups(model, cfg.weight_decay, layer_decay, decay_1d) if layer_decay is not None
              else param_groups(model, cfg.weight_decay, decay_1d))
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.get("momentum", 0.9))
    if cfg.name == "muon":
        if layer_decay is not None:
            raise ConfigError("optim.layer_decay is for AdamW fine-tuning; optim=muon does not take it")
        return build_muon(model, cfg, groups)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def muon_names(model: nn.Module) -> set[str]:
    """The parameters Muon trains: the 2-D weights of ``nn.Linear`` layers inside the model's repeated blocks (a
    numbered module path such as ``layers.3.attention.wq``), as Keller Jordan's Muon takes ``model.blocks``' matrices.
    Embeddings, the output head (tied or not), convolutions and every 1-D parameter stay with AdamW."""
    names = set()
    for mod_name, mod in model.named_modules():
        in_block = any(part.isdigit() for part in mod_name.split("."))
        if isinstance(mod, nn.Linear) and in_block and mod.weight.requires_grad:
            names.add(f"{mod_name}.weight")
    return names


def split_for_muon(model: nn.Module, groups: list[dict]) -> tuple[list[dict], list[dict]]:
    """`groups` (param_groups' [decayed, not decayed]) split into (Muon's groups, AdamW's groups): each Muon matrix
    leaves its group for a Muon group with the same weight decay. Empty groups are kept (fixed group layout)."""
    names = muon_names(model)
    muon_ids = {id(p) for n, p in model.named_parameters() if n in names}
    muon_groups = [{**g, "params": [p for p in g["params"] if id(p) in muon_ids]} for g in groups]
    adamw_groups = [{**g, "params": [p for p in g["params"] if id(p) not in muon_ids]} for g in groups]
    return muon_groups, adamw_groups


class MuonWithAdamW(torch.optim.Optimizer):
    """torch's Muon on `muon_groups` and AdamW on `adamw_groups`, seen as ONE optimizer: ``param_groups`` is both
    optimizers' group dicts (Muon's first), ``state`` one dict both optimizers write into, so ``state_dict()`` /
    ``load_state_dict()``, ``zero_grad()``, the scheduler and the grad scaler need nothing Muon-specific."""

    def __init__(self, muon_groups: list[dict], adamw_groups: list[dict], muon_kwargs: dict, adamw_kwargs: dict):
        self.muon = torch.optim.Muon(muon_groups, **muon_kwargs)
        self.adamw = torch.optim.AdamW(adamw_groups, **adamw_kwargs)
        super().__init__(self.muon.param_groups + self.adamw.param_groups, defaults={})
        self._share()

    def _share(self) -> None:
        """Point both inner optimizers at this optimizer's group dicts and state (load_state_dict replaces both)."""
        n = len(self.muon.param_groups)
        self.muon.param_groups, self.adamw.param_groups = self.param_groups[:n], self.param_groups[n:]
        self.muon.state = self.adamw.state = self.state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._share()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss


def build_muon(model: nn.Module, cfg, groups: list[dict]) -> MuonWithAdamW:
    """Muon for the blocks' matrices at ``optim.muon_lr``, AdamW for the rest at ``optim.lr``. The schedule is
    timm's, which multiplies each group's scheduled lr by its ``lr_scale``: Muon's groups get muon_lr / lr, so one
    warmup + cosine drives both, min lr included."""
    if not hasattr(torch.optim, "Muon"):  # added in torch 2.9
        raise ConfigError(f"optim=muon needs torch.optim.Muon (torch >= 2.9); this torch is {torch.__version__}")
    adjust = cfg.get("muon_adjust_lr", "original")
    if adjust not in MUON_LR_ADJUST:
        raise ConfigError(f"unknown optim.muon_adjust_lr {adjust!r}; choose one of: {', '.join(MUON_LR_ADJUST)}")
    if cfg.lr <= 0:
        raise ConfigError("optim=muon: optim.lr (AdamW's, and the schedule's) must be > 0")
    muon_groups, adamw_groups = split_for_muon(model, groups)
    for g in muon_groups:
        g["lr_scale"] = cfg.muon_lr / cfg.lr
    return MuonWithAdamW(muon_groups, adamw_groups,
                         muon_kwargs=dict(lr=cfg.lr, momentum=cfg.momentum, nesterov=True, adjust_lr_fn=adjust),
                         adamw_kwargs=dict(lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps))


class WarmupCosineScheduler(CosineLRScheduler):
    """timm's warmup-prefixed cosine, with a choice of warmup shape.

    At update ``s`` (``step_update(s)``), with warmup ``w`` and ``x = s / w``: ``lr * x`` (linear) or
    ``lr * (1 - (1 - x)^2)`` (quadratic) while ``s < w``; then timm's cosine from ``lr`` at ``s = w`` to
    ``lr_min`` at ``s = w + t_initial``.
    """

    def __init__(self, optimizer, t_initial: int, lr_min: float, warmup_t: int, warmup_shape: str = "linear"):
        if warmup_shape not in WARMUP_SHAPES:
            raise ConfigError(f"unknown optim.warmup_shape {warmup_shape!r}; choose one of: {', '.join(WARMUP_SHAPES)}")
        self.warmup_shape = warmup_shape
        # timm warns that a cosine of t_initial = 1 "will have no effect" (it has in mind restart cycles); here it
        # is a one-update decay (lr at the first update after warmup, lr_min at the last). Build with 2, then set
        # the real length: _get_lr reads self.t_initial.
        super().__init__(optimizer, t_initial=max(2, t_initial), lr_min=lr_min, warmup_t=warmup_t,
                         warmup_lr_init=0.0, warmup_prefix=True, t_in_epochs=False)
        self.t_initial = t_initial

    def _get_lr(self, t: int) -> list[float]:
        if t < self.warmup_t and self.warmup_shape == "quadratic":
            frac = 1.0 - (1.0 - t / self.warmup_t) ** 2
            return [self.warmup_lr_init + (v - self.warmup_lr_init) * frac for v in self.base_values]
        return super()._get_lr(t)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg, total_steps: int, warmup_steps: int,
                    verbose: bool = True) -> WarmupCosineScheduler:
    """Warmup from 0 over `warmup_steps` (``cfg.warmup_shape``), then cosine to ``lr * min_lr_ratio`` at
    ``cfg.cosine_steps`` (null: `total_steps`), and ``lr * min_lr_ratio`` after it.

    The lr is a pure function of the step (``scheduler.step_update(step + 1)`` before each update), so resuming
    needs no scheduler state. A run shorter than its warmup (a smoke run of a long recipe) keeps a cosine phase:
    the warmup becomes a tenth of the run, said in one line when `verbose` (the main process).
    """
    if warmup_steps >= total_steps:
        shortened = total_steps // 10
        if verbose:
            print(f"[dyt] warmup of {warmup_steps} steps >= the run's {total_steps} steps; warming up over "
                  f"{shortened} steps instead", flush=True)
        warmup_steps = shortened
    horizon = getattr(cfg, "cosine_steps", None) or total_steps
    if horizon <= warmup_steps:
        raise ConfigError(f"optim.cosine_steps={horizon} must be larger than the warmup ({warmup_steps} steps)")
    return WarmupCosineScheduler(optimizer, t_initial=horizon - warmup_steps,
                                 lr_min=cfg.lr * cfg.min_lr_ratio, warmup_t=warmup_steps,
                                 warmup_shape=getattr(cfg, "warmup_shape", "linear"))
