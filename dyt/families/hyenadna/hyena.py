"""The Hyena operator (Poli et al. 2023) as HyenaDNA uses it: our code, matching the Caduceus repository's
src/models/sequence/hyena.py with HyenaDNA's settings (configs/model/hyena.yaml there).

For a width ``d`` and order ``N`` (2): ``in_proj`` maps each token to ``(N + 1) d`` channels, a causal depthwise
convolution of kernel 3 (``short_filter``) mixes neighbouring tokens, and the channels split into gates
``x_0 .. x_{N-1}`` and a value ``v``. Then, for ``x_{N-1}`` down to ``x_1``: ``v = h_o * (v x_i) + D_o (v x_i)``,
a causal long convolution with an implicit filter ``h_o`` (as long as the sequence) plus a skip term; the output is
``out_proj(v x_0)``.

The implicit filter is an MLP of the position: a positional embedding of ``emb_dim`` features (t in [0, 1] and
``(emb_dim - 1) / 2`` complex exponentials) -> Linear -> Sin -> (Linear -> Sin) x 2 -> Linear, one Sin module
(a learnable frequency per unit, initialised to ``w``) shared by the three activations as in the repo, then an
exponential decay along the sequence, a different rate per channel (``ExponentialModulation``). Long
convolutions are computed by FFT in float32 (zero-padded to twice the length: causal, not circular).

The positional features and decay rates are buffers, not parameters (the repo registers them with lr 0, which
makes them buffers); the filter MLP's parameters are not weight-decayed (their ``_optim`` there:
``weight_decay: 0``, lr = the run's lr), which the model's ``no_weight_decay()`` says.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from dyt.errors import ConfigError


def fft_causal_conv(u: torch.Tensor, k: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """``y[..., t] = sum_{s <= t} k[..., s] u[..., t - s] + skip * u[..., t]`` for u (B, C, L), k (C, L) and
    skip (C,), in float32 at least (half-precision inputs are promoted), returned in u's dtype. FFT of length 2L:
    no wrap-around."""
    L, n = u.shape[-1], 2 * u.shape[-1]
    dtype = torch.promote_types(u.dtype, torch.float32)
    u_, k_, skip_ = u.to(dtype), k.to(dtype), skip.to(dtype)
    y = torch.fft.irfft(torch.fft.rfft(u_, n=n) * torch.fft.rfft(k_, n=n), n=n)[..., :L]
    return (y + u_ * skip_[:, None]).to(u.dtype)


class Sin(nn.Module):
    """``sin(freq * x)`` with a learnable frequency per unit."""

    def __init__(self, dim: int, w: float):
        super().__init__()
        self.w = w
        self.freq = nn.Parameter(torch.empty(1, dim))

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.freq.fill_(self.w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.freq * x)


class PositionalEmbedding(nn.Module):
    """The filter MLP's input at each of ``l_max`` positions: ``[t, Re z_1..z_b, Im z_1..z_b]`` with t from 0 to 1
    and ``z_j = exp(-i f_j 2 pi p / l_max)`` at position p, ``f = linspace(1e-4, b - 1, b)``, b = (emb_dim-1)/2.
    A sequence of L <= l_max tokens uses the first L positions (so l_max is part of the model)."""

    def __init__(self, emb_dim: int, l_max: int):
        super().__init__()
        if emb_dim % 2 == 0 or emb_dim < 3:
            raise ConfigError(f"model.emb_dim={emb_dim}: must be odd and >= 3 (time, and a cosine and sine per band)")
        self.emb_dim, self.l_max = emb_dim, l_max
        self.register_buffer("z", torch.empty(1, l_max, emb_dim))
        self.register_buffer("t", torch.empty(1, l_max, 1))

    def reset_parameters(self) -> None:
        L, bands = self.l_max, (self.emb_dim - 1) // 2
        t = torch.linspace(0, 1, L)[None, :, None]
        w = 2 * math.pi * torch.linspace(0, L - 1, L)[None, :, None] / L
        f = torch.linspace(1e-4, bands - 1, bands)[None, None]
        z = torch.exp(-1j * f * w)
        with torch.no_grad():
            self.z.copy_(torch.cat([t, z.real, z.imag], dim=-1))
            self.t.copy_(t)

    def forward(self, L: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.z[:, :L], self.t[:, :L]


class ExponentialModulation(nn.Module):
    """``h * exp(-t |delta_c|)``: channel c's filter decays to 1e-2 between 0.3 and 1.5 of l_max (the repo's
    fast/slow decay percentages and target), rates spread linearly over the channels."""

    def __init__(self, channels: int, fast_decay_pct: float = 0.3, slow_decay_pct: float = 1.5, target: float = 1e-2):
        super().__init__()
        self.fast_decay_pct, self.slow_decay_pct, self.target = fast_decay_pct, slow_decay_pct, target
        self.register_buffer("deltas", torch.empty(1, 1, channels))

    def reset_parameters(self) -> None:
        max_decay = math.log(self.target) / self.fast_decay_pct
        min_decay = math.log(self.target) / self.slow_decay_pct
        with torch.no_grad():
            self.deltas.copy_(torch.linspace(min_decay, max_decay, self.deltas.shape[-1])[None, None])

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return h * torch.exp(-t * self.deltas.abs())


class HyenaFilter(nn.Module):
    """The implicit long filters of `channels` channels (one per channel and recurrence step) and their skip
    term ``bias`` (the repo's name for D)."""

    def __init__(self, channels: int, l_max: int, emb_dim: int = 5, width: int = 64, w: float = 10.0,
                 inner_layers: int = 2, modulate: bool = True):
        super().__init__()
        self.pos_emb = PositionalEmbedding(emb_dim, l_max)
        act = Sin(width, w)  # one module, so one frequency vector, for every activation (the repo's `act`)
        layers = [nn.Linear(emb_dim, width), act]
        for _ in range(inner_layers):
            layers += [nn.Linear(width, width), act]
        self.implicit_filter = nn.Sequential(*layers, nn.Linear(width, channels, bias=False))
        self.modulation = ExponentialModulation(channels) if modulate else None
        self.bias = nn.Parameter(torch.empty(channels))

    def filter(self, L: int) -> torch.Tensor:
        """The filters at the first L positions: (L, channels)."""
        z, t = self.pos_emb(L)
        h = self.implicit_filter(z)
        if self.modulation is not None:
            h = self.modulation(t, h)
        return h[0]


class HyenaOperator(nn.Module):
    """Hyena of order `order` over sequences of up to `l_max` tokens (see the module docstring); (B, L, d) -> (B, L, d)."""

    def __init__(self, d_model: int, l_max: int, order: int = 2, filter_order: int = 64, emb_dim: int = 5,
                 short_filter_order: int = 3, w: float = 10.0, modulate: bool = True):
        super().__init__()
        if order < 2:
            raise ConfigError(f"model.order={order}: Hyena needs order >= 2")
        self.d_model, self.order, self.l_max = d_model, order, l_max
        width = (order + 1) * d_model
        self.in_proj = nn.Linear(d_model, width)
        self.out_proj = nn.Linear(d_model, d_model)
        # causal: padded by k - 1 on both sides, the first L outputs kept
        self.short_filter = nn.Conv1d(width, width, short_filter_order, groups=width, padding=short_filter_order - 1)
        self.filter_fn = HyenaFilter(d_model * (order - 1), l_max, emb_dim=emb_dim, width=filter_order, w=w,
                                     modulate=modulate)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        B, L, d = u.shape
        if L > self.l_max:
            raise ConfigError(f"a sequence of {L} tokens is longer than the Hyena filters' model.l_max={self.l_max}")
        z = self.short_filter(self.in_proj(u).transpose(1, 2))[..., :L]
        *x, v = z.split(d, dim=1)
        # channel c of step o is filter channel c * (order - 1) + o (the repo's "(v o)" layout)
        k = self.filter_fn.filter(L).T.unflatten(0, (d, self.order - 1))  # (d, order-1, L)
        skip = self.filter_fn.bias.unflatten(0, (d, self.order - 1))
        for o, x_i in enumerate(reversed(x[1:])):
            v = fft_causal_conv(v * x_i, k[:, o], skip[:, o])
        return self.out_proj((v * x[0]).transpose(1, 2))
