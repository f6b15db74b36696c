"""Stable Diffusion's VAE (``diffusers.AutoencoderKL``), the encoder and decoder of latent diffusion: loading it
(hub id or local folder, frozen), images to the latent posterior, scaled latents back to images.

DiT trains on ``latent * SCALE_FACTOR`` (Stable Diffusion's 0.18215, so the latents have about unit variance);
`dyt.data.latents` stores unscaled posteriors, the task decodes its samples here.
"""
from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import torch

from dyt.data.hub import hub_offline
from dyt.errors import ConfigError

SCALE_FACTOR = 0.18215


def load_vae(name_or_path: str, device="cpu", dtype=torch.float32):
    """`diffusers.AutoencoderKL` from a hub id (e.g. stabilityai/sd-vae-ft-ema) or a local folder, eval, frozen."""
    try:
        from diffusers import AutoencoderKL  # optional and heavy (dyt[dit])
    except ImportError:
        raise ConfigError("the VAE needs diffusers: pip install diffusers") from None
    name = str(name_or_path)
    local = Path(name).expanduser()
    if not local.is_dir() and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        raise ConfigError(f"VAE folder {name} does not exist")
    quiet = {} if importlib.util.find_spec("accelerate") else {"low_cpu_mem_usage": False}  # no advice to install it
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks")  # diffusers' own, deprecated use
            vae = AutoencoderKL.from_pretrained(str(local) if local.is_dir() else name, torch_dtype=dtype, **quiet)
    except Exception as e:
        if hub_offline() and not local.is_dir():
            raise ConfigError(f"cannot load the VAE {name!r}: not a local folder nor in the Hugging Face cache, and "
                              "downloads are off (HF_HUB_OFFLINE=1); download it once online or pass a local "
                              "folder") from None
        why = (str(e).strip().splitlines() or [""])[0][:200]
        raise ConfigError(f"cannot load the VAE {name!r}: {type(e).__name__}: {why}") from None
    return vae.to(device).eval().requires_grad_(False)


@torch.no_grad()
def encode(vae, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [-1, 1] (N, 3, H, W) -> (mean, std) of the latent posterior, UNscaled, float32 on the VAE's
    device (a DiT training latent is ``(mean + std * randn) * SCALE_FACTOR``)."""
    dist = vae.encode(images.to(vae.device, vae.dtype)).latent_dist
    return dist.mean.float(), dist.std.float()


@torch.no_grad()
def decode(vae, latents: torch.Tensor, scale_factor: float = SCALE_FACTOR) -> torch.Tensor:
    """Scaled latents (N, C, h, w) -> images (N, 3, H, W) in [0, 1], float32 on the VAE's device."""
    x = vae.decode(latents.to(vae.device, vae.dtype) / scale_factor).sample
    return ((x.float() + 1) / 2).clamp(0, 1)


def latent_shape_of(vae, image_size: int) -> tuple[int, int, int]:
    """(C, h, w) of the latents of `image_size` square images (AutoencoderKL halves per down block but the last)."""
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    if image_size % f:
        raise ConfigError(f"the image size {image_size} is not a multiple of the VAE's downsampling factor {f}")
    return int(vae.config.latent_channels), image_size // f, image_size // f
