"""Image classification (ViT, ConvNeXt): cross-entropy with optional Mixup/CutMix and label smoothing."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.data import Mixup

from dyt.data.vision import build_vision_datasets
from dyt.errors import ConfigError
from dyt.tasks.base import Task


class ClassificationTask(Task):
    def __init__(self, cfg, dist):
        super().__init__(cfg, dist)
        a = cfg.data.augment
        self.mixup = None
        if a.mixup > 0 or a.cutmix > 0:
            # mixes within each rank's micro-batch, as the paper's code
            self.mixup = Mixup(mixup_alpha=a.mixup, cutmix_alpha=a.cutmix, label_smoothing=a.label_smoothing,
                               num_classes=cfg.data.num_classes)
        self.label_smoothing = a.label_smoothing

    def check_micro_batch(self, micro_batch):
        if self.mixup is not None and micro_batch % 2:  # timm's Mixup pairs each sample with its mirror in the batch
            t = self.cfg.trainer
            raise ConfigError(f"Mixup/CutMix needs an even micro-batch per rank, got {micro_batch} (trainer.batch_size="
                              f"{t.batch_size} / (world_size {self.dist.world_size} x trainer.grad_accum "
                              f"{t.grad_accum})); change trainer.batch_size or turn off data.augment.mixup/cutmix")

    def build_datasets(self):
        return build_vision_datasets(self.cfg.data)

    def loss(self, model, batch):
        x, y = batch
        if self.mixup is not None:  # micro-batches are full (drop_last) and even (check_micro_batch)
            x, soft = self.mixup(x, y)
            logits = model(x)
            return torch.sum(-soft * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        return F.cross_entropy(model(x).float(), y, label_smoothing=self.label_smoothing)

    @torch.no_grad()
    def eval_step(self, model, batch):
        x, y = batch
        logits = model(x).float()
        top5 = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        hits = top5.eq(y[:, None])
        return {"loss": F.cross_entropy(logits, y, reduction="sum"), "top1": hits[:, 0].sum(),
                "top5": hits.any(dim=-1).sum(), "count": torch.tensor(len(y), device=y.device)}

    def eval_metrics(self, sums):
        n = max(sums["count"], 1)
        return {"loss": sums["loss"] / n, "top1": 100.0 * sums["top1"] / n, "top5": 100.0 * sums["top5"] / n}

    def summary_metric(self):
        return "val/top1", "max"
