"""DiT (Peebles & Xie, 2023): a class-conditional diffusion Transformer with adaLN-Zero blocks.

Patch embedding + fixed 2-D sin-cos positions, a timestep and a class embedder (class dropout for
classifier-free guidance), blocks whose norms are modulated by the conditioning (shift / scale / gate), a final
adaLN layer and a linear back to patches. With learned sigma the output has twice the input channels (epsilon,
then the variance interpolation v).

Every norm site goes through ``dyt.build_norm(..., elementwise_affine=False)``: ``norm=layernorm`` is DiT's own
``LayerNorm(elementwise_affine=False, eps=1e-6)``; ``norm=dyt`` is the paper's ``tanh(alpha * x)`` with no weight
and no bias. The paper's DyT runs also drop adaLN-Zero's zero initialisation (``model.adaln_zero_init``, see
``resolve_adaln_zero_init``): keeping it with DyT is what the official repository's issue #18 reports as a much
worse FID.

Construction allocates; ``init_weights()`` sets every parameter and buffer, so ``with torch.device("meta"):``
followed by ``to_empty()`` + ``init_weights()`` works (FSDP2).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from timm.layers import Mlp, PatchEmbed
from timm.models.vision_transformer import Attention

from dyt.errors import ConfigError
from dyt.nn.positions import sincos_pos_embed
from dyt.nn import build_norm

#: norm kinds whose DiT keeps adaLN-Zero by default (the statistics-based ones); element-wise kinds drop it
ZERO_INIT_NORMS = ("layernorm", "rmsnorm")


def resolve_adaln_zero_init(model_cfg, norm_name: str) -> bool:
    flag = model_cfg.get("adaln_zero_init")
    return bool(flag) if flag is not None else norm_name in ZERO_INIT_NORMS


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(B,) timesteps (floats allowed) -> (B, dim) sinusoidal features, cos half first (DiT's convention)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1) if dim % 2 else emb


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x (B, N, D) scaled and shifted per sample by the conditioning (B, D)."""
    return x * (1 + scale[:, None]) + shift[:, None]


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.freq_dim).to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class embeddings; with class dropout > 0 one extra row, label ``num_classes``, is the "no class" label
    that classifier-free guidance contrasts with. Which labels are dropped is drawn per sample by the diffusion
    task (``dyt.families.dit.task.NoisedSamples``), with its noise and timestep, not here."""

    def __init__(self, num_classes: int, hidden: int, dropout: float):
        super().__init__()
        self.num_classes, self.dropout = num_classes, dropout
        self.embedding_table = nn.Embedding(num_classes + (dropout > 0), hidden)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(y)


class DiTBlock(nn.Module):
    """x + gate * attn(modulate(norm(x))), then the same for the MLP; six modulation vectors from c."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float, norm):
        super().__init__()
        self.norm1 = norm()
        self.attn = Attention(hidden, num_heads=heads, qkv_bias=True)
        self.norm2 = norm()
        self.mlp = Mlp(hidden, int(hidden * mlp_ratio), act_layer=lambda: nn.GELU(approximate="tanh"))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    def __init__(self, hidden: int, patch: int, out_channels: int, norm):
        super().__init__()
        self.norm_final = norm()
        self.linear = nn.Linear(hidden, patch * patch * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    def __init__(self, *, input_size: int, in_channels: int, num_classes: int, hidden: int, depth: int, heads: int,
                 patch_size: int, mlp_ratio: float = 4.0, class_dropout: float = 0.1, learn_sigma: bool = True,
                 norm: str = "layernorm", alpha_init: float = 0.5, learn_alpha: bool = True, norm_eps: float = 1e-6,
                 adaln_zero_init: bool = True, adaln_zero_blocks: bool | None = None):
        super().__init__()
        if input_size % patch_size:
            raise ConfigError(f"DiT input size {input_size} is not a multiple of its patch size {patch_size}")
        if hidden % heads:
            raise ConfigError(f"DiT width {hidden} is not a multiple of its {heads} heads")
        self.in_channels, self.num_classes, self.patch_size = in_channels, num_classes, patch_size
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.adaln_zero_init = adaln_zero_init
        self.adaln_zero_blocks = adaln_zero_init if adaln_zero_blocks is None else adaln_zero_blocks
        norm_site = lambda: build_norm(norm, hidden, eps=norm_eps, alpha_init=alpha_init,  # noqa: E731
                                       learn_alpha=learn_alpha, elementwise_affine=False)
        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden, bias=True)
        self.t_embedder = TimestepEmbedder(hidden)
        self.y_embedder = LabelEmbedder(num_classes, hidden, class_dropout)
        self.register_buffer("pos_embed", torch.empty(1, self.x_embedder.num_patches, hidden))  # fixed, saved
        self.blocks = nn.ModuleList(DiTBlock(hidden, heads, mlp_ratio, norm_site) for _ in range(depth))
        self.final_layer = FinalLayer(hidden, patch_size, self.out_channels, norm_site)
        if self.pos_embed.device.type != "meta":
            self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """DiT's initialisation; the zero-init of adaLN-Zero only when ``adaln_zero_init``."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif m is not self and not isinstance(m, (nn.Linear, nn.Embedding, nn.Conv2d)) \
                    and hasattr(m, "reset_parameters"):
                m.reset_parameters()  # norms (DyT's alpha0)
        grid = int(self.x_embedder.num_patches ** 0.5)
        self.pos_embed.copy_(torch.from_numpy(sincos_pos_embed(self.pos_embed.shape[-1], grid)).float()[None])
        w = self.x_embedder.proj.weight  # the patch conv, initialised like a linear layer
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        # exactly what the paper's DyT runs remove (Derf's DiT-B keeps the blocks' part: adaln_zero_blocks)
        zeroed = [b.adaLN_modulation[-1] for b in self.blocks] if self.adaln_zero_blocks else []
        if self.adaln_zero_init:
            zeroed += [self.final_layer.adaLN_modulation[-1], self.final_layer.linear]
        for layer in zeroed:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, p*p*C) -> (B, C, H, W)."""
        p, c = self.patch_size, self.out_channels
        h = w = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], h, w, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, h * p, w * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) noisy input, t (B,) diffusion steps, y (B,) labels (num_classes: no class) -> (B, out, H, W)."""
        h = self.x_embedder(x) + self.pos_embed  # (B, N, D)
        c = self.t_embedder(t) + self.y_embedder(y)  # (B, D)
        for block in self.blocks:
            h = block(h, c)
        return self.unpatchify(self.final_layer(h, c))


def build_dit(model_cfg, norm_cfg, data_cfg) -> DiT:
    """The family builder: input size / channels / classes from the data config (pixels or VAE latents)."""
    patch = model_cfg.patch_size or data_cfg.get("patch_size")
    if not patch:
        raise ConfigError(f"model {model_cfg.name}: set model.patch_size (data {data_cfg.name} suggests none)")
    return DiT(input_size=data_cfg.image_size, in_channels=data_cfg.in_chans, num_classes=data_cfg.num_classes,
               hidden=model_cfg.hidden, depth=model_cfg.depth, heads=model_cfg.heads, patch_size=patch,
               mlp_ratio=model_cfg.mlp_ratio, class_dropout=model_cfg.class_dropout,
               learn_sigma=model_cfg.diffusion.learn_sigma, norm=norm_cfg.name, alpha_init=norm_cfg.alpha_init,
               learn_alpha=norm_cfg.get("learn_alpha", True), norm_eps=model_cfg.norm_eps,
               adaln_zero_init=resolve_adaln_zero_init(model_cfg, norm_cfg.name),
               adaln_zero_blocks=model_cfg.get("adaln_zero_blocks"))
