"""A decoder-only LLaMA (pre-norm, RoPE, SwiGLU, grouped-query causal attention), with the paper's DyT options.

Every norm site -- before attention (``attn_norm``), before the MLP (``ffn_norm``) and the final norm
(``final_norm``) -- is built with ``dyt.build_norm``. With ``norm=dyt`` (and the other element-wise kinds:
dyt_*, derf, dyisru) the paper's LLaMA specifics apply:

* DyT without bias: ``weight * tanh(alpha * x)``;
* three alpha0 values, one per site kind (attention / FFN / final), from ``model.alpha_attn|ffn|final`` or,
  when those are null, from the width rule of Table 12 (``table12_alpha``);
* a learnable scalar after the token embedding, initialised to sqrt(d_model) (``model.embed_scale``;
  null = on exactly for the element-wise norms, as in the paper's DyT runs; the RMSNorm baseline has none).

Construction allocates; ``init_weights()`` sets every parameter and buffer, so ``with torch.device("meta"):``
followed by ``to_empty()`` + ``init_weights()`` works (FSDP2).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from dyt.data.tokenizers import vocab_size
from dyt.errors import ConfigError
from dyt.nn import ELEMENTWISE_KINDS, build_norm

# Table 12 of the paper: the best alpha0 (attention, other = FFN and final norm) by model width; the same for
# depths 8..64. Table 11's 7B/34B/70B values are these rows; 13B (width 5120) sits between two rows.
TABLE12 = ((1024, 1.0, 1.0), (2048, 1.0, 0.5), (4096, 0.8, 0.2), (8192, 0.2, 0.05))


def table12_alpha(width: int) -> tuple[float, float]:
    """(alpha_attn, alpha_other) for a model width, by Table 12.

    Widths on a row take that row. Widths between two rows interpolate linearly in log2(width) and round to
    two decimals: this gives 0.61 / 0.15 for 5120, Table 11's 13B values (0.6 / 0.15) to within 0.01.
    Widths outside the table take the nearest row (below 1024: 1.0 / 1.0; above 8192: 0.2 / 0.05).
    """
    if width <= TABLE12[0][0]:
        return TABLE12[0][1], TABLE12[0][2]
    for (w0, a0, o0), (w1, a1, o1) in zip(TABLE12, TABLE12[1:]):
        if width <= w1:
            t = (math.log2(width) - math.log2(w0)) / (math.log2(w1) - math.log2(w0))
            return round(a0 + t * (a1 - a0), 2), round(o0 + t * (o1 - o0), 2)
    return TABLE12[-1][1], TABLE12[-1][2]


def site_alphas(cfg) -> dict[str, float]:
    """alpha0 for each site kind: the explicit model.alpha_* where set, else Table 12 by width."""
    attn, other = table12_alpha(cfg.dim)
    pick = lambda v, d: float(v) if v is not None else d  # noqa: E731
    return {"attn": pick(cfg.alpha_attn, attn), "ffn": pick(cfg.alpha_ffn, other), "final": pick(cfg.alpha_final, other)}


def ffn_hidden(dim: int, ffn_dim: Optional[int], multiple_of: int) -> int:
    if ffn_dim:
        return ffn_dim
    hidden = int(8 * dim / 3)
    return multiple_of * math.ceil(hidden / multiple_of)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[2i], x[2i+1]) of x (B, H, T, hd) by the position angles; cos/sin are (T, hd/2)."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    return out.type_as(x)


class Attention(nn.Module):
    """Causal self-attention with RoPE and grouped-query heads (n_kv_heads divides n_heads)."""

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int):
        super().__init__()
        if dim % n_heads or n_heads % n_kv_heads:
            raise ConfigError(f"llama: dim={dim}, n_heads={n_heads}, n_kv_heads={n_kv_heads} must divide evenly")
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, dim // n_heads
        self.wq = nn.Linear(dim, n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(n_heads * self.head_dim, dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        if self.n_kv_heads != self.n_heads:
            k, v = (t.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1) for t in (k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """Pre-norm block: x + attn(attn_norm(x)), then x + ffn(ffn_norm(x))."""

    def __init__(self, cfg, norm: str, alphas: dict[str, float], learn_alpha: bool = True):
        super().__init__()
        site = lambda a: build_norm(norm, cfg.dim, eps=cfg.norm_eps, alpha_init=a, learn_alpha=learn_alpha,  # noqa: E731
                                    bias=False)
        self.attn_norm = site(alphas["attn"])
        self.attn = Attention(cfg.dim, cfg.n_heads, cfg.n_kv_heads or cfg.n_heads)
        self.ffn_norm = site(alphas["ffn"])
        self.ffn = FeedForward(cfg.dim, ffn_hidden(cfg.dim, cfg.ffn_dim, cfg.multiple_of))

    def forward(self, x, cos, sin):
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.ffn(self.ffn_norm(x))


class Llama(nn.Module):
    def __init__(self, cfg, vocab_size: int, norm: str = "rmsnorm", embed_scale: bool = False,
                 alphas: Optional[dict[str, float]] = None, learn_alpha: bool = True):
        super().__init__()
        self.cfg, self.vocab_size, self.norm_kind = cfg, vocab_size, norm
        alphas = alphas or site_alphas(cfg)
        self.alphas = alphas
        self.tok_embeddings = nn.Embedding(vocab_size, cfg.dim)
        # The paper's DyT LLaMA: x = embed(tokens) * scale, scale learnable, init sqrt(d_model).
        self.embed_scale = nn.Parameter(torch.empty(1)) if embed_scale else None
        self.layers = nn.ModuleList(Block(cfg, norm, alphas, learn_alpha) for _ in range(cfg.n_layers))
        self.final_norm = build_norm(norm, cfg.dim, eps=cfg.norm_eps, alpha_init=alphas["final"],
                                     learn_alpha=learn_alpha, bias=False)
        self.output = nn.Linear(cfg.dim, vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        head_dim = cfg.dim // cfg.n_heads
        self.register_buffer("inv_freq", torch.empty(head_dim // 2), persistent=False)  # RoPE frequencies
        if self.inv_freq.device.type != "meta":
            self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Every parameter and buffer: linears and embedding N(0, init_std), norms by their own reset."""
        if self.cfg.tie_embeddings:  # to_empty() (meta -> device) unties shared parameters: tie again
            self.output.weight = self.tok_embeddings.weight
        hd = self.cfg.dim // self.cfg.n_heads
        self.inv_freq.copy_(1.0 / self.cfg.rope_theta ** (torch.arange(0, hd, 2, device=self.inv_freq.device).float() / hd))
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=self.cfg.init_std)
            elif m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()  # RMSNorm / LayerNorm / DynamicTanh (alpha0 per site)
        if self.cfg.embed_init_std is not None and not self.cfg.tie_embeddings:
            nn.init.normal_(self.tok_embeddings.weight, std=self.cfg.embed_init_std)
        if self.embed_scale is not None:
            self.embed_scale.fill_(math.sqrt(self.cfg.dim))

    def rope_angles(self, T: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        angles = torch.outer(torch.arange(T, device=device, dtype=torch.float32), self.inv_freq.float())
        return angles.cos(), angles.sin()  # (T, hd/2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, T) int64 -> logits (B, T, vocab)."""
        x = self.tok_embeddings(tokens)
        if self.embed_scale is not None:
            x = x * self.embed_scale
        cos, sin = self.rope_angles(tokens.shape[1], tokens.device)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.output(self.final_norm(x))

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_embeddings.weight.numel()
        return n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (PaLM, appendix B): 6 N (non-embedding) + 12 L d T for attention."""
        return 6 * self.num_params(non_embedding=True) + 12 * self.cfg.n_layers * self.cfg.dim * seq_len


def resolve_embed_scale(model_cfg, norm_name: str) -> bool:
    return bool(model_cfg.embed_scale) if model_cfg.embed_scale is not None else norm_name in ELEMENTWISE_KINDS


def build_llama(model_cfg, norm_cfg, data_cfg) -> Llama:
    """The family builder: vocab size from the data config (its tokenizer), norm kind from norm_cfg.

    ``norm.alpha_init`` is the vision knob (one alpha0 for every site); LLaMA takes three per-site values
    instead, so a non-default ``norm.alpha_init`` is an error naming the keys to use.
    """
    if norm_cfg.name in ELEMENTWISE_KINDS and float(norm_cfg.get("alpha_init", 0.5)) != 0.5:
        raise ConfigError(f"norm.alpha_init={norm_cfg.alpha_init} does not apply to LLaMA; set the per-site alpha0 "
                          "with model.alpha_attn=, model.alpha_ffn=, model.alpha_final= (null = Table 12 by width)")
    return Llama(model_cfg, vocab_size(data_cfg), norm=norm_cfg.name,
                 embed_scale=resolve_embed_scale(model_cfg, norm_cfg.name), alphas=site_alphas(model_cfg),
                 learn_alpha=norm_cfg.get("learn_alpha", True))
