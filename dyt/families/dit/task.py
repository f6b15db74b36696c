"""Class-conditional image generation (DiT): Gaussian diffusion on pixels or on pre-extracted VAE latents.

Training minimises DiT's hybrid loss (epsilon MSE + the variational bound term that teaches the learned sigma) at
a random timestep per sample; ``train/mse`` and ``train/vb`` are logged beside ``train/loss``. Each sample's
draws -- timestep, noise, and whether its label is dropped (class dropout, for guidance) -- come with the sample
from the data loader (`NoisedSamples`), so like augmentation they are a pure function of (seed, epoch, sample
index): a 2-process run sees exactly the draws of a single process, and a resumed run those of the uninterrupted
one. Validation computes the same loss on the validation split with draws fixed per sample, so LN and DyT runs (and
every evaluation of one run) are scored on identical draws. Every evaluation also samples a fixed-seed grid (a row
per class) with the EMA weights when kept, written as a PNG and to wandb.

Pixel data (digits, Fashion-MNIST, any image dataset) come standardised by the data config's mean/std and are
mapped to [-1, 1], the diffusion's data range; latent data (``data.source=latents``) are used as stored and
decoded by the VAE (``data.vae``) only to look at samples.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset

from dyt.data.latents import LatentDataset
from dyt.data.sampler import sample_seed
from dyt.data.vae import decode, load_vae
from dyt.data.vision import build_vision_datasets
from dyt.errors import ConfigError
from dyt.families.dit.gaussian_diffusion import GaussianDiffusion
from dyt.images import image_grid
from dyt.tasks.base import Task

SAMPLERS = ("ddpm", "ddim")
LOSS_PARTS = ("loss", "mse", "vb")


class DiffusionTask(Task):
    def __init__(self, cfg, dist):
        super().__init__(cfg, dist)
        self.dc = cfg.model.diffusion
        if self.dc.sampler not in SAMPLERS:
            raise ConfigError(f"unknown model.diffusion.sampler {self.dc.sampler!r}; choose one of: {', '.join(SAMPLERS)}")
        self.diffusion = GaussianDiffusion.create(self.dc.steps, None, self.dc.learn_sigma)
        self.latent = cfg.data.source == "latents"
        self.num_classes = int(cfg.data.num_classes)
        self.shape = (int(cfg.data.in_chans), int(cfg.data.image_size), int(cfg.data.image_size))
        if not self.latent:
            self.mean = torch.tensor(list(cfg.data.mean)).view(1, -1, 1, 1)
            self.std = torch.tensor(list(cfg.data.std)).view(1, -1, 1, 1)
        self._samplers: dict[int, GaussianDiffusion] = {}
        self._vae = None

    def build_datasets(self):
        if not self.latent:
            train, val = build_vision_datasets(self.cfg.data)
        else:
            d = self.cfg.data
            if not d.root or not Path(d.root).is_dir():
                raise ConfigError(f"data.root={d.root}: no latent folder; extract one with scripts/extract_latents.py")
            train, val = LatentDataset(d.root, d.train_split), LatentDataset(d.root, d.val_split)
        drop = float(self.cfg.model.class_dropout)
        return (NoisedSamples(train, self.diffusion.num_steps, self.num_classes, drop),
                NoisedSamples(val, self.diffusion.num_steps, self.num_classes, 0.0, seed=int(self.cfg.seed)))

    # --- the data range of the diffusion, and back to images ----------------------------------------------
    def to_model_space(self, x: torch.Tensor) -> torch.Tensor:
        """A batch as the data loader gives it -> the diffusion's x0 (pixels in [-1, 1], or latents as stored)."""
        if self.latent:
            return x
        mean, std = self.mean.to(x.device, x.dtype), self.std.to(x.device, x.dtype)
        return (x * std + mean) * 2 - 1

    def to_images(self, x: torch.Tensor) -> torch.Tensor:
        """Samples in model space -> float images in [0, 1] (latents decoded by the VAE)."""
        if self.latent:
            return decode(self.vae(x.device), x.float()).clamp(0, 1)
        return ((x.float() + 1) / 2).clamp(0, 1)

    def vae(self, device):
        if self._vae is None:
            self._vae = load_vae(self.cfg.data.vae, device=device)
        return self._vae

    # --- training and validation --------------------------------------------------------------------------
    def _losses(self, model, batch) -> dict[str, torch.Tensor]:
        x, y, t, noise = batch
        x0 = self.to_model_space(x)
        return self.diffusion.training_losses(lambda xt, tt: model(xt, tt, y), x0, t, noise=noise.to(x0.dtype))

    def loss(self, model, batch):
        return {k: v.mean() for k, v in self._losses(model, batch).items() if k in LOSS_PARTS}  # "loss" is optimised

    @torch.no_grad()
    def eval_step(self, model, batch):
        out = {k: v.float().sum() for k, v in self._losses(model, batch).items() if k in LOSS_PARTS}
        out["count"] = torch.tensor(float(batch[0].shape[0]), device=batch[0].device)
        return out

    def eval_metrics(self, sums):
        n = max(sums["count"], 1)
        return {k: sums[k] / n for k in LOSS_PARTS}

    def summary_metric(self):
        return "val/loss", "min"

    # --- sampling -----------------------------------------------------------------------------------------
    def sampler(self, steps: int | None = None) -> GaussianDiffusion:
        """The diffusion respaced to `steps` sampling steps (default model.diffusion.sample_steps)."""
        steps = int(steps or self.dc.sample_steps)
        if steps not in self._samplers:
            self._samplers[steps] = GaussianDiffusion.create(self.dc.steps, steps, self.dc.learn_sigma)
        return self._samplers[steps]

    def model_fn(self, model: nn.Module, y: torch.Tensor, cfg_scale: float):
        """model(x, t) for the sampler; with guidance (scale != 1) the epsilon channels are pushed away from the
        unconditional prediction (the null class), the variance channels are the conditional ones."""
        if cfg_scale == 1.0:
            return lambda x, t: model(x, t, y)
        if getattr(model, "y_embedder", None) is None or model.y_embedder.dropout <= 0:
            raise ConfigError("classifier-free guidance needs a model trained with class dropout "
                              "(model.class_dropout > 0); set model.diffusion.cfg_scale=1.0")
        null = torch.full_like(y, self.num_classes)
        c = self.shape[0]

        def guided(x, t):
            out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
            cond, uncond = out.chunk(2)
            eps = uncond[:, :c] + cfg_scale * (cond[:, :c] - uncond[:, :c])
            return torch.cat([eps, cond[:, c:]], dim=1)
        return guided

    @torch.no_grad()
    def generate(self, model: nn.Module, labels: torch.Tensor, generator: torch.Generator, steps: int | None = None,
                 progress: bool = False) -> torch.Tensor:
        """Images in [0, 1] (B, C, H, W) on the CPU for `labels`; all randomness from `generator`."""
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            y = labels.to(device)
            x = self.sampler(steps).sample(self.model_fn(model, y, self.dc.cfg_scale), (len(y), *self.shape),
                                           method=self.dc.sampler, eta=self.dc.eta, generator=generator,
                                           device=device, progress=progress)
            return self.to_images(x).cpu()
        finally:
            model.train(was_training)

    def visualize(self, model: nn.Module) -> dict[str, np.ndarray]:
        """A fixed-seed grid, a row per class (the first grid_classes, labelled), as one HxWx3 uint8 image."""
        per_class = int(self.dc.grid_per_class)
        if per_class <= 0:
            return {}
        classes = min(int(self.dc.grid_classes), self.num_classes)
        labels = torch.arange(classes).repeat_interleave(per_class)
        g = torch.Generator().manual_seed(int(self.cfg.seed))
        images = self.generate(model, labels, g, steps=self.dc.grid_steps)
        return {"grid": image_grid(images, per_class, labels=labels.tolist())}


class NoisedSamples(Dataset):
    """``(x, y, t, noise)``: a sample of `ds` with its diffusion draws: a timestep in [0, num_steps), Gaussian noise
    shaped like x, and its label replaced by the null class ``num_classes`` with probability `class_dropout`.

    Training (``seed=None``) draws from torch's RNG, which the train loader seeds per (seed, epoch, sample index)
    (``dyt.data.sampler.SeededSamples``); validation passes a `seed` and each sample's draws are fixed by (seed,
    index), whatever the batch size, the number of ranks or the evaluation.
    """

    def __init__(self, ds: Dataset, num_steps: int, num_classes: int, class_dropout: float, seed: int | None = None):
        self.ds, self.num_steps, self.num_classes = ds, num_steps, num_classes
        self.class_dropout, self.seed = class_dropout, seed

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i):
        x, y = self.ds[i]
        g = None if self.seed is None else torch.Generator().manual_seed(sample_seed(self.seed, 0, int(i)))
        t = int(torch.randint(0, self.num_steps, (), generator=g))
        noise = torch.randn(x.shape, generator=g)
        if self.class_dropout > 0 and float(torch.rand((), generator=g)) < self.class_dropout:
            y = torch.full_like(y, self.num_classes) if torch.is_tensor(y) else self.num_classes
        return x, y, t, noise

    def label_range(self):  # for dyt.data.vision.check_labels-style checks on the wrapped dataset
        return getattr(self.ds, "label_range", lambda: None)()
