"""HyenaDNA (Table 6): a character-level DNA language model with Hyena mixers, pre-trained on the next nucleotide."""
from __future__ import annotations

from dyt.data.dna import DNADataConfig
from dyt.families.hyenadna.config import HyenaDNAModelConfig
from dyt.families.hyenadna.model import build_hyenadna, resolve_l_max
from dyt.families.hyenadna.task import DNALanguageTask
from dyt.family import Family, indexed
from dyt.ranges import COUNT


def hyenadna_check(cfg) -> list[str]:
    m, d = cfg.model, cfg.data
    if not (COUNT.accepts(d.get("seq_len")) and (m.get("l_max") is None or COUNT.accepts(m.l_max))):
        return []
    l_max = resolve_l_max(m, d)
    if d.seq_len > l_max:
        return [f"data.seq_len={d.seq_len} is longer than the Hyena filters (model.l_max={l_max}); raise "
                "model.l_max or set it to null (= seq_len + 2)"]
    return []


FAMILY = Family(
    "hyenadna", build_hyenadna, DNALanguageTask, data_kinds=("dna",),
    schemas={"schema_hyenadna": HyenaDNAModelConfig}, data_schemas={"schema_dna": DNADataConfig},
    blocks=lambda m: indexed(m.blocks),
    # no activation model: dyt.plan's Shape is a Transformer's (attention heads, s x s scores); a Hyena block's
    # activations (FFT buffers of 2L per channel) are not that formula, so the planner counts parameters only
    shape=None, check=hyenadna_check)

__all__ = ["FAMILY", "HyenaDNAModelConfig"]
