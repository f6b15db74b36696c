"""MAE pre-training: the loss is the model's own (MSE on the hidden patches); validation computes it on the
validation images with a mask fixed per image, and every evaluation draws a reconstruction grid.

Images come standardised by the data config's mean/std (the official pipeline's Normalize); the grid maps them
back to [0, 1]. With ``norm_pix_loss`` the decoder predicts standardised patches: the grid puts each predicted
patch back on the true patch's mean and std (as the official visualisation of such models does), so it shows
the predicted structure, not the predicted brightness.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset, default_collate

from dyt.data.vision import build_vision_datasets
from dyt.images import image_grid
from dyt.families.mae.data import MaskedSamples, pretrain_transform
from dyt.families.mae.model import patchify, unpatchify
from dyt.tasks.base import Task

MASKED_GREY = 0.5  # the hidden patches in the grid's middle row


class MAETask(Task):
    def __init__(self, cfg, dist):
        super().__init__(cfg, dist)
        d, m = cfg.data, cfg.model
        self.patch = int(m.patch_size or d.patch_size)
        self.num_patches = (int(d.image_size) // self.patch) ** 2
        self.mean = torch.tensor(list(d.mean)).view(1, -1, 1, 1)
        self.std = torch.tensor(list(d.std)).view(1, -1, 1, 1)

    def build_datasets(self):
        train, val = build_vision_datasets(self.cfg.data)
        if not isinstance(train, TensorDataset) and hasattr(train, "transform"):  # hub / folder images, not the
            train.transform = pretrain_transform(self.cfg.data, self.cfg.model.crop_scale)  # embedded tensors
        return (MaskedSamples(train, self.num_patches),
                MaskedSamples(val, self.num_patches, seed=int(self.cfg.seed)))

    # --- training and validation --------------------------------------------------------------------------
    def loss(self, model, batch):
        x, _, noise = batch
        return model(x, noise)[0]

    @torch.no_grad()
    def eval_step(self, model, batch):
        x, _, noise = batch
        loss = model(x, noise)[0].float()
        n = torch.tensor(float(len(x)), device=x.device)
        return {"loss": loss * n, "count": n}  # every image hides as many patches: the batch mean is theirs

    def eval_metrics(self, sums):
        return {"loss": sums["loss"] / max(sums["count"], 1)}

    def summary_metric(self):
        return "val/loss", "min"

    # --- looking at it ------------------------------------------------------------------------------------
    def to_images(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised images -> [0, 1]."""
        return (x.float().cpu() * self.std + self.mean).clamp(0, 1)

    @torch.no_grad()
    def reconstruct(self, model: nn.Module, x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(masked, reconstruction) images in model space: the hidden patches grey / predicted, the visible ones
        pasted from `x`."""
        _, pred, mask = model(x, noise)
        target = patchify(x.float(), self.patch)
        pred = pred.float()
        if self.cfg.model.norm_pix_loss:  # back on each true patch's mean and std (see the module doc)
            pred = pred * (target.var(dim=-1, keepdim=True) + 1e-6).sqrt() + target.mean(dim=-1, keepdim=True)
        hidden = mask[..., None].bool()
        grey = ((MASKED_GREY - self.mean) / self.std).to(x.device).flatten()  # per channel, model space
        grey = grey.repeat(self.patch * self.patch)  # patch layout: (row, column, channel)
        c = x.shape[1]
        masked = unpatchify(torch.where(hidden, grey, target), self.patch, c)
        recon = unpatchify(torch.where(hidden, pred, target), self.patch, c)
        return masked, recon

    def visualize(self, model: nn.Module) -> dict[str, np.ndarray]:
        """The first ``model.vis_images`` validation images with their fixed masks, three rows: original,
        masked, reconstruction with the visible patches pasted."""
        n = min(int(self.cfg.model.vis_images), len(self.datasets[1]))
        if n <= 0:
            return {}
        x, _, noise = default_collate([self.datasets[1][i] for i in range(n)])
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            masked, recon = self.reconstruct(model, x.to(device), noise.to(device))
        finally:
            model.train(was_training)
        rows = torch.cat([self.to_images(x), self.to_images(masked), self.to_images(recon)])
        hidden = f"masked ({self.cfg.model.mask_ratio:.0%} hidden)"
        return {"reconstruction": image_grid(rows, n, labels=[t for t in ("original", hidden, "reconstruction")
                                                              for _ in range(n)])}
