"""Fine-tuning from another run: ``trainer.init_from`` (whose weights) and ``finetune_norm`` (with which norm).

``trainer.init_from=<run dir>`` (its newest checkpoint) or ``=<run dir>/checkpoints/step_N.pt`` (or a sharded
``step_N/``) names the *source*. Its model weights go through ITS family's ``Family.backbone`` (MAE: the encoder;
DINO: the teacher's backbone; a timm ViT: as they are) and into this run's freshly built model, the way
facebookresearch/mae's ``main_finetune.py`` loads a pre-trained checkpoint:

- every key of this model is loaded or new (listed): a classifier of another shape (``num_classes``) is new, and a
  new classifier starts as MAE's does (weight trunc_normal std 2e-5, bias 0);
- every key of the backbone is loaded or dropped (listed): DyT's ``alpha`` going into a LayerNorm model, the final
  ``norm`` that global pooling's ``fc_norm`` replaces (MAE's loader ignores the same keys: ``strict=False``);
- ``pos_embed`` is resampled (bicubic, no antialiasing, prefix tokens kept: MAE's ``interpolate_pos_embed``) when
  the patch grids differ; any other shape mismatch is an error, and so is a backbone of which nothing fits.

The source is read before the model is wrapped (DDP, or rank 0's CPU build that FSDP broadcasts into the shards).
A run that resumes from a checkpoint of its own never reads it again: the record of what was loaded (`record`)
travels in its checkpoints and ends in summary.json as ``init_from``, which is how the report pairs a fine-tuning
run with its pre-training.

``finetune_norm`` (`resolve_norm`, called once before anything is built): ``released`` builds the model with
LayerNorm whatever the source used (the released code: the DyT repo's MAE and DINO READMEs send fine-tuning to
the unpatched ``main_finetune.py``, whose ViT has LayerNorms; DyT's weight/bias load into them, alpha is dropped);
``pretrain`` builds it with the source's own norm section; null leaves ``norm=`` as composed.
"""
from __future__ import annotations

import os
import re
from functools import cached_property
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from dyt.checkpoint import load_checkpoint
from dyt.checkpoint.single_file import checksum_path
from dyt.config import NormConfig
from dyt.errors import ConfigError
from dyt.eval.load import run_config
from dyt.family import get_family
from dyt.rundir import CHECKPOINT_NAME, RunDir, read_config

FINETUNE_NORMS = ("released", "pretrain")
HEAD_STD = 2e-5  # MAE's main_finetune.py: trunc_normal_(model.head.weight, std=2e-5)


def source_paths(spec: str) -> tuple[Path, Path]:
    """(run directory, checkpoint) of ``trainer.init_from``: a run directory (its newest checkpoint) or a
    checkpoint inside one (``<run>/checkpoints/step_N.pt`` or ``step_N/``)."""
    path = Path(spec)
    if not path.exists():
        raise ConfigError(f"trainer.init_from={spec}: no such run directory or checkpoint")
    rd = RunDir(path)
    if rd.config.is_file():
        found = rd.checkpoints()
        if not found:
            raise ConfigError(f"trainer.init_from={spec}: the run has no checkpoint in {rd.checkpoints_dir}")
        return path, found[-1]
    if (CHECKPOINT_NAME.match(path.name) and path.parent.name == RunDir.CHECKPOINTS
            and RunDir(path.parent.parent).config.is_file()):
        return path.parent.parent, path
    raise ConfigError(f"trainer.init_from={spec}: neither a run directory (with config.yaml) nor a checkpoint in one "
                      f"(<run dir>/{RunDir.CHECKPOINTS}/step_N.pt)")


def describe(cfg) -> dict:
    """What the report needs to know of a source run, from its config: what it was and how it was trained."""
    return {"family": cfg.model.family, "model": cfg.model.name, "norm": cfg.norm.name,
            "alpha_init": cfg.norm.get("alpha_init"), "lr": cfg.optim.lr, "table": cfg.get("table")}


def resolve_norm(cfg: DictConfig, run_dir: Optional[Path] = None) -> None:
    """Set ``cfg.norm`` by ``finetune_norm`` (see the module's doc); the one place it is decided. One line says
    when this replaces the composed norm. A run that already recorded its config (`run_dir`) keeps the norm it
    was resolved to, so it resumes without its source."""
    how = cfg.get("finetune_norm")
    if how is None:
        return
    if how not in FINETUNE_NORMS:
        raise ConfigError(f"unknown finetune_norm {how!r}; choose one of: {', '.join(FINETUNE_NORMS)} (or null)")
    spec = cfg.trainer.get("init_from")
    if not spec:
        raise ConfigError(f"finetune_norm={how} says how to fine-tune another run: set trainer.init_from=<its run dir>")
    own = read_config(run_dir) if run_dir is not None else None
    if own and own.get("finetune_norm") == how and own.get("trainer", {}).get("init_from") == spec:
        cfg.norm = OmegaConf.merge(OmegaConf.structured(NormConfig), own["norm"])
        return
    source = run_config(source_paths(spec)[0])
    # as a NormConfig (the field's type), the schema's defaults filling what an older run's config lacks
    norm = OmegaConf.merge(OmegaConf.structured(NormConfig),
                           {"name": "layernorm"} if how == "released" else source.norm)
    if OmegaConf.to_container(norm) != OmegaConf.to_container(cfg.norm) and int(os.environ.get("RANK", "0")) == 0:
        print(f"[dyt] finetune_norm={how}: fine-tuning with norm={norm.name} (the pre-training run used "
              f"{source.norm.name}; the composed norm={cfg.norm.name} is replaced)", flush=True)
    cfg.norm = norm


def _resuming(tc, run_dir: Path) -> bool:
    """Whether the trainer will restore a checkpoint of this run (trainer.resume), so that it wins."""
    return tc.resume != "never" and (tc.resume != "auto" or bool(RunDir(run_dir).checkpoints()))


def _grouped(keys: list[str]) -> str:
    """Keys with block indices folded: ``blocks.*.norm1.alpha (x12), norm.weight``."""
    counts: dict[str, int] = {}
    for k in keys:
        pattern = re.sub(r"\.\d+\.", ".*.", k)
        counts[pattern] = counts.get(pattern, 0) + 1
    return ", ".join(p + (f" (x{n})" if n > 1 else "") for p, n in counts.items()) or "-"


def _classifier_keys(model: nn.Module) -> set[str]:
    """State-dict keys of a timm model's classifier (``pretrained_cfg['classifier']``: ``head`` for a ViT)."""
    name = getattr(model, "pretrained_cfg", {}).get("classifier")
    return {k for k in model.state_dict() if name and k.startswith(f"{name}.")}


def _resample_pos_embed(pos_embed: torch.Tensor, model: nn.Module, where: str) -> torch.Tensor:
    from timm.layers import resample_abs_pos_embed
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if grid is None:
        raise ConfigError(f"trainer.init_from: {where}'s pos_embed {tuple(pos_embed.shape)} does not fit this model's "
                          f"{tuple(model.pos_embed.shape)}, and the model has no patch grid to resample it to")
    return resample_abs_pos_embed(pos_embed, list(grid), num_prefix_tokens=getattr(model, "num_prefix_tokens", 1),
                                  interpolation="bicubic", antialias=False)


def load_backbone(model: nn.Module, weights: dict, where: str) -> dict[str, list[str]]:
    """Load `weights` (a backbone state dict) into `model` by the module's rules; returns the keys
    ``{"loaded", "new", "dropped", "resampled"}``. ConfigError (one line) on a shape mismatch or when nothing fits."""
    own = model.state_dict()
    weights = dict(weights)
    pos, resampled = weights.get("pos_embed"), []
    if pos is not None and "pos_embed" in own and pos.shape[1:] != own["pos_embed"].shape[1:]:
        if pos.shape[-1] == own["pos_embed"].shape[-1]:  # same width, another patch grid
            weights["pos_embed"], resampled = _resample_pos_embed(pos, model, where), ["pos_embed"]
    classifier = _classifier_keys(model)
    loaded, new = {}, []
    for k, v in own.items():
        if k in weights and (weights[k].shape == v.shape or k not in classifier):
            if weights[k].shape != v.shape:
                raise ConfigError(f"trainer.init_from: {where} does not fit this model: {k} is "
                                  f"{tuple(weights[k].shape)} there, {tuple(v.shape)} here")
            loaded[k] = weights[k]
        else:
            new.append(k)
    if not loaded:
        raise ConfigError(f"trainer.init_from: no key of {where}'s backbone is in this model (backbone: "
                          f"{_grouped(list(weights)[:6])} ...; model: {_grouped(list(own)[:6])} ...)")
    model.load_state_dict(loaded, strict=False)  # the keys not loaded are `new`: they keep the model's own init
    if classifier & set(new):
        head = model.get_classifier()
        nn.init.trunc_normal_(head.weight, std=HEAD_STD)
        nn.init.zeros_(head.bias)
    return {"loaded": list(loaded), "new": new, "dropped": [k for k in weights if k not in loaded],
            "resampled": resampled}


class InitFrom:
    """``trainer.init_from`` of one run: the source (its config at once; its weights when first built) and the
    record of it. `for_run` gives None when the run has no source or resumes from its own checkpoint."""

    def __init__(self, spec: str, verbose: bool = True):
        self.spec, self.verbose = spec, verbose
        self.run_dir, self.checkpoint = source_paths(spec)
        self.config = run_config(self.run_dir)
        self.family = get_family(self.config.model.family)
        if self.family.backbone is None:
            raise ConfigError(f"trainer.init_from={spec}: a {self.family.name} run ({self.config.model.name}) cannot "
                              "seed a fine-tuning: its family declares no backbone (Family.backbone)")

    @classmethod
    def for_run(cls, cfg, run_dir: Path, sharded_meta_init: bool = False, verbose: bool = True) -> Optional["InitFrom"]:
        spec = cfg.trainer.get("init_from")
        if not spec or _resuming(cfg.trainer, run_dir):
            return None
        if sharded_meta_init:  # every shard would initialise itself: nobody loads the source
            raise ConfigError("trainer.init_from loads the source into rank 0's CPU build, which FSDP broadcasts "
                              "into the shards: use trainer.init=exact")
        return cls(spec, verbose)

    @cached_property
    def _state(self) -> dict:
        return load_checkpoint(self.checkpoint, map_location="cpu", keys=("model",))

    @cached_property
    def weights(self) -> dict:
        """The source's backbone as a timm ViT state dict (CPU tensors)."""
        return self.family.backbone(self._state["model"])

    @property
    def record(self) -> dict:
        """What this run started from: the source run, its checkpoint (step, sha256 when it has one) and
        `describe` of its config."""
        digest = checksum_path(self.checkpoint)
        sha = digest.read_text().split()[0] if digest.is_file() else None
        return {"run_dir": str(self.run_dir.resolve()), "checkpoint": str(self.checkpoint.resolve()),
                "step": int(self._state["step"]), "sha256": sha, **describe(self.config)}

    def load(self, model: nn.Module) -> nn.Module:
        """Load the source into a freshly built `model` (on the CPU); the meta skeletons FSDP shards are left."""
        if any(p.is_meta for p in model.parameters()):
            return model
        keys = load_backbone(model, self.weights, str(self.checkpoint))
        if self.verbose:
            d = describe(self.config)
            print(f"[dyt] init_from {self.checkpoint} ({d['family']} {d['model']}, norm {d['norm']}, step "
                  f"{self._state['step']}): loaded {len(keys['loaded'])} tensors"
                  + (" (pos_embed resampled to this patch grid)" if keys["resampled"] else "")
                  + f"; new: {_grouped(keys['new'])}; "
                  f"dropped: {_grouped(keys['dropped'])}", flush=True)
        return model

    def wrap(self, build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        """`build`, then `load`: the builder the trainer hands to ``wrap_model``."""
        return lambda: self.load(build())
