"""timm classifiers (ViT, ConvNeXt; ResNet / VGG for Table 15): created with their own norms, then converted.

This is exactly the paper's recipe: ``timm.create_model(..., pretrained=False)`` then LN -> DyT; the baseline
(``norm=`` the model's own ``model.norm_sites``: layernorm, or batchnorm for the CNNs) keeps timm's layers untouched.
"""
from __future__ import annotations

import timm
import torch.nn as nn

from dyt.errors import ConfigError
from dyt.config import plain_kwargs
from dyt.nn.convert import apply_norm


def _create(model_cfg, data_cfg, **arch_args) -> nn.Module:
    if model_cfg.arch not in timm.list_models():
        raise ConfigError(f"unknown timm model {model_cfg.arch!r} (model.arch); see timm.list_models()")
    if model_cfg.drop_path:  # not every timm architecture takes it (VGG does not)
        arch_args["drop_path_rate"] = model_cfg.drop_path
    try:
        return timm.create_model(model_cfg.arch, pretrained=False, num_classes=data_cfg.num_classes,
                                 in_chans=data_cfg.in_chans, **arch_args, **plain_kwargs(model_cfg.kwargs))
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
