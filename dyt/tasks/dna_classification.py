"""DNA sequence classification (GenomicBenchmarks, Table 6): a DNA family's language model as the backbone, the
Caduceus repo's decoder on top, cross-entropy, accuracy on the validation part and on the test split.

The backbone is the family's model without its token head: ``model.features(input_ids) -> [B, L, D]`` (or
``[B, L, D, 2]``: a reverse-complement-equivariant model's forward and reverse-complement strands, the repo's
``DNAEmbeddingModelCaduceus`` with ``rcps``). The decoder is the repo's ``SequenceDecoder(mode="pool",
l_output=0)`` (src/tasks/decoders.py): the mean over every position (padding included: ``use_lengths`` is off),
then a Linear; with two strands (``conjoin_train``) it averages the Linear's outputs of the two strands, which,
the Linear being affine, is the Linear of the strands' mean.

A DNA family names `by_data_kind(<its pre-training task>)` as its ``Family.task`` and `as_backbone` as its
``Family.backbone``: a run on GenomicBenchmarks data (``data=gb_*``) is then a classification run that
``trainer.init_from=<pre-training run>`` starts from that run's weights (dyt/init_from.py).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from dyt.data.genomic_benchmarks import GenomicDataConfig, build_genomic_datasets
from dyt.errors import ConfigError
from dyt.tasks.base import Task

PREFIX = "backbone."  # where the language model's weights sit in the classifier


class SequencePool(nn.Module):
    """Mean over the sequence (and the strands, when there are two), then Linear."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.proj = nn.Linear(dim, num_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        pooled = h.mean(dim=1)  # [B, D] or [B, D, 2]
        return self.proj(pooled.mean(dim=-1) if pooled.dim() == 3 else pooled)


class SequenceClassifier(nn.Module):
    """``head(backbone.features(ids))``. The language model's token head stays (unused): the DNA families tie it to
    the embedding, so it holds no parameter of its own and the source's state dict loads as it is."""

    def __init__(self, backbone: nn.Module, dim: int, num_classes: int):
        super().__init__()
        self.backbone, self.head = backbone, SequencePool(dim, num_classes)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.features(input_ids))

    def no_weight_decay(self) -> set[str]:
        """The backbone's own exemptions (HyenaDNA: the embedding and the filter MLPs), as in pre-training."""
        own = self.backbone.no_weight_decay() if hasattr(self.backbone, "no_weight_decay") else ()
        return {PREFIX + n for n in own}


def as_backbone(state: Mapping[str, Any]) -> dict:
    """A DNA pre-training run's model weights as the classifier's backbone (``Family.backbone``)."""
    return {PREFIX + k: v for k, v in state.items()}


def is_classification(cfg) -> bool:
    from dyt.validate import data_kind  # dyt.validate imports the family registry
    return data_kind(cfg.data) == GenomicDataConfig.KIND


def by_data_kind(pretrain_task):
    """A DNA family's ``Family.task``: the classification task on GenomicBenchmarks data, else `pretrain_task`."""
    def task(cfg, dist) -> Task:
        return (DNAClassificationTask if is_classification(cfg) else pretrain_task)(cfg, dist)
    return task


class DNAClassificationTask(Task):
    """Evaluation counts the validation part (``val/top1``, which picks the best epoch) and the test split
    (``val/test_top1``) apart: the paper's number is the test accuracy at the best validation epoch
    (dyt/paper/suite.py)."""

    def build_model(self) -> nn.Module:
        dim = self.cfg.model.get("d_model")
        if dim is None:
            raise ConfigError(f"model={self.cfg.model.name}: DNA classification needs model.d_model (the width of "
                              "model.features)")
        return SequenceClassifier(super().build_model(), int(dim), int(self.cfg.data.num_classes))

    def build_datasets(self):
        return build_genomic_datasets(self.cfg.data)

    def loss(self, model, batch):
        ids, y = batch[0], batch[1]
        return F.cross_entropy(model(ids).float(), y)

    @torch.no_grad()
    def eval_step(self, model, batch):
        ids, y, split = batch
        logits = model(ids).float()
        losses = F.cross_entropy(logits, y, reduction="none")
        hits = logits.argmax(dim=-1).eq(y).float()
        out = {}
        for name, part in (("", split == 0), ("test_", split == 1)):
            out.update({f"{name}loss": losses[part].sum(), f"{name}top1": hits[part].sum(),
                        f"{name}count": part.sum().float()})
        return out

    def eval_metrics(self, sums):
        out = {}
        for name in ("", "test_"):
            n = max(sums[f"{name}count"], 1)
            out.update({f"{name}loss": sums[f"{name}loss"] / n, f"{name}top1": 100.0 * sums[f"{name}top1"] / n})
        return out

    def summary_metric(self):
        return "val/top1", "max"
