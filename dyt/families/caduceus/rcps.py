"""Reverse-complement parameter sharing (RCPS, Caduceus-PS): modules whose output on the reverse complement of a
DNA sequence is the reverse complement of their output (kuleshov-group/caduceus, caduceus/modeling_rcps.py).

An RCPS hidden state has 2 x d channels, (B, L, 2d): the forward strand's d channels, then the reverse-complement
strand's d channels stored reversed in length and in channels, so that the reverse complement of a hidden state
is ``rc(h) = h.flip(-2, -1)`` (length and all channels): the two halves swap, each reversed. On token ids the
reverse complement flips the length and maps each token to its complement (A<->T, C<->G, the others to themselves).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def rc(x: torch.Tensor) -> torch.Tensor:
    """Reverse complement of a (..., L, C) hidden state: flip the length and the channels."""
    return x.flip(-2, -1)


def rc_ids(ids: torch.Tensor, complement: torch.Tensor) -> torch.Tensor:
    """Reverse complement of (B, L) token ids: flip the length, map each id to its complement."""
    return complement[ids.flip(-1)]


def halves_swapped(x: torch.Tensor) -> torch.Tensor:
    """The two d-channel halves exchanged: what the released fused add+norm path does at every block (see
    dyt/families/caduceus/model.py, CaduceusBlock). It commutes with `rc`, so the model stays RC-equivariant."""
    a, b = x.chunk(2, dim=-1)
    return torch.cat([b, a], dim=-1)


class RCPSEmbedding(nn.Module):
    """Token embedding (vocab x d) with 2d output: [E(ids), rc(E(rc_ids(ids)))]."""

    def __init__(self, vocab_size: int, d_model: int, complement: list[int]):
        super().__init__()
        self.complement_ids = list(complement)
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.register_buffer("complement", torch.tensor(self.complement_ids), persistent=False)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Also the buffer: after meta-device construction + to_empty() it holds garbage."""
        self.embedding.reset_parameters()
        self.complement.copy_(torch.tensor(self.complement_ids))

    @property
    def weight(self) -> nn.Parameter:
        return self.embedding.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.embedding(ids), rc(self.embedding(rc_ids(ids, self.complement)))], dim=-1)


class RCPS(nn.Module):
    """Any (B, L, d) -> (B, L, d') module made RC-equivariant on 2d channels: [f(h_fwd), rc(f(rc(h_rc)))]
    (the repo's RCPSWrapper; its RCPSAddNormWrapper is this around a norm, after the residual add)."""

    def __init__(self, submodule: nn.Module):
        super().__init__()
        self.submodule = submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fwd, rev = x.chunk(2, dim=-1)
        return torch.cat([self.submodule(fwd), rc(self.submodule(rc(rev)))], dim=-1)


def rcps_logits(x: torch.Tensor, weight: torch.Tensor, complement: torch.Tensor) -> torch.Tensor:
    """The RCPS LM head (the repo's RCPSLMHead) with the embedding's weight W (tied, as the released
    CaduceusForMaskedLM.tie_weights does): ``h_fwd W^T + flip_C(h_rc) W[complement]^T`` over 2d channels. The RC
    strand votes for the complement of each token, so the logits of rc_ids(x) are the logits of x flipped in
    length with the vocabulary permuted by the complement."""
    fwd, rev = x.chunk(2, dim=-1)
    return F.linear(fwd, weight) + F.linear(rev.flip(-1), weight[complement])
