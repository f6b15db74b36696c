"""Caduceus (Table 6): RC-equivariant bidirectional Mamba DNA models, pre-trained as masked LMs."""
from __future__ import annotations

from dyt.data.dna import DNADataConfig
from dyt.data.genomic_benchmarks import GenomicDataConfig
from dyt.families.caduceus.config import CONVERTS, SCANS, STRATEGIES, CaduceusModelConfig
from dyt.family import Family, indexed, lazy
from dyt.tasks.dna_classification import as_backbone, by_data_kind


def caduceus_check(cfg) -> list[str]:
    m, d = cfg.model, cfg.data
    problems = []
    if d.get("mlm") is False:
        problems.append("Caduceus pre-trains as a masked LM: set data.mlm=true (data.mlm_probability: 0.15 as released)")
    for key, allowed in (("convert", CONVERTS), ("scan", SCANS), ("bidirectional_strategy", STRATEGIES),
                         ("dt_init", ("random", "constant"))):
        if m.get(key) is not None and m[key] not in allowed:
            problems.append(f"model.{key}={m[key]}: choose one of {', '.join(allowed)}")
    if isinstance(m.get("dt_min"), float) and isinstance(m.get("dt_max"), float) and m.dt_min > m.dt_max:
        problems.append(f"model.dt_min={m.dt_min} > model.dt_max={m.dt_max}")
    return problems


FAMILY = Family(
    # masked-LM pre-training on a genome; on GenomicBenchmarks data (data=gb_*) a classifier on this model (Table 6)
    "caduceus", lazy("dyt.families.caduceus.model", "build_caduceus"),
    by_data_kind(lazy("dyt.families.caduceus.task", "MaskedDNATask")), data_kinds=("dna", GenomicDataConfig.KIND),
    schemas={"schema_caduceus": CaduceusModelConfig},
    data_schemas={"schema_dna": DNADataConfig, "schema_gb": GenomicDataConfig}, backbone=as_backbone,
    blocks=lambda m: indexed(m.layers),
    # no activation model: dyt.plan's Shape is a Transformer's (heads, s x s scores); a Mamba block's activations
    # (the scan's (L, d_inner, d_state) states) are not that formula, so the planner counts parameters only
    shape=None, check=caduceus_check,
    resume_keys=("model.scan",))  # which kernel computes the scan, not what is computed

__all__ = ["FAMILY", "CaduceusModelConfig"]
