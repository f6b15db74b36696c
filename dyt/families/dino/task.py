"""DINO self-distillation pre-training as a Task: the multi-crop data, the loss, and the step hooks that carry
DINO's schedules (weight decay, teacher temperature), its last-layer freeze, its per-parameter gradient clipping
and the teacher's EMA. Each is a pure function of the step, so a resumed run continues them exactly; the only
state (the teacher, the loss's centre) lives in the model, hence in its checkpoints.

Validation: the DINO loss on the validation images (crops fixed per sample, the final teacher temperature, the
centre not moved) and, with ``model.dino.knn_train_samples > 0``, eval_knn.py's weighted k-NN top-1 of the
teacher's cls features against that many training images (a fixed subset).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Subset

from dyt.families.dino.data import dino_datasets
from dyt.families.dino.loss import cosine_schedule, teacher_temperature
from dyt.tasks.base import Task


def knn_predict(features: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, k: int, temperature: float,
                num_classes: int) -> torch.Tensor:
    """eval_knn.py's classifier: each of the `k` most similar bank features votes for its label with weight
    exp(cosine / temperature); returns the top class of each row of `features` (all l2-normalised)."""
    similarity = features @ bank.T
    sims, idx = similarity.topk(min(k, len(bank)), dim=1)
    votes = torch.zeros(len(features), num_classes, device=features.device)
    votes.scatter_add_(1, bank_labels[idx], (sims / temperature).exp())
    return votes.argmax(dim=1)


@torch.no_grad()
def clip_per_parameter(parameters, clip: float) -> torch.Tensor:
    """utils.clip_gradients: each gradient scaled to norm <= `clip` on its own (coefficient clip / (norm + 1e-6)
    when below 1), on the device (no host sync per parameter). Returns the norm of all the gradients before
    clipping, to log."""
    norms = []
    for p in parameters:
        if p.grad is None:
            continue
        norm = p.grad.norm(2)
        norms.append(norm)
        p.grad.mul_((clip / (norm + 1e-6)).clamp(max=1.0))
    return torch.stack(norms).square().sum().sqrt() if norms else torch.zeros(())


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher = m * teacher + (1 - m) * student, parameter by parameter in order (main_dino.py). Under FSDP2 both
    are DTensors sharded alike, so this is elementwise on the local shards."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(momentum).add_((1 - momentum) * s.detach())


class DINOTask(Task):
    def __init__(self, cfg, dist):
        super().__init__(cfg, dist)
        self.dc = cfg.model.dino
        self.teacher_temp = float(self.dc.teacher_temp)  # set per step by on_step_start
        self._knn_bank: tuple[torch.Tensor, torch.Tensor] | None = None
        self._knn_train: Dataset | None = None

    # --- data -----------------------------------------------------------------------------------------------
    def build_datasets(self):
        train, val, self._knn_train = dino_datasets(self.cfg)
        return train, val

    def to_device(self, batch, device):
        crops, *rest = batch  # crops: a list of (B, C, H, W) tensors, one per crop
        return [[self._to_device(c, device) for c in crops], *(self._to_device(t, device) for t in rest)]

    def batch_units(self, batch) -> int:
        return len(batch[-1])  # images (each gives 2 + local_number crops)

    # --- the step ---------------------------------------------------------------------------------------------
    def epoch(self, step: int) -> int:
        return step // self.steps_per_epoch

    def on_step_start(self, step, optimizer):
        """Weight decay (cosine from optim.weight_decay to weight_decay_end, on the decayed groups) and the teacher
        temperature of the step about to be taken."""
        wd = cosine_schedule(self.cfg.optim.weight_decay, self.dc.weight_decay_end, step, self.max_steps)
        for group in optimizer.param_groups:
            if group["weight_decay"] != 0:  # main_dino: only the regularised group
                group["weight_decay"] = wd
        self.teacher_temp = teacher_temperature(self.epoch(step), self.dc.warmup_teacher_temp, self.dc.teacher_temp,
                                                self.dc.warmup_teacher_temp_epochs)

    def loss(self, model, batch):
        crops, _ = batch
        return model(crops, self.teacher_temp)

    def clip_gradients(self, model, clip):
        return clip_per_parameter(model.student.parameters(), clip)

    def before_optimizer_step(self, model, step):
        """The head's last layer gets no update in the first freeze_last_layer epochs (its gradient dropped)."""
        if self.epoch(step) < self.dc.freeze_last_layer:
            for p in model.student_last_layer():
                p.grad = None

    def after_optimizer_step(self, model, step):
        ema_update(model.teacher, model.student,
                   cosine_schedule(self.dc.momentum_teacher, 1.0, step, self.max_steps))

    # --- validation ---------------------------------------------------------------------------------------------
    def val_loader(self, batch):
        self._knn_bank = None  # a new evaluation: the bank is the current teacher's
        return super().val_loader(batch)

    def _bank(self, model, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's features of a fixed subset of the training images; every rank computes all of it (the
        same forwards on every rank, as a sharded model needs)."""
        if self._knn_bank is None:
            self.datasets  # noqa: B018 - built on first use, with the k-NN views of the training images
            train = self._knn_train
            n = min(int(self.dc.knn_train_samples), len(train))
            subset = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:n].tolist()
            feats, labels = [], []
            for x, y in DataLoader(Subset(train, subset), batch_size=batch_size, num_workers=self.num_workers()):
                feats.append(model(knn_images=self._to_device(x, device)))
                labels.append(y.to(device))
            self._knn_bank = torch.cat(feats), torch.cat(labels)
        return self._knn_bank

    @torch.no_grad()
    def eval_step(self, model, batch):
        crops, view, y = batch
        n = torch.tensor(float(len(y)), device=y.device)
        out = {"loss": model(crops, float(self.dc.teacher_temp), update_center=False).float() * n, "count": n}
        if self.dc.knn_train_samples > 0:
            bank, labels = self._bank(model, len(y), y.device)
            pred = knn_predict(model(knn_images=view), bank, labels, self.dc.knn_k, self.dc.knn_temperature,
                               int(self.cfg.data.num_classes))
            out["knn_top1"] = (pred == y).sum().float()
        return out

    def eval_metrics(self, sums):
        n = max(sums["count"], 1)
        out = {"loss": sums["loss"] / n}
        if "knn_top1" in sums:
            out["knn_top1"] = 100.0 * sums["knn_top1"] / n
        return out

    def summary_metric(self):
        return ("val/knn_top1", "max") if self.dc.knn_train_samples > 0 else ("val/loss", "min")
