"""MAE (He et al. 2022): a ViT encoder that sees only the visible patches, and a light decoder that reconstructs
the pixels of the masked ones from the encoded patches and a shared mask token.

Built from timm's pieces (``PatchEmbed``, the ViT ``Block`` with qkv bias, as the official code on timm 1.0) with
LayerNorm(eps=1e-6) everywhere, initialised as the official ``models_mae.py``, then every norm of encoder AND
decoder converted to the configured kind -- the DyT patch runs ``convert_ln_to_dyt`` on the whole model.
Parameter names are the official ones, so its checkpoints load into this model and back.

Masking is not drawn here: ``forward(images, noise)`` takes a (B, L) noise per sample from the data pipeline
(``dyt.families.mae.data.MaskedSamples``); as in the official ``random_masking``, the patches with the smallest
noise are kept. The same noise gives the official model's mask, so the two agree exactly.
"""
from __future__ import annotations

from functools import partial

import numpy as np
import torch
import torch.nn as nn
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block

from dyt.errors import ConfigError
from dyt.nn.convert import apply_norm
from dyt.nn.positions import sincos_pos_embed


def patchify(images: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, p*p*C), patches in row-major order, each flattened as (row, column, channel)."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)  # B, h, w, p, p, C
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: torch.Tensor, p: int, channels: int) -> torch.Tensor:
    """(B, L, p*p*C) -> (B, C, H, W) for a square grid: the inverse of `patchify`."""
    b, n, _ = patches.shape
    g = int(round(n ** 0.5))
    x = patches.reshape(b, g, g, p, p, channels).permute(0, 5, 1, 3, 2, 4)  # B, C, h, p, w, p
    return x.reshape(b, channels, g * p, g * p)


def _fill(param: torch.Tensor, value: torch.Tensor) -> None:
    """``param.copy_(value)``, also for a parameter sharded by FSDP2 (``trainer.init=meta`` initialises the
    shards: the full value is cut into this rank's shard)."""
    if hasattr(param, "device_mesh"):  # a DTensor
        from torch.distributed.tensor import distribute_tensor
        value = distribute_tensor(value.to(param.device_mesh.device_type), param.device_mesh, param.placements)
    param.copy_(value)


class MaskedAutoencoderViT(nn.Module):
    def __init__(self, img_size: int, patch_size: int, in_chans: int, hidden: int, depth: int, heads: int,
                 decoder_hidden: int, decoder_depth: int, decoder_heads: int, mlp_ratio: float = 4.0,
                 norm_eps: float = 1e-6, mask_ratio: float = 0.75, norm_pix_loss: bool = True):
        super().__init__()
        self.patch_size, self.in_chans = patch_size, in_chans
        self.mask_ratio, self.norm_pix_loss = mask_ratio, norm_pix_loss

        norm = partial(nn.LayerNorm, eps=norm_eps)

        def blocks(dim, n, h):
            return nn.ModuleList(Block(dim, h, mlp_ratio, qkv_bias=True, norm_layer=norm) for _ in range(n))

        # encoder
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, hidden)
        n = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden))
        # fixed 2-D sin-cos positions, the cls token's row zero; Parameters as in the official code (state-dict
        # keys, parameter counts), never trained
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, hidden), requires_grad=False)
        self.blocks = blocks(hidden, depth, heads)
        self.norm = norm(hidden)
        # decoder
        self.decoder_embed = nn.Linear(hidden, decoder_hidden)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_hidden))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, n + 1, decoder_hidden), requires_grad=False)
        self.decoder_blocks = blocks(decoder_hidden, decoder_depth, decoder_heads)
        self.decoder_norm = norm(decoder_hidden)
        self.decoder_pred = nn.Linear(decoder_hidden, patch_size ** 2 * in_chans)
        self.init_weights()

    @property
    def num_patches(self) -> int:
        return self.patch_embed.num_patches

    def num_visible(self) -> int:
        """Patches the encoder sees per image (the official ``len_keep``)."""
        return int(self.num_patches * (1 - self.mask_ratio))

    @torch.no_grad()
    def init_weights(self) -> None:
        """The official initialisation: xavier-uniform linears (the patch conv's weight too, viewed as a linear;
        its bias keeps the conv default), zero biases, N(0, 0.02) cls and mask tokens, unit norms."""
        grid = int(round(self.num_patches ** 0.5))
        for pos in (self.pos_embed, self.decoder_pos_embed):
            table = np.pad(sincos_pos_embed(pos.shape[-1], grid), ((1, 0), (0, 0)))  # the cls token's row: 0
            _fill(pos, torch.from_numpy(table).float()[None])
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                m.reset_parameters()

    def masking(self, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) noise -> the kept patches' indices (B, L_keep), lowest noise first, and the mask (B, L): 1 = hidden."""
        keep = noise.argsort(dim=1)[:, : self.num_visible()]
        mask = torch.ones_like(noise).scatter(1, keep, 0.0)
        return keep, mask

    def forward_encoder(self, images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """The visible patches (B, L_keep) encoded, after a cls token: (B, 1 + L_keep, hidden)."""
        x = self.patch_embed(images) + self.pos_embed[:, 1:]
        x = x.gather(1, keep[..., None].expand(-1, -1, x.shape[-1]))
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward_decoder(self, latent: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Every patch's predicted pixels (B, L, p*p*C): encoded patches back at their places, mask tokens elsewhere."""
        x = self.decoder_embed(latent)
        b, _, d = x.shape
        x = x.to(torch.promote_types(x.dtype, self.mask_token.dtype))  # under autocast: fp32, as the official cat
        tokens = self.mask_token.to(x.dtype).expand(b, self.num_patches, d)
        tokens = tokens.scatter(1, keep[..., None].expand(-1, -1, d), x[:, 1:])
        x = torch.cat([x[:, :1], tokens], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x)[:, 1:])  # the cls token dropped (per token: before = after)

    def target(self, images: torch.Tensor) -> torch.Tensor:
        """What the decoder predicts: the patches' pixels, standardised per patch with `norm_pix_loss`."""
        t = patchify(images.float(), self.patch_size)
        if self.norm_pix_loss:
            t = (t - t.mean(dim=-1, keepdim=True)) / (t.var(dim=-1, keepdim=True) + 1e-6).sqrt()
        return t

    def forward(self, images: torch.Tensor, noise: torch.Tensor):
        """(loss, pred (B, L, p*p*C), mask (B, L)): the loss is the MSE per patch averaged over the hidden ones."""
        keep, mask = self.masking(noise)
        pred = self.forward_decoder(self.forward_encoder(images, keep), keep)
        per_patch = (pred.float() - self.target(images)).pow(2).mean(dim=-1)
        loss = (per_patch * mask).sum() / mask.sum()
        return loss, pred, mask


def build_mae(model_cfg, norm_cfg, data_cfg) -> MaskedAutoencoderViT:
    patch = model_cfg.patch_size or data_cfg.patch_size
    if data_cfg.image_size % patch:
        raise ConfigError(f"image_size {data_cfg.image_size} is not a multiple of the MAE patch size {patch}; set "
                          "model.patch_size or data.image_size")
    model = MaskedAutoencoderViT(
        data_cfg.image_size, patch, data_cfg.in_chans, model_cfg.hidden, model_cfg.depth, model_cfg.heads,
        model_cfg.decoder_hidden, model_cfg.decoder_depth, model_cfg.decoder_heads, model_cfg.mlp_ratio,
        model_cfg.norm_eps, model_cfg.mask_ratio, model_cfg.norm_pix_loss)
    return apply_norm(model, model_cfg, norm_cfg)  # every LayerNorm, encoder and decoder (the DyT patch)
