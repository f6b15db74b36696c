"""wav2vec 2.0 (Baevski et al. 2020) as fairseq builds it (fairseq/models/wav2vec/wav2vec2.py, ``Wav2Vec2Model``
with ``quantize_targets``): our own code, module for module and init for init, with every LayerNorm the DyT patch
converts built by ``dyt.nn.build_norm`` from ``cfg.norm``.

    waveform -> 7 convs (GroupNorm on the first: fairseq's `default` mode) -> features [B, T, 512]
      -> norm (the feature LayerNorm) -> post_extract_proj -> dropout_input -> span mask (mask_emb)
      -> + positional conv -> [norm if post-norm] -> layers -> [norm if pre-norm] -> final_proj -> predictions
    features at the masked frames -> dropout_features -> Gumbel product quantizer -> project_q -> targets
    logits = cosine(prediction, [target, 100 distractors]) / 0.1

The norm sites (what jiachenzhu/DyT's dynamic-tanh.patch converts): ``feature_norm`` (fairseq's ``layer_norm``),
``encoder.norm`` (the encoder's ``layer_norm``) and each layer's ``self_attn_layer_norm`` and ``final_layer_norm``.
The conv encoder's GroupNorm (or its LayerNorms in `layer_norm` mode, fairseq's Fp32LayerNorm) are not norm sites:
the patch leaves them.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from dyt.errors import ConfigError
from dyt.families.wav2vec2.config import EXTRACTOR_MODES, conv_frames
from dyt.families.wav2vec2.masking import gumbel_noise, negative_indices, span_mask
from dyt.families.wav2vec2.quantizer import GumbelQuantizer
from dyt.nn import build_norm


class GradMultiply(torch.autograd.Function):
    """Identity forward, gradient times `scale` backward (fairseq's feature_grad_mult)."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a [B, C, T] tensor, in fp32 (fairseq's TransposeLast + Fp32LayerNorm)."""

    def forward(self, x):
        y = F.layer_norm(x.transpose(1, 2).float(), self.normalized_shape, self.weight, self.bias, self.eps)
        return y.transpose(1, 2).type_as(x)


class FeatureEncoder(nn.Module):
    """fairseq's ConvFeatureExtractionModel: per layer conv (no bias), [norm], GELU; waveform [B, S] -> [B, C, T]."""

    def __init__(self, layers: list[tuple[int, int, int]], mode: str = "default", bias: bool = False):
        super().__init__()
        if mode not in EXTRACTOR_MODES:
            raise ConfigError(f"unknown model.extractor_mode {mode!r}; choose one of: {', '.join(EXTRACTOR_MODES)}")
        self.conv_layers = nn.ModuleList()
        channels = 1
        for i, (dim, kernel, stride) in enumerate(layers):
            conv = nn.Conv1d(channels, dim, kernel, stride=stride, bias=bias)
            nn.init.kaiming_normal_(conv.weight)
            norm = ([nn.GroupNorm(dim, dim)] if mode == "default" and i == 0 else
                    [ChannelLayerNorm(dim, eps=1e-5)] if mode == "layer_norm" else [])
            self.conv_layers.append(nn.Sequential(conv, *norm, nn.GELU()))
            channels = dim
        self.layers = [tuple(layer) for layer in layers]

    def frames(self, samples: int) -> int:
        return conv_frames(self.layers, samples)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        x = wave.unsqueeze(1)
        for layer in self.conv_layers:
            x = layer(x)
        return x


class PositionalConv(nn.Module):
    """fairseq's make_conv_pos: a grouped conv over time (kernel 128, 16 groups) with weight norm over the kernel
    dim, cut to the input length (SamePad), then GELU; its output is added to the input."""

    def __init__(self, dim: int, kernel: int, groups: int):
        super().__init__()
        conv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=groups)
        nn.init.normal_(conv.weight, mean=0, std=math.sqrt(4 / (kernel * dim)))
        nn.init.zeros_(conv.bias)
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        self.trim = 1 if kernel % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, C]
        y = self.conv(x.transpose(1, 2))
        if self.trim:
            y = y[:, :, :-self.trim]
        return F.gelu(y).transpose(1, 2)


class SelfAttention(nn.Module):
    """fairseq's MultiheadAttention for self-attention (separate q / k / v / out projections with biases)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (p(x).view(b, t, self.heads, c // self.heads).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(y.transpose(1, 2).reshape(b, t, c))


class EncoderLayer(nn.Module):
    """fairseq's TransformerSentenceEncoderLayer: post-norm (Base) or pre-norm (`norm_first`, Large)."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float, attention_dropout: float,
                 activation_dropout: float, norm_first: bool, norm):
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = SelfAttention(dim, heads, attention_dropout)
        self.self_attn_layer_norm = norm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, ffn), nn.Linear(ffn, dim)
        self.final_layer_norm = norm(dim)
        self.dropout1, self.dropout2, self.dropout3 = (nn.Dropout(p) for p in (dropout, activation_dropout, dropout))

    def _mlp(self, x):
        return self.dropout3(self.fc2(self.dropout2(F.gelu(self.fc1(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm_first:
            x = x + self.dropout1(self.self_attn(self.self_attn_layer_norm(x)))
            return x + self._mlp(self.final_layer_norm(x))
        x = self.self_attn_layer_norm(x + self.dropout1(self.self_attn(x)))
        return self.final_layer_norm(x + self._mlp(x))


def init_bert_params(module: nn.Module) -> None:
    """fairseq's init_bert_params, which the TransformerEncoder applies to itself: every Linear N(0, 0.02), bias 0
    (the attention projections included)."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class Encoder(nn.Module):
    """fairseq's TransformerEncoder (layer_type transformer, pos_conv_depth 1)."""

    def __init__(self, m, norm):
        super().__init__()
        self.pos_conv = PositionalConv(m.hidden, m.conv_pos, m.conv_pos_groups)
        self.layers = nn.ModuleList(
            EncoderLayer(m.hidden, m.heads, m.ffn, m.dropout, m.attention_dropout, m.activation_dropout,
                         m.layer_norm_first, norm) for _ in range(m.depth))
        self.norm = norm(m.hidden)  # fairseq: encoder.layer_norm
        self.norm_first, self.layerdrop = m.layer_norm_first, m.encoder_layerdrop
        self.dropout = nn.Dropout(m.dropout)
        self.apply(init_bert_params)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_conv(x)
        if not self.norm_first:
            x = self.norm(x)
        x = self.dropout(x)
        for layer in self.layers:
            if self.training and self.layerdrop > 0 and float(torch.rand(())) < self.layerdrop:
                # skipped; its parameters join the graph with a zero gradient, so DDP's reducer (which expects a
                # gradient for every parameter) works, and the optimizer sees what fairseq's legacy_ddp gives a
                # skipped layer: zeros
                x = x + 0.0 * sum(p.sum() for p in layer.parameters()).to(x.dtype)
                continue
            x = layer(x)
        return self.norm(x) if self.norm_first else x


class Wav2Vec2(nn.Module):
    """The pre-training model. ``forward(source, seeds, temperature)`` returns the contrastive logits and what the
    extra losses need (`dyt.families.wav2vec2.loss`)."""

    def __init__(self, m, norm_cfg):
        super().__init__()
        if m.hidden % m.heads:
            raise ConfigError(f"model.hidden={m.hidden} is not a multiple of model.heads={m.heads}")

        def norm(dim):
            return build_norm(norm_cfg.name, dim, eps=m.norm_eps, alpha_init=norm_cfg.alpha_init,
                              learn_alpha=norm_cfg.get("learn_alpha", True))

        self.cfg = m
        self.feature_extractor = FeatureEncoder([tuple(c) for c in m.conv_layers], m.extractor_mode, m.conv_bias)
        embed = m.conv_layers[-1][0]
        self.feature_norm = (norm(embed) if m.get("feature_norm") is None  # fairseq: Wav2Vec2Model.layer_norm
                             else build_norm(m.feature_norm, embed, eps=m.norm_eps))
        self.post_extract_proj = nn.Linear(embed, m.hidden) if embed != m.hidden else None
        self.dropout_input, self.dropout_features = nn.Dropout(m.dropout_input), nn.Dropout(m.dropout_features)
        self.mask_emb = nn.Parameter(torch.empty(m.hidden).uniform_())
        self.encoder = Encoder(m, norm)
        self.quantizer = GumbelQuantizer(embed, m.latent_vars, m.latent_groups, m.final_dim)
        self.project_q = nn.Linear(m.final_dim, m.final_dim)
        self.final_proj = nn.Linear(m.hidden, m.final_dim)

    def forward(self, source: torch.Tensor, seeds: list[int], temperature: float) -> dict:
        m = self.cfg
        features = self.feature_extractor(source)
        if m.feature_grad_mult != 1.0:
            features = GradMultiply.apply(features, m.feature_grad_mult)
        features_pen = features.float().pow(2).mean()
        features = self.feature_norm(features.transpose(1, 2))
        x = self.post_extract_proj(features) if self.post_extract_proj is not None else features
        x = self.dropout_input(x)
        y = self.dropout_features(features)

        b, t, _ = x.shape
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        mask = span_mask(gens, t, m.mask_prob, m.mask_length, m.min_masks)
        masked = int(mask[0].sum())
        negatives = negative_indices(gens, masked, m.num_negatives)
        noise = gumbel_noise(gens, (masked, m.latent_groups, m.latent_vars)) if self.training else None
        mask, negatives = mask.to(x.device, non_blocking=True), negatives.to(x.device, non_blocking=True)

        x = torch.where(mask.unsqueeze(-1), self.mask_emb.to(x.dtype), x)
        x = self.encoder(x)
        q = self.quantizer(y[mask].view(b, masked, -1), temperature, noise)
        targets = self.project_q(q["x"])  # [B, M, F]
        rows = torch.arange(b, device=x.device).view(b, 1, 1)
        distractors = targets[rows, negatives]  # [B, M, N, F]
        preds = self.final_proj(x[mask].view(b, masked, -1))
        return {"logits": contrastive_logits(preds, targets, distractors, m.logit_temp), "features_pen": features_pen,
                "prob_perplexity": q["prob_perplexity"], "code_perplexity": q["code_perplexity"],
                "num_vars": q["num_vars"], "mask": mask, "negatives": negatives}


def contrastive_logits(preds: torch.Tensor, targets: torch.Tensor, distractors: torch.Tensor,
                       temperature: float) -> torch.Tensor:
    """fairseq's compute_preds: cosine similarity (fp32) of each prediction [B, M, F] with its target and its N
    distractors, over `temperature`: [B, M, 1 + N], the target first. A distractor equal to the target (the same
    code vector) gets -inf."""
    candidates = torch.cat([targets.unsqueeze(2), distractors], dim=2)
    logits = torch.cosine_similarity(preds.float().unsqueeze(2), candidates.float(), dim=-1) / temperature
    same = (targets.unsqueeze(2) == distractors).all(-1)
    return torch.cat([logits[..., :1], logits[..., 1:].masked_fill(same, float("-inf"))], dim=-1)


def build_wav2vec2(model_cfg, norm_cfg, data_cfg=None) -> Wav2Vec2:
    return Wav2Vec2(model_cfg, norm_cfg)
