"""Caduceus (Schiff et al. 2024): BiMamba blocks, reverse-complement parameter sharing, a tied masked-LM head.

Built as kuleshov-group/caduceus's CaduceusForMaskedLM with the configs its slurm scripts run (rcps, bidirectional
"add" with weight tie, rms_norm, fused_add_norm): our own code, checked against that repository's behaviour.

Residual stream (Mamba's "Add -> Norm -> Mixer" order; mamba_ssm's fused add+norm): each block receives the previous
mixer output ``h`` and the running residual ``r``, forms ``r = h + r``, normalises it and mixes::

    r = h + r;  h = mixer(norm(r))          (block 0: r = embedding)
    out = norm_f(h + r)

With RCPS every norm and mixer is applied to each strand's half (`rcps.RCPS`) and the released fused path also
exchanges the halves of ``h + r`` first (``model.fused_add_norm``). Every norm site (one per block, the final one)
is built by dyt.nn's build_norm from ``norm=`` (``model.convert=paper``), or stays RMSNorm as in the released DyT
patch (``model.convert=released``, see config.py).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from dyt.data.dna import COMPLEMENT, VOCAB_SIZE
from dyt.errors import ConfigError
from dyt.families.caduceus.config import CONVERTS
from dyt.families.caduceus.mamba import BiMamba, Mamba
from dyt.families.caduceus.rcps import RCPS, RCPSEmbedding, halves_swapped, rcps_logits
from dyt.nn import build_norm


class CaduceusBlock(nn.Module):
    """One MambaDNA block: (h, r) -> (mixer(norm(h + r)), h + r); RCPS halves as the released code (see module doc)."""

    def __init__(self, cfg, norm: nn.Module):
        super().__init__()
        mixer = BiMamba(cfg.d_model, bidirectional=cfg.bidirectional, strategy=cfg.bidirectional_strategy,
                        weight_tie=cfg.bidirectional_weight_tie, d_state=cfg.d_state, d_conv=cfg.d_conv,
                        expand=cfg.expand, dt_rank=cfg.dt_rank, dt_min=cfg.dt_min, dt_max=cfg.dt_max,
                        dt_init=cfg.dt_init, dt_scale=cfg.dt_scale, dt_init_floor=cfg.dt_init_floor,
                        conv_bias=cfg.conv_bias, bias=cfg.bias, scan=cfg.scan)
        self.rcps, self.swap = cfg.rcps, cfg.rcps and cfg.fused_add_norm
        self.norm = RCPS(norm) if cfg.rcps else norm
        self.mixer = RCPS(mixer) if cfg.rcps else mixer

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        residual = hidden if residual is None else hidden + residual
        if self.swap:
            residual = halves_swapped(residual)
        return self.mixer(self.norm(residual)), residual


class CaduceusLM(nn.Module):
    """input_ids (B, L) -> logits (B, L, vocab); `features` gives the representation a classifier pools."""

    def __init__(self, cfg, vocab_size: int, complement: list[int], norm: str = "rmsnorm",
                 alpha_init: float | None = None, learn_alpha: bool = True):
        super().__init__()
        if cfg.convert not in CONVERTS:
            raise ConfigError(f"unknown model.convert {cfg.convert!r}; choose one of: {', '.join(CONVERTS)}")
        self.cfg = cfg
        # the released model pads its vocabulary (12 tokens -> 16); padding tokens are their own complement
        multiple = cfg.pad_vocab_size_multiple
        self.vocab_size = -(-vocab_size // multiple) * multiple
        complement = list(complement) + list(range(len(complement), self.vocab_size))
        self.norm_kind = norm if cfg.convert == "paper" else "rmsnorm"  # released: the RMSNorms stay

        def site() -> nn.Module:  # RMSNorm sites: no bias (DyT there is weight * tanh(alpha x), as dyt.convert_norms)
            return build_norm(self.norm_kind, cfg.d_model, eps=cfg.norm_eps, alpha_init=alpha_init,
                              learn_alpha=learn_alpha, bias=False)

        self.complement_ids = complement
        self.register_buffer("complement", torch.tensor(complement), persistent=False)
        if cfg.rcps:
            self.embedding = RCPSEmbedding(self.vocab_size, cfg.d_model, complement)
        else:
            self.embedding = nn.Embedding(self.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(CaduceusBlock(cfg, site()) for _ in range(cfg.n_layer))
        self.norm_f = RCPS(site()) if cfg.rcps else site()
        if self.embedding.weight.device.type != "meta":
            self.init_weights()

    @property
    def width(self) -> int:
        """Channels of `features`: d_model."""
        return self.cfg.d_model

    @torch.no_grad()
    def init_weights(self) -> None:
        """The released _init_weights (from mamba_ssm's mixer_seq_simple) over Mamba's own init: Linear biases 0
        except dt_proj's, the embedding N(0, initializer_range) (also the tied LM head), each out_proj
        kaiming-uniform / sqrt(n_residuals_per_layer * n_layer) (GPT-2's scaled residual init); norms by their own
        reset (DyT: alpha0). Meta-device construction + to_empty() + this gives a full init."""
        c = self.cfg
        self.complement.copy_(torch.tensor(self.complement_ids))
        mambas = [m for m in self.modules() if isinstance(m, Mamba)]
        inside = {id(child) for m in mambas for child in m.children()}  # reset by their Mamba, after which dt_proj's bias
        for m in self.modules():  # is the dt init: resetting that Linear again would undo it
            if m is not self and id(m) not in inside and hasattr(m, "reset_parameters"):
                m.reset_parameters()  # Mamba: dt, A_log, D and PyTorch's default for its linears and conv
        for m in mambas:
            for lin in (m.in_proj, m.x_proj, m.out_proj):
                if lin.bias is not None:
                    lin.bias.zero_()
        nn.init.normal_(self.embedding.weight, std=c.initializer_range)
        if c.rescale_prenorm_residual:
            for out_proj in {id(m.out_proj): m.out_proj for m in mambas}.values():
                nn.init.kaiming_uniform_(out_proj.weight, a=math.sqrt(5))
                out_proj.weight /= math.sqrt(c.n_residuals_per_layer * c.n_layer)

    def no_weight_decay(self) -> list[str]:
        """Not decayed, as the released optimizer hooks (src/utils/optim_groups.py): the embedding (= the tied
        head) and A_log (``_no_weight_decay``; D and biases are 1-D, which dyt.optim exempts already)."""
        return [n for n, _ in self.named_parameters() if n.endswith(".A_log") or n.startswith("embedding.")]

    def hidden(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The final normalised hidden states: (B, L, 2 d_model) with rcps, else (B, L, d_model)."""
        h, r = self.embedding(input_ids), None
        for layer in self.layers:
            h, r = layer(h, r)
        return self.norm_f(h + r)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.hidden(input_ids)
        if self.cfg.rcps:
            return rcps_logits(h, self.embedding.weight, self.complement)
        return F.linear(h, self.embedding.weight)  # tied head

    def features(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L, d_model): what a sequence classifier pools. With rcps, the mean of the forward strand's channels
        and the RC strand's ones flipped back in length and channels: invariant to the reverse complement of the
        input (features(rc(x)) == features(x)). The released fine-tuning
        (wrapper_run_genomics.sh, Caduceus-PS: conjoin_train_decoder=true) stacks the two (DNAEmbeddingModelCaduceus)
        and its decoder averages Linear(mean-pool) of each (src/tasks/decoders.py SequenceDecoder); pooling and the
        Linear are affine, so that equals the same decoder on this mean."""
        h = self.hidden(input_ids)
        if not self.cfg.rcps:
            return h
        fwd, rev = h.chunk(2, dim=-1)
        return (fwd + rev.flip(-2, -1)) / 2


def build_caduceus(model_cfg, norm_cfg, data_cfg) -> CaduceusLM:
    """The family builder: the DNA tokenizer's vocabulary and complement map (dyt.data.dna), the norm from norm=."""
    return CaduceusLM(model_cfg, VOCAB_SIZE, COMPLEMENT.tolist(), norm=norm_cfg.name,
                      alpha_init=float(norm_cfg.get("alpha_init", 0.5)), learn_alpha=norm_cfg.get("learn_alpha", True))


__all__ = ["CaduceusBlock", "CaduceusLM", "build_caduceus"]
