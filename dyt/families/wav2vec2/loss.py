"""fairseq's wav2vec criterion (fairseq/criterions/wav2vec_criterion.py, ``infonce: true``, ``loss_weights
[0.1, 10]``), as sums over a batch of S = B x M masked frames:

    contrastive = sum over masked frames of cross_entropy(logits, target 0)        (fairseq loss_0)
    diversity   = 0.1 x (G V - prob_perplexity) / (G V) x S                         (loss_1)
    penalty     = 10 x mean(conv features ** 2) x S                                 (loss_2)
    loss        = contrastive + diversity + penalty

fairseq logs each of them as sum / S / ln 2 (bits per masked frame; ``reduce_metrics`` divides by ``math.log(2)``),
validation summed over the whole split before dividing: that ``valid_loss`` is what Table 5 reports (1.95 for Base).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

PARTS = ("loss", "contrastive", "diversity", "penalty")


def loss_sums(out: dict, loss_weights) -> dict[str, torch.Tensor]:
    """The criterion's sums for one batch (`Wav2Vec2.forward`'s output): the PARTS in nats, ``sample_size`` S, and
    fairseq's accuracy counts (``correct``: the target scores highest and not every logit ties; ``count``: S)."""
    logits = out["logits"]
    flat = logits.reshape(-1, logits.shape[-1])
    size = flat.shape[0]
    contrastive = F.cross_entropy(flat, flat.new_zeros(size, dtype=torch.long), reduction="sum")
    diversity = loss_weights[0] * (out["num_vars"] - out["prob_perplexity"]) / out["num_vars"] * size
    penalty = loss_weights[1] * out["features_pen"] * size
    with torch.no_grad():
        best, worst = flat.argmax(-1) == 0, flat.argmin(-1) == 0
        correct = (best & ~worst).sum().float()
    return {"loss": contrastive + diversity + penalty, "contrastive": contrastive, "diversity": diversity,
            "penalty": penalty, "sample_size": torch.tensor(float(size), device=flat.device), "correct": correct,
            "count": torch.tensor(float(size), device=flat.device)}


def in_bits(total: torch.Tensor | float, sample_size: torch.Tensor | float):
    """A summed loss as fairseq logs it: per masked frame, in bits."""
    return total / sample_size / math.log(2)
