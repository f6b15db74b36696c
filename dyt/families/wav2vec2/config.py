"""Schema of configs/model/w2v_*.yaml (``defaults: [schema_wav2vec2]``): fairseq's ``Wav2Vec2Config`` fields the
paper's two recipes use, under fairseq's names where one exists, with fairseq's defaults (fairseq
fairseq/models/wav2vec/wav2vec2.py, class Wav2Vec2Config)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from omegaconf import MISSING

from dyt.ranges import COUNT, FRACTION, NONNEG, POSITIVE, PROB, Num, NumList, integer, ranged, ranged_list

EXTRACTOR_MODES = ("default", "layer_norm")  # fairseq: GroupNorm in the first conv | LayerNorm after every conv


def _conv_layers() -> list[list[int]]:
    """fairseq's conv_feature_layers: (channels, kernel, stride) per layer; a receptive field of 400 samples
    (25 ms at 16 kHz) and a hop of 320 (20 ms)."""
    return [[512, 10, 5]] + [[512, 3, 2]] * 4 + [[512, 2, 2]] * 2


@dataclass
class Wav2Vec2ModelConfig:
    """wav2vec 2.0 (Baevski et al. 2020) with its pre-training objective, as fairseq builds it."""
    name: str = MISSING
    family: str = "wav2vec2"
    # the convolutional feature encoder
    extractor_mode: str = "default"  # default (GroupNorm on the first conv: Base, and the DyT repo's Large yaml) | layer_norm
    conv_layers: List[List[int]] = ranged_list(_conv_layers, NumList(NumList(COUNT, 3)))
    conv_bias: bool = False
    feature_grad_mult: float = ranged(1.0, NONNEG)  # the feature encoder's gradient scaled by this (0.1 in both recipes)
    # the Transformer encoder (fairseq: encoder_embed_dim, encoder_layers, encoder_attention_heads, encoder_ffn_embed_dim)
    hidden: int = ranged(MISSING, COUNT)
    depth: int = ranged(MISSING, COUNT)
    heads: int = ranged(MISSING, COUNT)
    ffn: int = ranged(MISSING, COUNT)
    layer_norm_first: bool = False  # pre-norm layers and a final norm (Large) | post-norm, norm after pos conv (Base)
    conv_pos: int = ranged(128, COUNT)  # kernel of the convolutional positional embedding
    conv_pos_groups: int = ranged(16, COUNT)
    norm_eps: float = ranged(1e-5, POSITIVE)  # fairseq's LayerNorm default
    # the norm after the feature encoder when it differs from norm= (null: norm='s). The released DyT patch calls a
    # DyT there that it never builds (an AttributeError), so which norm the paper's DyT runs had at this site is
    # unknown: feature_norm=layernorm keeps fairseq's LayerNorm there and DyT everywhere else.
    feature_norm: Optional[str] = None
    dropout: float = ranged(0.1, FRACTION)
    attention_dropout: float = ranged(0.1, FRACTION)
    activation_dropout: float = ranged(0.0, FRACTION)
    encoder_layerdrop: float = ranged(0.0, FRACTION)  # each layer skipped with this probability in training
    dropout_input: float = ranged(0.0, FRACTION)  # on the projected features, before masking
    dropout_features: float = ranged(0.0, FRACTION)  # on the features the quantizer sees
    # masking (fairseq mask_prob, mask_length; min_masks=2 and require_same_masks as its apply_mask)
    mask_prob: float = ranged(0.65, PROB)
    mask_length: int = ranged(10, COUNT)
    min_masks: int = ranged(2, COUNT)
    # quantizer and contrastive task
    final_dim: int = ranged(256, COUNT)  # the space predictions and targets are compared in (0 in fairseq = hidden)
    latent_vars: int = ranged(320, integer(2))  # codebook entries per group
    latent_groups: int = ranged(2, COUNT)
    latent_temp: List[float] = ranged_list(lambda: [2.0, 0.5, 0.999995], NumList(POSITIVE, 3))  # start, end, decay per update
    num_negatives: int = ranged(100, COUNT)
    logit_temp: float = ranged(0.1, POSITIVE)
    # the criterion's loss_weights: diversity (codebook perplexity) and the feature L2 penalty
    loss_weights: List[float] = ranged_list(lambda: [0.1, 10.0], NumList(Num(0), 2))


def conv_frames(layers, samples: int) -> int:
    """Frames of the conv encoder `layers` ((channels, kernel, stride) each) for `samples` input samples (0 when
    shorter than its receptive field): 780 for 250,000."""
    for _, kernel, stride in layers:
        samples = (samples - kernel) // stride + 1 if samples >= kernel else 0
    return samples


def receptive_field(layers) -> int:
    """Input samples one frame sees: 400 (25 ms at 16 kHz) for fairseq's layers."""
    field, hop = 1, 1
    for _, kernel, stride in layers:
        field, hop = field + (kernel - 1) * hop, hop * stride
    return field
