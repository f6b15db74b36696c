"""Schema of configs/model/dit_*.yaml (``defaults: [schema_dit]``) and of its diffusion."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from omegaconf import MISSING

from dyt.ranges import COUNT, FRACTION, NONNEG, NONNEG_INT, OPT_COUNT, POSITIVE, integer, ranged


@dataclass
class DiffusionConfig:
    """The Gaussian diffusion and its samplers (DiT's defaults; the paper's FID: 250 DDPM steps, no guidance)."""
    steps: int = ranged(1000, integer(2))  # training diffusion steps (linear betas)
    learn_sigma: bool = True  # output 2x channels, hybrid loss (MSE + VLB)
    sampler: str = "ddpm"  # ddpm | ddim
    sample_steps: int = ranged(250, COUNT)  # respaced steps for sampling (grids, FID)
    eta: float = ranged(0.0, NONNEG)  # DDIM noise (0 = deterministic)
    cfg_scale: float = ranged(1.0, NONNEG)  # classifier-free guidance (1.0 = none)
    grid_classes: int = ranged(10, COUNT)  # the sample grid: this many classes (the first ones) ...
    grid_per_class: int = ranged(8, NONNEG_INT)  # ... times this many samples, fixed seed, at every evaluation (0 = no grid)
    grid_steps: Optional[int] = ranged(None, OPT_COUNT)  # sampler steps for the grid; null = sample_steps


@dataclass
class DiTModelConfig:
    """Schema of configs/model/dit_*.yaml (``defaults: [schema_dit]``). Input size and channels come from the data."""
    name: str = MISSING
    family: str = "dit"
    hidden: int = ranged(MISSING, COUNT)  # width
    depth: int = ranged(MISSING, COUNT)
    heads: int = ranged(MISSING, COUNT)
    patch_size: Optional[int] = ranged(None, OPT_COUNT)  # null = the data's patch_size (tiny CPU models)
    mlp_ratio: float = ranged(4.0, POSITIVE)
    class_dropout: float = ranged(0.1, FRACTION)  # label dropped (-> the null class) with this probability: enables guidance
    norm_eps: float = ranged(1e-6, POSITIVE)
    # adaLN-Zero's zero init of the modulation and output layers; null = on for LayerNorm / RMSNorm, off for DyT
    # and the other element-wise norms (the paper's DyT runs remove it).
    adaln_zero_init: Optional[bool] = None
    # the blocks' adaLN zero-init alone; null = as adaln_zero_init. Derf's DiT-B keeps it with every norm while its
    # final layer follows the norm (zlab-princeton/Derf DiT/models.py:211-220): derf_dit_b4 sets it true.
    adaln_zero_blocks: Optional[bool] = None
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)


def fid_arguments(g) -> None:
    """eval.py's options for FID (dyt.families.dit.evaluate runs it)."""
    g.add_argument("--fid", type=int, default=None, metavar="N", help="FID of N generated samples")
    g.add_argument("--fid-ref", default=None, help="reference statistics .npz (default: data.fid_ref, else the val split)")
    g.add_argument("--fid-batch", type=int, default=100, help="samples per generation batch (per rank)")
    g.add_argument("--fid-ref-count", type=int, default=10_000, help="real images for computed reference statistics")
    g.add_argument("--fid-weights", choices=("auto", "ema", "raw"), default="auto",
                   help="auto: the EMA when kept (val_ema/fid, the paper's), else the raw weights (val/fid)")
    g.add_argument("--fid-method", choices=("sqrtm", "eigh"), default="sqrtm",
                   help="sqrtm: ADM / pytorch-fid's computation; eigh: the same trace, ~5x faster on a CPU")
