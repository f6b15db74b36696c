"""GPT-2 (nanoGPT's model; the Derf follow-up's GPT-2 row): a decoder-only LM with LayerNorm, learned positions,
GELU MLP and tied embeddings, trained by the shared language-model task (dyt.tasks.language) on data=text_*."""
from __future__ import annotations

from dyt.families.gpt2.config import GPT2ModelConfig
from dyt.family import Family, Shape, indexed, lazy
from dyt.ranges import COUNT


def gpt2_check(cfg) -> list[str]:
    m, seq = cfg.model, cfg.data.get("seq_len")
    if any(m.get(k) is None for k in ("n_embd", "n_head", "block_size")):
        return []
    errors = []
    if all(COUNT.accepts(v) for v in (m.n_embd, m.n_head)) and m.n_embd % m.n_head:
        errors.append(f"model.n_embd={m.n_embd} must be a multiple of model.n_head={m.n_head}")
    if COUNT.accepts(seq) and COUNT.accepts(m.block_size) and seq > m.block_size:
        errors.append(f"data.seq_len={seq} is longer than model.block_size={m.block_size} (the learned positions); "
                      f"set data.seq_len<={m.block_size} or a larger model.block_size")
    return errors


def gpt2_shape(model, cfg) -> Shape:
    c = model.cfg
    return Shape(c.n_layer, c.n_embd, c.n_head, 4 * c.n_embd, int(cfg.data.seq_len), head_elems=2,
                 head_bytes_per_token=8 * model.vocab_size, tokens=True, embedding_params=model.embedding_params())


FAMILY = Family("gpt2", lazy("dyt.families.gpt2.model", "build_gpt2"), lazy("dyt.tasks.language", "LanguageTask"),
                data_kinds=("text",), schemas={"schema_gpt2": GPT2ModelConfig},
                blocks=lambda m: indexed(m.transformer.h), shape=gpt2_shape, check=gpt2_check)

__all__ = ["FAMILY", "GPT2ModelConfig"]
