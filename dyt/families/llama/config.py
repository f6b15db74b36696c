"""Schema of configs/model/llama_*.yaml (``defaults: [schema_llama]``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from omegaconf import MISSING

from dyt.ranges import COUNT, OPT_COUNT, OPT_POSITIVE, POSITIVE, ranged


@dataclass
class LlamaModelConfig:
    """Schema of configs/model/llama_*.yaml (``defaults: [schema_llama]``)."""
    name: str = MISSING
    family: str = "llama"
    dim: int = ranged(MISSING, COUNT)  # d_model
    n_layers: int = ranged(MISSING, COUNT)
    n_heads: int = ranged(MISSING, COUNT)
    n_kv_heads: Optional[int] = ranged(None, OPT_COUNT)  # grouped-query attention; null = n_heads (multi-head)
    ffn_dim: Optional[int] = ranged(None, OPT_COUNT)  # SwiGLU hidden width; null = 8/3 * dim rounded up to multiple_of
    multiple_of: int = ranged(256, COUNT)
    rope_theta: float = ranged(10_000.0, POSITIVE)
    norm_eps: float = ranged(1e-5, POSITIVE)  # RMSNorm / LayerNorm eps
    tie_embeddings: bool = False
    init_std: float = ranged(0.02, POSITIVE)
    embed_init_std: Optional[float] = ranged(None, OPT_POSITIVE)  # untied token embedding init std; null = init_std (llama_tiny: 1/sqrt(dim))
    max_seq_len: int = ranged(4096, COUNT)  # the paper's context; informational (RoPE is computed for any length)
    # The paper's DyT specifics (used only when norm=dyt): alpha0 per site kind; null = Table 12 rule by width.
    alpha_attn: Optional[float] = ranged(None, OPT_POSITIVE)
    alpha_ffn: Optional[float] = ranged(None, OPT_POSITIVE)
    alpha_final: Optional[float] = ranged(None, OPT_POSITIVE)
    embed_scale: Optional[bool] = None  # learnable scalar x sqrt(dim) after the embedding; null = on iff norm=dyt


def lm_eval_arguments(g) -> None:
    """eval.py's options for the zero-shot tasks (dyt.families.llama.lm_eval runs them)."""
    g.add_argument("--tasks", default=None, help="comma-separated lm-eval tasks or lists (paper15)")
    g.add_argument("--include-path", default=None, help="a folder of extra lm-eval task YAMLs (local tasks)")
    g.add_argument("--limit", type=float, default=None, help="lm-eval: examples per task (for quick checks)")
    g.add_argument("--batch-size", type=int, default=8, help="lm-eval: requests per forward on each process")
