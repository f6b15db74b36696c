"""The Mamba block (Gu & Dao 2023) and Caduceus's bidirectional wrapper, BiMamba.

``Mamba`` follows state-spaces/mamba's ``mamba_simple.Mamba`` (the block Caduceus builds on): in_proj to
2 x d_inner (x and the gate z), a depthwise causal conv1d + SiLU on x, x_proj to (dt, B, C), dt_proj (low rank
dt_rank -> d_inner) with its special init, the selective scan with A = -exp(A_log) (S4D-real init) and the skip D,
the gate SiLU(z), out_proj.

The scan: `selective_scan` is plain PyTorch (any device; the discretisation is vectorised, the recurrence is a
loop over L), and `mamba_ssm`'s CUDA kernel ``selective_scan_fn`` is used instead when it is installed and the
tensors are on a GPU (``pip install -e .[mamba]``; same outputs, tests/test_caduceus.py checks it where it can).
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from dyt.families.caduceus.config import SCANS, STRATEGIES



def selective_scan(u, delta, A, B, C, D, z=None, delta_bias=None, delta_softplus=True):
    """The selective SSM, in mamba_ssm's layout and semantics (``selective_scan_ref``), computed in fp32 (or
    float64 for float64 inputs).

    u, delta, z: (b, d, l); A: (d, n); B, C: (b, n, l); D, delta_bias: (d,). Per channel and state:
    ``h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t``, ``y_t = C_t . h_t + D u_t``, then ``y * silu(z)``.
    Returns y in u's dtype, (b, d, l)."""
    dtype, work = u.dtype, torch.promote_types(u.dtype, torch.float32)
    u, delta, A, B, C = (t.to(work) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(work)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    dA = torch.exp(torch.einsum("bdl,dn->bldn", delta, A))  # (b, l, d, n): the discretised transition
    dBu = torch.einsum("bdl,bnl,bdl->bldn", delta, B, u)  # (b, l, d, n): the discretised input
    h = u.new_zeros(dA.shape[0], dA.shape[2], dA.shape[3])
    states = []
    # unbind, not dA[:, t]: the backward of one unbind is one stack, of L index ops L full-size zero tensors
    for dA_t, dBu_t in zip(dA.unbind(1), dBu.unbind(1)):
        h = dA_t * h + dBu_t
        states.append(h)
    y = torch.einsum("bldn,bnl->bdl", torch.stack(states, dim=1), C)
    if D is not None:
        y = y + D.to(work)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(work))
    return y.to(dtype)


@functools.cache
def cuda_selective_scan():
    """mamba_ssm's fused CUDA scan, or None where the package (the optional extra ``mamba``) is not installed."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError:
        return None
    return selective_scan_fn


def pick_scan(scan: str, device: torch.device):
    """The scan function for ``model.scan`` (auto | torch | cuda) on `device`."""
    if scan == "torch":
        return selective_scan
    kernel = cuda_selective_scan() if device.type == "cuda" else None
    if scan == "cuda" and kernel is None:
        raise RuntimeError("model.scan=cuda needs mamba_ssm (pip install -e .[mamba]) and a CUDA device")
    return kernel or selective_scan


class Mamba(nn.Module):
    """One Mamba mixer: (B, L, d_model) -> (B, L, d_model). Options as mamba_simple.Mamba (configs/model/caduceus_*)."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, dt_rank=None,
                 dt_min: float = 1e-3, dt_max: float = 0.1, dt_init: str = "random", dt_scale: float = 1.0,
                 dt_init_floor: float = 1e-4, conv_bias: bool = True, bias: bool = False, scan: str = "auto"):
        super().__init__()
        if dt_init not in ("random", "constant"):
            raise ValueError(f"unknown dt_init {dt_init!r}; choose random or constant")
        if scan not in SCANS:
            raise ValueError(f"unknown scan {scan!r}; choose one of: {', '.join(SCANS)}")
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = dt_rank or math.ceil(d_model / 16)  # "auto"
        self.dt = dict(dt_min=dt_min, dt_max=dt_max, dt_init=dt_init, dt_scale=dt_scale, dt_init_floor=dt_init_floor)
        self.scan = scan
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        # depthwise, padded d_conv - 1 on both sides; the first L outputs are the causal convolution
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1,
                                bias=conv_bias)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(self.d_inner, d_state))
        self.D = nn.Parameter(torch.empty(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        if self.D.device.type != "meta":
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """mamba_simple's init: PyTorch's default for the linears and the conv, then dt_proj's weight uniform in
        +-dt_rank^-0.5 * dt_scale (or constant), its bias the inverse softplus of a dt log-uniform in
        [dt_min, dt_max] (floored at dt_init_floor), A_log = log(1..d_state) per channel (S4D-real), D = 1.
        (Caduceus's model init then zeroes the other biases and rescales out_proj: CaduceusLM.init_weights.)"""
        for m in (self.in_proj, self.conv1d, self.x_proj, self.dt_proj, self.out_proj):
            m.reset_parameters()
        std = self.dt_rank ** -0.5 * self.dt["dt_scale"]
        if self.dt["dt_init"] == "constant":
            nn.init.constant_(self.dt_proj.weight, std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -std, std)
        lo, hi = math.log(self.dt["dt_min"]), math.log(self.dt["dt_max"])
        dt = torch.exp(torch.rand(self.d_inner, device=self.D.device) * (hi - lo) + lo).clamp(min=self.dt["dt_init_floor"])
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus(bias) = dt
        self.A_log.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32, device=self.D.device)).expand_as(self.A_log))
        self.D.fill_(1.0)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        L = hidden.shape[1]
        x, z = self.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)  # (B, d_inner, L) each
        x = F.silu(self.conv1d(x)[..., :L])
        dt, B, C = self.x_proj(x.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = (dt @ self.dt_proj.weight.t()).transpose(1, 2)  # (B, d_inner, L); its bias goes to the scan
        fp32 = lambda p: p.to(torch.promote_types(p.dtype, torch.float32))  # noqa: E731 - the SSM parameters stay fp32
        A = -torch.exp(fp32(self.A_log))
        scan = pick_scan(self.scan, x.device)
        y = scan(x.contiguous(), dt.contiguous(), A, B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous(),
                 fp32(self.D), z=z.contiguous(), delta_bias=fp32(self.dt_proj.bias), delta_softplus=True)
        return self.out_proj(y.transpose(1, 2))


class BiMamba(nn.Module):
    """Caduceus's BiMambaWrapper: the forward Mamba on the sequence plus a reverse Mamba on the flipped sequence
    (flipped back), combined by ``strategy`` (add | ew_multiply). With ``weight_tie`` the two directions share
    in_proj and out_proj (most of the parameters); conv, x_proj, dt_proj, A_log and D stay their own."""

    STRATEGIES = STRATEGIES

    def __init__(self, d_model: int, bidirectional: bool = True, strategy: str = "add", weight_tie: bool = True,
                 **mamba):
        super().__init__()
        if strategy not in self.STRATEGIES:
            raise ValueError(f"unknown bidirectional strategy {strategy!r}; choose one of: {', '.join(self.STRATEGIES)}")
        self.strategy = strategy
        self.fwd = Mamba(d_model, **mamba)
        self.rev = Mamba(d_model, **mamba) if bidirectional else None
        if self.rev is not None and weight_tie:  # shared modules: ties survive to_empty() (meta init)
            self.rev.in_proj, self.rev.out_proj = self.fwd.in_proj, self.fwd.out_proj

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        out = self.fwd(hidden)
        if self.rev is None:
            return out
        back = self.rev(hidden.flip(1)).flip(1)
        return out + back if self.strategy == "add" else out * back
