"""Schema of configs/model/caduceus_*.yaml (``defaults: [schema_caduceus]``): the released CaduceusConfig's fields
(kuleshov-group/caduceus configs/model/caduceus.yaml, the values run_pretrain_caduceus.sh sets) plus ours."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from omegaconf import MISSING

from dyt.ranges import COUNT, FRACTION, OPT_COUNT, POSITIVE, ranged

#: model.convert: which norm sites ``norm=`` reaches
CONVERTS = ("paper", "released")
SCANS = ("auto", "torch", "cuda")  # model.scan: which kernel computes the selective scan
STRATEGIES = ("add", "ew_multiply")  # model.bidirectional_strategy: how the two directions combine


@dataclass
class CaduceusModelConfig:
    name: str = MISSING
    family: str = "caduceus"
    d_model: int = ranged(MISSING, COUNT)  # per strand: RCPS hidden states have 2 x d_model channels
    n_layer: int = ranged(MISSING, COUNT)
    # Mamba (ssm_cfg): state size, conv width, expansion, dt's rank (null = ceil(d_model / 16)) and init
    d_state: int = ranged(16, COUNT)
    d_conv: int = ranged(4, COUNT)
    expand: int = ranged(2, COUNT)
    dt_rank: Optional[int] = ranged(None, OPT_COUNT)
    dt_min: float = ranged(0.001, POSITIVE)
    dt_max: float = ranged(0.1, POSITIVE)
    dt_init: str = "random"  # random | constant
    dt_scale: float = ranged(1.0, POSITIVE)
    dt_init_floor: float = ranged(1e-4, POSITIVE)
    conv_bias: bool = True
    bias: bool = False  # in_proj / out_proj biases
    norm_eps: float = ranged(1e-5, POSITIVE)  # RMSNorm eps (norm_epsilon)
    bidirectional: bool = True
    bidirectional_strategy: str = "add"  # add | ew_multiply
    bidirectional_weight_tie: bool = True  # the reverse Mamba shares in_proj / out_proj with the forward one
    rcps: bool = True  # reverse-complement parameter sharing (Caduceus-PS); false: one strand (Caduceus-Ph's backbone)
    # The released configs' fused_add_norm: true data flow, which exchanges the two RCPS halves before every block's
    # norm (caduceus/modeling_rcps.py RCPSMambaBlock.forward); false: the unfused RCPSAddNormWrapper path. Both are
    # RC-equivariant; they differ as functions. Only with rcps.
    fused_add_norm: bool = True
    pad_vocab_size_multiple: int = ranged(8, COUNT)
    # _init_weights: embedding N(0, initializer_range), Linear biases 0 (not dt_proj's), out_proj / sqrt(n_layer)
    initializer_range: float = ranged(0.02, POSITIVE)
    rescale_prenorm_residual: bool = True
    n_residuals_per_layer: int = ranged(1, COUNT)
    # Which norms norm= replaces. paper: every normalization layer (each block's RMSNorm and the final one) becomes
    # norm=. released: what jiachenzhu/DyT other_tasks/DNA ran: its converter replaces nn.LayerNorm only, and the
    # released Caduceus has none (rms_norm: true), so the RMSNorms stay whatever norm= says (README, Table 6).
    convert: str = "paper"
    scan: str = "auto"  # auto (mamba_ssm's CUDA kernel when installed and on a GPU, else PyTorch) | torch | cuda
    mlm_probability: float = ranged(0.15, FRACTION)  # masked-LM pre-training: tokens masked (BERT's 80/10/10)
