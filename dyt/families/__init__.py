"""The built-in model families: one line each. A family is its own folder (see dyt.family and the README's
"How to extend"); shared modules reach it through `get_family(cfg.model.family)`.
"""
from __future__ import annotations

from pathlib import Path

import torch.nn as nn
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig

from dyt.config import register_shared
from dyt.families import caduceus, dino, dit, gpt2, hyenadna, llama, mae, timm, wav2vec2
from dyt.family import Family, families, get_family, register_family
from dyt.tasks.base import Task

BUILTIN: tuple[Family, ...] = (
    *timm.FAMILIES,  # vit, convnext, cnn (Tables 1, 8-10, 13-15)
    llama.FAMILY,  # Table 4, 11, 12
    dit.FAMILY,  # Table 3
    mae.FAMILY,  # Table 2 (pre-training), MAE rows of Tables 10, 13, 14
    dino.FAMILY,  # Table 2 (DINO pre-training)
    wav2vec2.FAMILY,  # Table 5 (speech pre-training), wav2vec rows of Tables 13, 14
    hyenadna.FAMILY,  # Table 6 (HyenaDNA pre-training)
    caduceus.FAMILY,  # Table 6 (Caduceus pre-training)
    gpt2.FAMILY,  # the Derf follow-up's GPT-2 row (nanoGPT)
)
for _family in BUILTIN:
    register_family(_family)


def setup() -> None:
    """Everything Hydra needs before composing our configs: the shared schemas and resolvers (every family's
    schemas are registered with the family). Entry points and tests call this once."""
    register_shared()


CONFIGS = Path(__file__).resolve().parents[2] / "configs"  # the repository's config tree


def compose(overrides=()) -> DictConfig:
    """The composed config for `overrides`, exactly as ``python train.py <overrides>`` sees it (scripts, tests)."""
    setup()
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        return hydra_compose("train", overrides=list(overrides))


def build_task(cfg, dist) -> Task:
    """The task (model, data, loss, metrics) of a composed config's family."""
    return get_family(cfg.model.family).task(cfg, dist)


def build_model(cfg) -> nn.Module:
    """The model of a composed config (``cfg.model``, ``cfg.norm`` and the data's shape fields), without data or
    training; also under ``with torch.device("meta"):``."""
    from dyt.nn.alpha_auto import buildable  # model code: imported once a model is built
    return get_family(cfg.model.family).build(cfg.model, buildable(cfg.norm), cfg.data)


__all__ = ["BUILTIN", "CONFIGS", "Family", "build_model", "build_task", "compose", "families", "get_family", "register_family", "setup"]
