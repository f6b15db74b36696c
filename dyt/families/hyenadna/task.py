"""Next-nucleotide pre-training (HyenaDNA): cross-entropy over (input, target) windows of a genome, [PAD] (N,
padding) ignored as in the Caduceus repo's hg38 experiment (``ignore_index: 4``); val loss, perplexity, accuracy."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dyt.data.dna import PAD, build_dna_datasets
from dyt.errors import ConfigError
from dyt.tasks.base import Task


class DNALanguageTask(Task):
    throughput_unit = "tokens"

    def __init__(self, cfg, dist):
        super().__init__(cfg, dist)
        if cfg.data.mlm:
            raise ConfigError("data.mlm=true makes masked-LM samples (Caduceus); HyenaDNA pre-trains on the next "
                              "token: set data.mlm=false")

    def build_datasets(self):
        return build_dna_datasets(self.cfg.data, seed=int(self.cfg.seed))

    def batch_units(self, batch) -> int:
        return int(batch[1].numel())

    def loss(self, model, batch):
        ids, targets = batch
        return F.cross_entropy(model(ids).flatten(0, 1).float(), targets.flatten(), ignore_index=PAD)

    @torch.no_grad()
    def eval_step(self, model, batch):
        ids, targets = batch
        logits = model(ids).float().flatten(0, 1)
        targets = targets.flatten()
        counted = targets != PAD
        return {"nll": F.cross_entropy(logits, targets, ignore_index=PAD, reduction="sum"),
                "correct": ((logits.argmax(-1) == targets) & counted).sum().double(),
                "tokens": counted.sum().double()}

    def eval_metrics(self, sums):
        n = max(sums["tokens"], 1)
        loss = sums["nll"] / n
        return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "acc": sums["correct"] / n}

    def summary_metric(self):
        return "val/loss", "min"
