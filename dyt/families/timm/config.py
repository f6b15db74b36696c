"""Schema of configs/model/{vit,convnext,resnet50,vgg19}*.yaml (``defaults: [schema_timm]``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from omegaconf import MISSING

from dyt.ranges import FRACTION, OPT_COUNT, ranged


@dataclass
class TimmModelConfig:
    """A timm classifier (ViT, ConvNeXt, ...) built with its LayerNorms, then converted (as the paper's code)."""
    name: str = MISSING  # our config name, used in run names and wandb tags
    family: str = MISSING  # vit | convnext | cnn: picks the builder and the task
    arch: str = MISSING  # timm model name
    drop_path: float = ranged(0.0, FRACTION)
    global_pool: Optional[str] = None  # the paper's ViTs use 'avg' (then the final norm is timm's fc_norm)
    norm_sites: str = "layernorm"  # the norm timm builds the model with (batchnorm: ResNet / VGG, Table 15)
    patch_size: Optional[int] = ranged(None, OPT_COUNT)  # ViT only; null keeps the arch's
    kwargs: Dict[str, Any] = field(default_factory=dict)  # other timm constructor args (depth, embed_dim, ...)
