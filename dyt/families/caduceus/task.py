"""Masked-LM pre-training (Caduceus): cross-entropy on the masked positions of genome windows.

The samples come from dyt.data.dna with ``data.mlm=true`` (the Caduceus repo's mlm_getitem: 15% of the tokens
picked, of those 80% [MASK], 10% a random id, 10% kept; the target is [PAD] at every other position), so the loss
over targets with ``ignore_index=[PAD]`` (the repo's hg38 experiment: ``ignore_index: 4``) is the loss on the masked
positions; N bases are [PAD] too and never counted. Metrics: val loss, perplexity and accuracy on masked tokens.
The masks are drawn per sample under the loader's seeding (dyt.data.sampler.SeededSamples): exact resume, 2 ranks
equal 1 process; validation masks are fixed per sample.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dyt.data.dna import PAD, build_dna_datasets
from dyt.tasks.base import Task


class MaskedDNATask(Task):
    throughput_unit = "tokens"

    def build_datasets(self):
        return build_dna_datasets(self.cfg.data, seed=int(self.cfg.seed))

    def batch_units(self, batch) -> int:
        return int(batch[0].numel())  # tokens seen (the loss counts only the masked ones)

    def loss(self, model, batch):
        ids, targets = batch
        return F.cross_entropy(model(ids).flatten(0, 1).float(), targets.flatten(), ignore_index=PAD)

    @torch.no_grad()
    def eval_step(self, model, batch):
        ids, targets = batch
        logits, targets = model(ids).float().flatten(0, 1), targets.flatten()
        masked = targets != PAD
        return {"nll": F.cross_entropy(logits, targets, ignore_index=PAD, reduction="sum"),
                "correct": ((logits.argmax(-1) == targets) & masked).sum().double(),
                "tokens": masked.sum().double()}

    def eval_metrics(self, sums):
        n = max(sums["tokens"], 1)
        loss = sums["nll"] / n
        return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "acc": sums["correct"] / n}

    def summary_metric(self):
        return "val/loss", "min"
