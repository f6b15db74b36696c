"""DINO's loss (cross-entropy between the centred, sharpened teacher and the student over pairs of different views)
and its schedules, each a pure function of the step so that a resumed run continues them exactly."""
from __future__ import annotations

import math

import torch
import torch.distributed as torch_dist
import torch.nn as nn
import torch.nn.functional as F


def cosine_schedule(base: float, final: float, it: int, total: int, warmup: int = 0, start: float = 0.0) -> float:
    """Iteration `it` (0-based) of main_dino's ``cosine_scheduler`` over `total` iterations: a linear warmup from
    `start` to `base` over `warmup` iterations (both ends included), then a cosine from `base` to `final`."""
    if it < warmup:
        return start + (base - start) * it / max(1, warmup - 1)
    n = max(1, total - warmup)
    return final + 0.5 * (base - final) * (1 + math.cos(math.pi * min(it - warmup, n) / n))


def teacher_temperature(epoch: int, warmup_temp: float, temp: float, warmup_epochs: int) -> float:
    """DINOLoss's schedule: linear from `warmup_temp` to `temp` over `warmup_epochs` epochs (both ends included,
    np.linspace), then `temp`."""
    if epoch >= warmup_epochs:
        return temp
    return warmup_temp + (temp - warmup_temp) * epoch / max(1, warmup_epochs - 1)


class DINOLoss(nn.Module):
    """H(teacher, student) averaged over every (teacher global view, student view) pair of different views.

    The centre is a buffer: checkpoints carry it and a resumed run continues it exactly. It moves (momentum
    `center_momentum`) to the mean teacher output of the global batch (all-reduced over ranks) at every training
    call; evaluation passes ``update_center=False``."""

    def __init__(self, out_dim: int, ncrops: int, student_temp: float = 0.1, center_momentum: float = 0.9):
        super().__init__()
        self.ncrops, self.student_temp, self.center_momentum = ncrops, student_temp, center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student_out: torch.Tensor, teacher_out: torch.Tensor, teacher_temp: float,
                update_center: bool = True) -> torch.Tensor:
        """`student_out`: (ncrops * B, out_dim), crop-major (all samples' crop 0, then crop 1, ...);
        `teacher_out`: (2 * B, out_dim), the two global crops."""
        student = (student_out.float() / self.student_temp).chunk(self.ncrops)
        teacher = F.softmax((teacher_out.float() - self.center) / teacher_temp, dim=-1).detach().chunk(2)
        total, terms = 0.0, 0
        for iq, q in enumerate(teacher):
            for v, s in enumerate(student):
                if v == iq:  # the student's view of the same global crop
                    continue
                total = total + torch.sum(-q * F.log_softmax(s, dim=-1), dim=-1).mean()
                terms += 1
        if update_center:
            self.update_center(teacher_out.float())
        return total / terms

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        batch_center = teacher_out.sum(dim=0, keepdim=True)
        world = 1
        if torch_dist.is_available() and torch_dist.is_initialized():
            torch_dist.all_reduce(batch_center)
            world = torch_dist.get_world_size()
        batch_center = batch_center / (len(teacher_out) * world)
        self.center.copy_(self.center * self.center_momentum + batch_center * (1 - self.center_momentum))
