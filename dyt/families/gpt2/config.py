"""Schema of configs/model/gpt2_*.yaml (``defaults: [schema_gpt2]``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from omegaconf import MISSING

from dyt.ranges import COUNT, FRACTION, OPT_POSITIVE, POSITIVE, ranged


@dataclass
class GPT2ModelConfig:
    """nanoGPT's GPTConfig (karpathy/nanoGPT model.py); the vocabulary comes from the data (its tokenizer)."""
    name: str = MISSING
    family: str = "gpt2"
    n_layer: int = ranged(MISSING, COUNT)
    n_head: int = ranged(MISSING, COUNT)
    n_embd: int = ranged(MISSING, COUNT)
    block_size: int = ranged(1024, COUNT)  # learned positions: the longest sequence (data.seq_len <= block_size)
    bias: bool = False  # biases in the Linears and LayerNorms (GPT-2: true; nanoGPT's train.py: false)
    dropout: float = ranged(0.0, FRACTION)  # nanoGPT's pre-training value
    norm_eps: float = ranged(1e-5, POSITIVE)  # LayerNorm / RMSNorm eps (nanoGPT's F.layer_norm: 1e-5)
    init_std: float = ranged(0.02, POSITIVE)  # Linear / Embedding init; c_proj: init_std / sqrt(2 n_layer)
    # the token and position embeddings' init, and so the tied LM head's (null = init_std, nanoGPT). At small widths
    # nanoGPT's 0.02 puts the blocks' input far below unit scale (configs/model/gpt2_tiny.yaml: what it does to DyT)
    embed_init_std: Optional[float] = ranged(None, OPT_POSITIVE)
    # Derf's patch (zlab-princeton/Derf, language model/model_derf.patch); used only by the element-wise norms:
    # alpha0 per site kind (null = norm.alpha_init; derf_gpt2 sets Derf's 1.0 for all three)
    alpha_attn: Optional[float] = ranged(None, OPT_POSITIVE)
    alpha_ffn: Optional[float] = ranged(None, OPT_POSITIVE)
    alpha_final: Optional[float] = ranged(None, OPT_POSITIVE)
    # a learnable scalar on tok + pos embeddings, init sqrt(n_embd); null = on exactly for the element-wise norms
    embed_scale: Optional[bool] = None
    # the norm sites' bias; null = model.bias for layernorm / rmsnorm, on for the element-wise norms (the patch's
    # DynamicTanh and Dynamic_erf always carry one, whatever nanoGPT's bias flag)
    norm_bias: Optional[bool] = None
