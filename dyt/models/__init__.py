"""Model families by name: each has a builder ``(model_cfg, norm_cfg, data_cfg) -> nn.Module`` and a task.

``build_model(cfg)`` is the public entry: the model for a composed config, without data or training, also
under ``with torch.device("meta"):``. New families register here (torchtitan-style train specs), never by
matching substrings of model names.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from dyt.errors import ConfigError
from dyt.models.dit import build_dit
from dyt.models.llama import build_llama
from dyt.models.timm_family import build_cnn, build_convnext, build_vit


@dataclass(frozen=True)
class Family:
    build: Callable[..., nn.Module]  # (model_cfg, norm_cfg, data_cfg) -> model
    task: str  # key of dyt.tasks.TASKS


FAMILIES: dict[str, Family] = {
    "vit": Family(build_vit, "classification"),
    "convnext": Family(build_convnext, "classification"),
    "cnn": Family(build_cnn, "classification"),  # BatchNorm CNNs (Table 15)
    "llama": Family(build_llama, "language"),
    "dit": Family(build_dit, "diffusion"),
}


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ConfigError(f"unknown model family {name!r}; choose one of: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


def build_model(cfg) -> nn.Module:
    """The model of a composed config (uses ``cfg.model``, ``cfg.norm`` and the data's shape fields)."""
    return get_family(cfg.model.family).build(cfg.model, cfg.norm, cfg.data)


def register_model_schemas(cs) -> None:
    """Hook for families whose model/data configs have their own schema (called by dyt.config)."""
    from dyt.data.text import TextDataConfig
    from dyt.models.dit import DiTModelConfig
    from dyt.models.llama import LlamaModelConfig

    cs.store(group="model", name="schema_llama", node=LlamaModelConfig)
    cs.store(group="model", name="schema_dit", node=DiTModelConfig)
    cs.store(group="data", name="schema_text", node=TextDataConfig)
