"""Schema of configs/model/mae_*.yaml (``defaults: [schema_mae]``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from omegaconf import MISSING

from dyt.ranges import COUNT, FRACTION, NONNEG_INT, OPT_COUNT, POSITIVE, Num, NumList, ranged, ranged_list


@dataclass
class MAEModelConfig:
    """A masked autoencoder (He et al. 2022): ViT encoder on the visible patches, a light decoder on all of them.
    Input size and channels come from the data; the decoder's sizes are the official ``dec512d8b``."""
    name: str = MISSING
    family: str = "mae"
    hidden: int = ranged(MISSING, COUNT)  # encoder width
    depth: int = ranged(MISSING, COUNT)
    heads: int = ranged(MISSING, COUNT)
    decoder_hidden: int = ranged(512, COUNT)
    decoder_depth: int = ranged(8, COUNT)
    decoder_heads: int = ranged(16, COUNT)
    patch_size: Optional[int] = ranged(None, OPT_COUNT)  # null = the data's patch_size (tiny CPU models)
    mlp_ratio: float = ranged(4.0, POSITIVE)
    norm_eps: float = ranged(1e-6, POSITIVE)  # the official models' LayerNorm(eps=1e-6)
    mask_ratio: float = ranged(0.75, FRACTION)  # share of the patches hidden from the encoder
    norm_pix_loss: bool = True  # targets: each patch standardised by its own mean / var (the paper's runs)
    # hub / image-folder data: RandomResizedCrop's area range (official pre-training: 0.2-1, then a flip only)
    crop_scale: List[float] = ranged_list(lambda: [0.2, 1.0], NumList(Num(0, 1, lo_open=True), 2))
    vis_images: int = ranged(8, NONNEG_INT)  # the reconstruction grid: this many fixed val images (0 = none)
