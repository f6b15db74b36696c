"""timm classifiers (ViT, ConvNeXt; ResNet / VGG for Table 15): created with their own norms, then converted.

This is exactly the paper's recipe: ``timm.create_model(..., pretrained=False)`` then LN -> DyT; the baseline
(``norm=`` the model's own ``model.norm_sites``: layernorm, or batchnorm for the CNNs) keeps timm's layers untouched.
"""
from __future__ import annotations

import timm
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from dyt.errors import ConfigError
from dyt.nn import convert_norms


def apply_norm(model: nn.Module, model_cfg, norm_cfg) -> nn.Module:
    """Swap the model's own norms (``model.norm_sites``) for the configured kind (a no-op for the baseline)."""
    sites = model_cfg.get("norm_sites", "layernorm")  # .get: run configs written before the key existed
    if norm_cfg.name == sites:
        return model
    return convert_norms(model, kind=norm_cfg.name, alpha_init=norm_cfg.alpha_init,
                         learn_alpha=norm_cfg.get("learn_alpha", True), replace=(sites,))


def _plain(kwargs) -> dict:
    """model.kwargs as plain Python values: timm does arithmetic on its lists (a ListConfig is not a tuple of ints)."""
    return OmegaConf.to_container(kwargs, resolve=True) if isinstance(kwargs, DictConfig) else dict(kwargs)


def _create(model_cfg, data_cfg, **arch_args) -> nn.Module:
    if model_cfg.arch not in timm.list_models():
        raise ConfigError(f"unknown timm model {model_cfg.arch!r} (model.arch); see timm.list_models()")
    if model_cfg.drop_path:  # not every timm architecture takes it (VGG does not)
        arch_args["drop_path_rate"] = model_cfg.drop_path
    try:
        return timm.create_model(model_cfg.arch, pretrained=False, num_classes=data_cfg.num_classes,
                                 in_chans=data_cfg.in_chans, **arch_args, **_plain(model_cfg.kwargs))
    except TypeError as e:  # an option this architecture does not have (model.kwargs / model.drop_path)
        raise ConfigError(f"timm model {model_cfg.arch!r}: {e}") from None


def build_vit(model_cfg, norm_cfg, data_cfg) -> nn.Module:
    """A timm VisionTransformer at the data's resolution; ``global_pool='avg'`` as in the paper (LN and DyT)."""
    patch = model_cfg.patch_size or data_cfg.patch_size
    if data_cfg.image_size % patch:
        fits = -(-data_cfg.image_size // patch) * patch  # the next multiple up
        raise ConfigError(f"image_size {data_cfg.image_size} is not a multiple of patch_size {patch}; add "
                          f"data.image_size={fits} (images are resized) or a model.patch_size that divides it")
    pool = {"global_pool": model_cfg.global_pool} if model_cfg.global_pool is not None else {}
    model = _create(model_cfg, data_cfg, img_size=data_cfg.image_size, patch_size=patch, **pool)
    return apply_norm(model, model_cfg, norm_cfg)


def build_convnext(model_cfg, norm_cfg, data_cfg) -> nn.Module:
    """A timm ConvNeXt; its channels-first LayerNorm2d (stem, downsample) become channels-first DyT."""
    if data_cfg.image_size < 32:  # stem /4 then three /2 downsamples
        raise ConfigError(f"ConvNeXt needs data.image_size >= 32 (total stride 32), got {data_cfg.image_size}; add "
                          "data.image_size=32 (images are resized)")
    return apply_norm(_create(model_cfg, data_cfg), model_cfg, norm_cfg)


def build_cnn(model_cfg, norm_cfg, data_cfg) -> nn.Module:
    """A timm CNN with BatchNorm (ResNet-50, VGG19-BN: the paper's Table 15); BatchNorm2d -> channels-first kind."""
    return apply_norm(_create(model_cfg, data_cfg), model_cfg, norm_cfg)
