"""Schema of configs/model/hyenadna_*.yaml (``defaults: [schema_hyenadna]``). Defaults: the Caduceus repo's
configs/model/hyena.yaml (HyenaDNA's layer settings)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from omegaconf import MISSING

from dyt.ranges import COUNT, FRACTION, OPT_COUNT, POSITIVE, integer, ranged


@dataclass
class HyenaDNAModelConfig:
    name: str = MISSING
    family: str = "hyenadna"
    d_model: int = ranged(MISSING, COUNT)
    n_layer: int = ranged(MISSING, COUNT)
    d_inner: Optional[int] = ranged(None, OPT_COUNT)  # MLP width; null = 4 x d_model
    l_max: Optional[int] = ranged(None, OPT_COUNT)  # the filters' length; null = data.seq_len + 2 (the repo's)
    order: int = ranged(2, integer(2))  # depth of the Hyena recurrence
    filter_order: int = ranged(64, COUNT)  # width of the implicit filter's MLP
    emb_dim: int = ranged(5, integer(3))  # the filter's positional features (odd: t, then a cos and sin per band)
    short_filter_order: int = ranged(3, COUNT)  # the causal depthwise convolution's kernel
    filter_w: float = ranged(10.0, POSITIVE)  # the Sin activations' initial frequency (the repo's w)
    modulate: bool = True  # exponential decay of the filters along the sequence
    embed_dropout: float = ranged(0.1, FRACTION)
    resid_dropout: float = ranged(0.0, FRACTION)
    residual_in_fp32: bool = True
    pad_vocab_multiple: int = ranged(8, COUNT)  # 12 ids -> 16 embedding rows
    norm_eps: float = ranged(1e-5, POSITIVE)
    init_std: float = ranged(0.02, POSITIVE)
