"""LLaMA (Table 4, alpha0 Tables 11-12): a decoder-only LM, zero-shot lm-eval tasks from eval.py."""
from __future__ import annotations

from dyt.families.llama.config import LlamaModelConfig, lm_eval_arguments
from dyt.family import Evaluation, Family, Shape, indexed, lazy
from dyt.ranges import COUNT


def llama_check(cfg) -> list[str]:
    m = cfg.model
    if any(m.get(k) is None for k in ("dim", "n_heads")):
        return []
    kv = m.get("n_kv_heads") or m.n_heads
    ok = all(COUNT.accepts(v) for v in (m.dim, m.n_heads, kv))
    if ok and (m.dim % m.n_heads or m.n_heads % kv):
        return [f"model.dim={m.dim}, model.n_heads={m.n_heads}, model.n_kv_heads={kv}: dim must be a multiple of "
                "n_heads and n_heads a multiple of n_kv_heads"]
    return []


def llama_shape(model, cfg) -> Shape:
    c = model.cfg  # K/V are repeated to all heads before SDPA (model.Attention): kv_ratio 1
    return Shape(c.n_layers, c.dim, c.n_heads, model.layers[0].ffn.w1.out_features, int(cfg.data.seq_len),
                 glu=True, head_elems=2, head_bytes_per_token=8 * model.vocab_size, tokens=True,
                 embedding_params=model.tok_embeddings.weight.numel())


LM_EVAL = Evaluation("lm-eval", lm_eval_arguments, requested=lambda a: bool(a.tasks),
                     run=lazy("dyt.families.llama.lm_eval", "lm_eval_from_args"))

FAMILY = Family("llama", lazy("dyt.families.llama.model", "build_llama"), lazy("dyt.tasks.language", "LanguageTask"), data_kinds=("text",), schemas={"schema_llama": LlamaModelConfig},
                blocks=lambda m: indexed(m.layers), shape=llama_shape, check=llama_check, evals=(LM_EVAL,))

__all__ = ["FAMILY", "LlamaModelConfig"]
