"""Next-nucleotide pre-training (HyenaDNA): cross-entropy over (input, target) windows of a genome
(dyt.tasks.dna_lm: the loss is over every target position of the micro-batch, B x L; it equals the repo's per-GPU
mean wherever a window has no N, which is nearly every hg38 window)."""
from __future__ import annotations

from dyt.errors import ConfigError
from dyt.tasks.dna_lm import DNATokenTask


class DNALanguageTask(DNATokenTask):
    def __init__(self, cfg, dist):
        super().__init__(cfg, dist)
        if cfg.data.mlm:
            raise ConfigError("data.mlm=true makes masked-LM samples (Caduceus); HyenaDNA pre-trains on the next "
                              "token: set data.mlm=false")

    def target_share(self) -> float:
        return 1.0
