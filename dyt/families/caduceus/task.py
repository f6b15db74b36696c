"""Masked-LM pre-training (Caduceus): cross-entropy on the masked positions of genome windows.

The samples come from dyt.data.dna with ``data.mlm=true`` (the Caduceus repo's mlm_getitem: 15% of the tokens
picked, of those 80% [MASK], 10% a random id, 10% kept; the target is [PAD] at every other position), so the loss
over targets with ``ignore_index=[PAD]`` (the repo's hg38 experiment: ``ignore_index: 4``) is the loss on the masked
positions (summed); N bases are [PAD] too and never counted. Metrics: val loss, perplexity and accuracy on masked tokens.

The training loss is that sum divided by the EXPECTED number of masked tokens of the micro-batch (B x L x
mlm_probability), not by the drawn number (the repo's per-GPU mean): the drawn counts differ between ranks and
micro-batches, so a mean per rank would weight tokens by how the global batch is split, and 2 ranks (or
grad_accum 2) would not train as 1 process (1.2e-5 relative apart at the first step of the tiny run). The two
differ by the relative spread of the count, 1/sqrt(B L p): 0.25% for the paper's 1024 x 1024 tokens a step.
HyenaDNA's loss does the same (sum / target positions).

The masks are drawn per sample under the loader's seeding (dyt.data.sampler.SeededSamples): exact resume; the
validation masks are fixed per sample.
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
        nll = F.cross_entropy(model(ids).flatten(0, 1).float(), targets.flatten(), ignore_index=PAD, reduction="sum")
        return nll / (targets.numel() * float(self.cfg.data.mlm_probability))

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
