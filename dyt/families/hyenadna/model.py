"""HyenaDNA (Nguyen et al. 2023): a decoder-only character-level DNA model with Hyena mixers; our code, matching the
Caduceus repository's ConvLMHeadModel (src/models/sequence/long_conv_lm.py, flash-attn's pre-norm Block) with
configs/model/hyena.yaml:

    x = dropout(embed(ids), embed_dropout)                     no position embedding (the filters know positions)
    per block:  x = x + drop(hyena(norm1(x)));  x = x + drop(mlp(norm2(x)))     mlp: fc1 -> GELU(tanh) -> fc2
                (drop: resid_dropout; the repo's Block drops each branch output, the next block's dropout1 or
                drop_f dropping the MLP's, and the embedding with embed_dropout in block 0's dropout1)
    logits = lm_head(norm_f(x))                                lm_head tied to the embedding

Every norm site (norm1, norm2 per block, norm_f) is the configured norm (`dyt.nn.build_norm`): the repo's are
``nn.LayerNorm`` (``fused_dropout_add_ln: False``), exactly what the DyT patch's converter replaces. The residual
stream is kept in float32 when ``residual_in_fp32`` (the repo's True). The vocabulary (12) is padded to a multiple
of 8 (16 rows).

Init (the repo's GPT-2 style ``_init_weights``, applied to every module): every Linear -- the filter MLP's too --
N(0, 0.02) with zero bias, the embedding N(0, 0.02), then ``out_proj`` and ``fc2`` N(0, 0.02 / sqrt(2 n_layer));
the short convolution keeps PyTorch's default init, the filter's skip term N(0, 1), Sin frequencies ``w``.
``init_weights()`` sets every parameter and buffer, so a meta-device build can be materialised (FSDP2).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from dyt.data.dna import padded_vocab_size
from dyt.families.hyenadna.hyena import HyenaOperator
from dyt.nn import build_norm


class Mlp(nn.Module):
    def __init__(self, d_model: int, d_inner: int):
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_inner)
        self.fc2 = nn.Linear(d_inner, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Block(nn.Module):
    """Pre-norm: ``x + drop(mixer(norm1(x)))``, then ``x + drop(mlp(norm2(x)))``."""

    def __init__(self, cfg, l_max: int, norm):
        super().__init__()
        self.norm1 = norm()
        self.mixer = HyenaOperator(cfg.d_model, l_max, order=cfg.order, filter_order=cfg.filter_order,
                                   emb_dim=cfg.emb_dim, short_filter_order=cfg.short_filter_order, w=cfg.filter_w,
                                   modulate=cfg.modulate)
        self.norm2 = norm()
        self.mlp = Mlp(cfg.d_model, cfg.d_inner or 4 * cfg.d_model)
        self.drop = nn.Dropout(cfg.resid_dropout)
        self.residual_in_fp32 = cfg.residual_in_fp32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.mixer(norm_input(self.norm1, x)))
        x = x.float() if self.residual_in_fp32 else x
        x = x + self.drop(self.mlp(norm_input(self.norm2, x)))
        return x.float() if self.residual_in_fp32 else x


def norm_input(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The norm of the residual stream, cast to the norm's parameter dtype first (the repo's
    ``norm(residual.to(norm.weight.dtype))``: a float32 stream under a bf16 parameter policy)."""
    weight = getattr(norm, "weight", None)
    return norm(x if weight is None else x.to(weight.dtype))


class HyenaDNA(nn.Module):
    def __init__(self, cfg, l_max: int, norm: str = "layernorm", alpha_init: float = 0.5, learn_alpha: bool = True):
        super().__init__()
        self.cfg, self.l_max, self.d_model = cfg, l_max, cfg.d_model
        make_norm = lambda: build_norm(norm, cfg.d_model, eps=cfg.norm_eps, alpha_init=alpha_init,  # noqa: E731
                                       learn_alpha=learn_alpha)
        self.vocab_size = padded_vocab_size(cfg.pad_vocab_multiple)
        self.embed = nn.Embedding(self.vocab_size, cfg.d_model)
        self.embed_drop = nn.Dropout(cfg.embed_dropout)
        self.blocks = nn.ModuleList(Block(cfg, l_max, make_norm) for _ in range(cfg.n_layer))
        self.norm_f = make_norm()
        self.lm_head = nn.Linear(cfg.d_model, self.vocab_size, bias=False)
        self.lm_head.weight = self.embed.weight
        if self.embed.weight.device.type != "meta":
            self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        self.lm_head.weight = self.embed.weight  # to_empty() (meta -> device) unties shared parameters: tie again
        std = self.cfg.init_std
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=std)
            elif m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()  # norms, the short conv, Sin, the positional features and decays
        for block in self.blocks:
            for residual_out in (block.mixer.out_proj, block.mlp.fc2):  # GPT-2: 2 residual branches per block
                nn.init.normal_(residual_out.weight, std=std / math.sqrt(2 * self.cfg.n_layer))
            nn.init.normal_(block.mixer.filter_fn.bias)

    def features(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> (B, L, d_model) after the final norm: what a classification head reads."""
        x = self.embed_drop(self.embed(input_ids))
        for block in self.blocks:
            x = block(x)
        return norm_input(self.norm_f, x)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> (B, L, vocab_size) next-token logits."""
        return self.lm_head(self.features(input_ids))

    def no_weight_decay(self) -> set[str]:
        """Not decayed beyond the optimizer's 1-D rule: the embedding (tied head) and the filter MLPs (the repo's
        nn.Embedding blacklist and the filters' ``_optim = {weight_decay: 0}``)."""
        return {"embed.weight"} | {n for n, _ in self.named_parameters() if ".implicit_filter." in n}


def resolve_l_max(model_cfg, data_cfg) -> int:
    """The filters' length: model.l_max, or the data's seq_len + 2 (the repo's ``max_length + 2``)."""
    return int(model_cfg.l_max) if model_cfg.get("l_max") else int(data_cfg.seq_len) + 2


def build_hyenadna(model_cfg, norm_cfg, data_cfg) -> HyenaDNA:
    return HyenaDNA(model_cfg, resolve_l_max(model_cfg, data_cfg), norm=norm_cfg.name,
                    alpha_init=float(norm_cfg.get("alpha_init", 0.5)), learn_alpha=norm_cfg.get("learn_alpha", True))
