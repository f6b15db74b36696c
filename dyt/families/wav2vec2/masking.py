"""Span masking and distractor sampling, drawn per sample.

fairseq draws both from global RNGs (numpy for ``compute_mask_indices``, torch for ``sample_negatives``); here every
draw of sample b comes from ``gens[b]``, a CPU ``torch.Generator`` seeded by the sample's own seed (the data gives
it), so a resumed run and a run split over ranks draw what the uninterrupted single process drew. The draws of one
sample are made in a fixed order: its share of the span count, its span starts, its trim (when its spans cover
more frames than the batch's fewest), then its negatives, then its Gumbel noise (`gumbel_noise`).
"""
from __future__ import annotations

import torch


def span_mask(gens: list[torch.Generator], frames: int, prob: float, length: int, min_masks: int = 2) -> torch.Tensor:
    """fairseq's ``compute_mask_indices`` (static lengths, overlap allowed, no padding, ``require_same_masks``) for a
    batch of ``len(gens)`` sequences of `frames` frames: a bool [B, frames] mask on the CPU.

    ``int(prob * frames / length + u)`` spans (at least `min_masks`) of `length` frames start at distinct random
    frames; spans may overlap and are cut at the end, so about ``1 - (1 - length / frames) ** spans`` of the frames
    are masked (49% at prob 0.65, length 10). fairseq draws ONE u per batch: here u is the first sample's (every
    sample draws one, so each sample's later draws do not depend on its place in the batch). Every row then keeps
    as many masked frames as the row with the fewest (the others drop a random few), as fairseq does so that the
    masked frames of a batch form a [B, M] block."""
    us = [float(torch.rand((), generator=g)) for g in gens]
    spans = max(min_masks, int(prob * frames / float(length) + us[0]))
    min_len = length
    if frames - min_len <= spans:  # fairseq's guard for short sequences: room for `spans` distinct starts
        min_len = frames - spans - 1
    offsets = torch.arange(length)
    rows = []
    for g in gens:
        starts = torch.randperm(frames - min_len, generator=g)[:spans]
        idx = (starts[:, None] + offsets).flatten()
        rows.append(torch.unique(idx[idx < frames]))
    keep = min(len(r) for r in rows)
    mask = torch.zeros(len(gens), frames, dtype=torch.bool)
    for b, (g, idx) in enumerate(zip(gens, rows)):
        if len(idx) > keep:
            idx = idx[torch.randperm(len(idx), generator=g)[:keep]]
        mask[b, idx] = True
    return mask


def negative_indices(gens: list[torch.Generator], masked: int, num_negatives: int) -> torch.Tensor:
    """fairseq's ``sample_negatives`` (no cross-sample negatives): for each of the `masked` positions of each row,
    `num_negatives` indices of OTHER masked positions of the same row, uniformly with replacement. Long
    [B, masked, num_negatives] on the CPU."""
    if masked < 2:
        raise ValueError(f"{masked} masked frame(s) per sample: negatives need at least 2")
    own = torch.arange(masked).repeat_interleave(num_negatives)
    rows = []
    for g in gens:
        idx = torch.randint(0, masked - 1, (masked * num_negatives,), generator=g)
        idx[idx >= own] += 1  # skip the position itself: [0, masked - 1) mapped onto the others
        rows.append(idx.view(masked, num_negatives))
    return torch.stack(rows)


def gumbel_noise(gens: list[torch.Generator], shape: tuple[int, ...]) -> torch.Tensor:
    """Standard Gumbel noise of `shape` per sample (torch's ``F.gumbel_softmax``: ``-log(Exp(1))``): [B, *shape]."""
    return torch.stack([-torch.empty(shape).exponential_(generator=g).log() for g in gens])
