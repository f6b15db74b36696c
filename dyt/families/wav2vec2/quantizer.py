"""The product quantizer of wav2vec 2.0 (fairseq's ``GumbelVectorQuantizer``, weight_proj_depth 1, combine_groups
off, time first): G groups of V learned code vectors; each feature picks one entry per group through a Gumbel
softmax with a hard (straight-through) choice in training and the argmax in evaluation, and the picks are
concatenated."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def annealed_temperature(step: int, start: float, end: float, decay: float) -> float:
    """fairseq's ``set_num_updates``: ``max(start * decay ** step, end)`` at update `step` (0-based)."""
    return max(start * decay ** step, end)


def perplexity(probs: torch.Tensor) -> torch.Tensor:
    """Sum over groups of exp(entropy) of [G, V] probabilities (fairseq's, with its 1e-7 inside the log)."""
    return torch.exp(-torch.sum(probs * torch.log(probs + 1e-7), dim=-1)).sum()


class GumbelQuantizer(nn.Module):
    def __init__(self, dim: int, num_vars: int, groups: int, vq_dim: int):
        super().__init__()
        if vq_dim % groups:
            raise ValueError(f"vq_dim {vq_dim} must be divisible by the {groups} groups")
        self.num_vars, self.groups = num_vars, groups
        self.vars = nn.Parameter(torch.empty(1, groups * num_vars, vq_dim // groups))
        self.weight_proj = nn.Linear(dim, groups * num_vars)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.uniform_(self.vars)
        nn.init.normal_(self.weight_proj.weight, mean=0, std=1)
        nn.init.zeros_(self.weight_proj.bias)

    def forward(self, x: torch.Tensor, temperature: float, noise: torch.Tensor | None = None) -> dict:
        """`x` [B, M, dim] -> ``{"x": [B, M, vq_dim], "prob_perplexity", "code_perplexity", "num_vars"}``.

        `noise` ([B, M, G, V] standard Gumbel, `masking.gumbel_noise`) is added in training; without it (evaluation)
        each group takes its argmax. ``prob_perplexity`` is that of the softmax averaged over every feature of the
        batch (what the diversity loss maximises), ``code_perplexity`` that of the argmax choices."""
        b, m, _ = x.shape
        logits = self.weight_proj(x).view(b * m, self.groups, self.num_vars)
        with torch.no_grad():
            hard = F.one_hot(logits.argmax(-1), self.num_vars).float()
            code_ppl = perplexity(hard.mean(0))
        prob_ppl = perplexity(torch.softmax(logits.float(), dim=-1).mean(0))
        if noise is not None:  # F.gumbel_softmax(hard=True) with our noise: one-hot forward, soft backward
            soft = torch.softmax((logits.float() + noise.reshape_as(logits).to(logits.device)) / temperature, dim=-1)
            onehot = (F.one_hot(soft.argmax(-1), self.num_vars).float() - soft.detach() + soft).type_as(x)
        else:
            onehot = hard.type_as(x)
        vars = self.vars.view(self.groups, self.num_vars, -1).to(onehot.dtype)
        q = torch.einsum("ngv,gvd->ngd", onehot, vars).reshape(b, m, -1)
        return {"x": q, "prob_perplexity": prob_ppl, "code_perplexity": code_ppl,
                "num_vars": self.num_vars * self.groups}

    def extra_repr(self) -> str:
        return f"groups={self.groups}, num_vars={self.num_vars}, log2(codebook)={math.log2(self.num_vars ** self.groups):.1f}"
