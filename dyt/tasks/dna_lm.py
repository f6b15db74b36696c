"""Pre-training on genome windows (dyt.data.dna): cross-entropy on the counted targets, [PAD] ignored as in the
Caduceus repo's hg38 experiment (``ignore_index: 4``: N bases, padding, and in masked-LM samples every position
that is not masked); metrics: val loss, perplexity and accuracy on the counted targets.

The training loss is the summed loss divided by the EXPECTED number of counted targets of the micro-batch
(B x L x `target_share`), not the drawn number (the repo's per-GPU mean): drawn counts differ between ranks and
micro-batches (N runs, masked-LM draws), so a mean per rank would weight tokens by how the global batch is split,
and 2 ranks (or grad_accum 2) would not train as 1 process. The two agree up to the count's relative spread.
HyenaDNA (next token: share 1) and Caduceus (masked LM: share data.mlm_probability) subclass it."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dyt.data.dna import PAD, build_dna_datasets
from dyt.tasks.base import Task


class DNATokenTask(Task):
    throughput_unit = "tokens"

    def target_share(self) -> float:
        """The expected share of positions whose target is counted."""
        raise NotImplementedError

    def build_datasets(self):
        return build_dna_datasets(self.cfg.data, seed=int(self.cfg.seed))

    def batch_units(self, batch) -> int:
        return int(batch[0].numel())  # tokens seen

    def loss(self, model, batch):
        ids, targets = batch
        nll = F.cross_entropy(model(ids).flatten(0, 1).float(), targets.flatten(), ignore_index=PAD, reduction="sum")
        return nll / (targets.numel() * self.target_share())

    @torch.no_grad()
    def eval_step(self, model, batch):
        ids, targets = batch
        logits, targets = model(ids).float().flatten(0, 1), targets.flatten()
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
