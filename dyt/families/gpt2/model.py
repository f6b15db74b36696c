"""GPT-2 as nanoGPT builds it (karpathy/nanoGPT model.py; our own code, same module names and initialisation).

* token + learned position embeddings, pre-norm blocks ``x + attn(ln_1(x))``, ``x + mlp(ln_2(x))``, a final
  ``ln_f`` and an LM head tied to the token embedding;
* causal multi-head attention through SDPA (one fused ``c_attn`` for q, k, v), an exact-GELU MLP of width 4 x;
* Linear and Embedding weights N(0, 0.02), the residual projections (``c_proj``) N(0, 0.02 / sqrt(2 n_layer)),
  biases (``model.bias``) zero.

Every norm site (``ln_1``, ``ln_2``, ``ln_f``) is built by ``dyt.nn.build_norm`` from ``norm=`` (LayerNorm, the
default; DyT, Derf, RMSNorm, ...). With an element-wise norm the model is Derf's patch of nanoGPT
(zlab-princeton/Derf, language model/model_derf.patch): alpha0 per site kind (``model.alpha_attn|ffn|final``),
a bias at every site, and a learnable scalar on ``tok + pos`` initialised to sqrt(n_embd) (``model.embed_scale``).

Construction allocates; ``init_weights()`` sets every parameter, so ``with torch.device("meta"):`` followed by
``to_empty()`` + ``init_weights()`` works (FSDP2).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from dyt.data.tokenizers import vocab_size
from dyt.errors import ConfigError
from dyt.nn import ELEMENTWISE_KINDS, build_norm


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        if cfg.n_embd % cfg.n_head:
            raise ConfigError(f"gpt2: n_embd={cfg.n_embd} must be a multiple of n_head={cfg.n_head}")
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in self.c_attn(x).split(C, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(B, T, C)))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.gelu = nn.GELU()  # exact erf GELU, as nanoGPT (GPT-2's own is the tanh approximation)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, cfg, site):
        super().__init__()
        self.ln_1 = site("attn")
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = site("ffn")
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg, vocab_size: int, norm: str = "layernorm", alpha_init: float = 0.5,
                 learn_alpha: bool = True):
        super().__init__()
        self.cfg, self.vocab_size, self.norm_kind = cfg, vocab_size, norm
        elementwise = norm in ELEMENTWISE_KINDS
        norm_bias = cfg.norm_bias if cfg.norm_bias is not None else (cfg.bias or elementwise)
        alphas = {kind: float(a) if a is not None else alpha_init
                  for kind, a in (("attn", cfg.alpha_attn), ("ffn", cfg.alpha_ffn), ("final", cfg.alpha_final))}

        def site(kind: str) -> nn.Module:
            return build_norm(norm, cfg.n_embd, eps=cfg.norm_eps, alpha_init=alphas[kind], learn_alpha=learn_alpha,
                              bias=norm_bias)

        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab_size, cfg.n_embd),
            wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList(Block(cfg, site) for _ in range(cfg.n_layer)),
            ln_f=site("final"),
        ))
        self.lm_head = nn.Linear(cfg.n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied
        use_scale = cfg.embed_scale if cfg.embed_scale is not None else elementwise
        self.embed_scale = nn.Parameter(torch.empty(1)) if use_scale else None
        if self.lm_head.weight.device.type != "meta":
            self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """nanoGPT's _init_weights, then the scaled residual projections; norms by their own reset."""
        self.lm_head.weight = self.transformer.wte.weight  # to_empty() (meta -> device) unties: tie again
        std = self.cfg.init_std
        for name, m in self.named_modules():
            if m is self.lm_head:
                continue  # tied: its weight is the token embedding's (initialised as an embedding below)
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=std / math.sqrt(2 * self.cfg.n_layer) if name.endswith("c_proj") else std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=self.cfg.embed_init_std or std)
            elif m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()  # LayerNorm / DynamicTanh / Derf (alpha0 per site)
        if self.embed_scale is not None:
            self.embed_scale.fill_(math.sqrt(self.cfg.n_embd))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, T) int64 -> logits (B, T, vocab)."""
        T = tokens.shape[1]
        if T > self.cfg.block_size:
            raise ConfigError(f"gpt2: a sequence of {T} tokens is longer than model.block_size={self.cfg.block_size}")
        t = self.transformer
        x = t.wte(tokens) + t.wpe(torch.arange(T, device=tokens.device))
        if self.embed_scale is not None:
            x = x * self.embed_scale
        x = t.drop(x)
        for block in t.h:
            x = block(x)
        return self.lm_head(t.ln_f(x))

    def embedding_params(self) -> int:
        """nanoGPT's "embedding" parameters: the positions only (the token embedding is the tied LM head)."""
        return self.transformer.wpe.weight.numel()

    def num_params(self, non_embedding: bool = True) -> int:
        """As nanoGPT's get_num_params: the tied weight counted once; non-embedding = without the positions."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.embedding_params() if non_embedding else n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (nanoGPT's estimate_mfu, PaLM appendix B): 6 N + 12 L d T."""
        return 6 * self.num_params(non_embedding=True) + 12 * self.cfg.n_layer * self.cfg.n_embd * seq_len


def build_gpt2(model_cfg, norm_cfg, data_cfg) -> GPT:
    """The family builder: the vocabulary from the data config (its tokenizer, padded), the norm from norm_cfg."""
    return GPT(model_cfg, vocab_size(data_cfg), norm=norm_cfg.name, alpha_init=float(norm_cfg.get("alpha_init", 0.5)),
               learn_alpha=norm_cfg.get("learn_alpha", True))
