"""Masked-LM pre-training (Caduceus): cross-entropy on the masked positions of genome windows.

The samples come from dyt.data.dna with ``data.mlm=true`` (the Caduceus repo's mlm_getitem: 15% of the tokens
picked, of those 80% [MASK], 10% a random id, 10% kept; the target is [PAD] at every other position), so the loss
over the counted targets is the loss on the masked positions; N bases are [PAD] too and never counted. The loss is
divided by the expected masked count, B x L x mlm_probability (dyt.tasks.dna_lm): 2 ranks train exactly as 1
process (the repo's per-GPU mean of the drawn count was 1.2e-5 relative apart at the first step of the tiny run;
the two differ by 1/sqrt(B L p): 0.25% for the paper's 1024 x 1024 tokens a step). The masks are drawn per sample
under the loader's seeding (dyt.data.sampler.SeededSamples): exact resume; the validation masks are fixed per
sample.
"""
from __future__ import annotations

from dyt.tasks.dna_lm import DNATokenTask


class MaskedDNATask(DNATokenTask):
    def target_share(self) -> float:
        return float(self.cfg.data.mlm_probability)
