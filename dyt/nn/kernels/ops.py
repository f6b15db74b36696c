"""DyT as two PyTorch custom ops (``dyt::fused_fwd``, ``dyt::fused_bwd``) with a registered autograd formula.

Custom ops are opaque to Dynamo, so ``torch.compile`` (fullgraph too) keeps them in the graph instead of
tracing ctypes or Triton launches. Each op picks its kernel by device: Triton on CUDA, the C kernel on CPU,
and the same math in plain torch when neither can run (no compiler, an exotic device).

Every path computes in fp32, which is what the reference formula does for the storage dtypes in
``FUSED_DTYPES`` (fp32 math, one rounding to bf16/fp16). Any other dtype (float64, ...) would silently lose
precision, so ``dyt_fused`` sends it to the reference formula and the ops themselves refuse it.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch._subclasses.fake_tensor import is_fake
from torch import Tensor

from dyt.nn.functional import dyt_forward
from dyt.nn.kernels import cpu

try:
    from dyt.nn.kernels import triton_dyt
except ImportError:  # no triton: CUDA tensors take the torch fallback inside the op
    triton_dyt = None


#: Storage dtypes of x, alpha, weight and bias that the kernels compute as the reference does (fp32 math).
FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def dtypes_supported(x: Tensor, alpha: Tensor, weight: Optional[Tensor], bias: Optional[Tensor]) -> bool:
    """Whether every operand's dtype is in ``FUSED_DTYPES`` (else fp32 math would not match the reference)."""
    return (x.dtype in FUSED_DTYPES and alpha.dtype in FUSED_DTYPES
            and (weight is None or weight.dtype in FUSED_DTYPES) and (bias is None or bias.dtype in FUSED_DTYPES))


def _check_dtypes(op: str, **tensors: Optional[Tensor]) -> None:
    for name, t in tensors.items():
        if t is not None and t.dtype not in FUSED_DTYPES:
            accepted = ", ".join(str(d).removeprefix("torch.") for d in FUSED_DTYPES)
            raise TypeError(f"{op}: {name} has dtype {str(t.dtype).removeprefix('torch.')}; the fused DyT kernels "
                            f"compute in fp32 and accept {accepted} (dyt_fused runs other dtypes with the "
                            "reference formula dyt.nn.functional.dyt_forward)")


def _layout(x: Tensor, channels_last: bool, weight: Optional[Tensor]):
    """View x as [outer, C, inner] in memory: returns (outer, C, inner, memory_format of x and of outputs).

    Channels-last is inner == 1. A channels-first NCHW tensor stored channels_last (NHWC in memory) is
    processed as rows too, without a copy.
    """
    if channels_last:
        c = weight.numel() if weight is not None else x.shape[-1]
        return x.numel() // max(c, 1), c, 1, torch.contiguous_format
    c = x.shape[1]
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return x.numel() // max(c, 1), c, 1, torch.channels_last
    return x.shape[0], c, x.numel() // max(x.shape[0] * c, 1), torch.contiguous_format


def _out_dtype(x: Tensor, alpha: Tensor, weight: Optional[Tensor], bias: Optional[Tensor]) -> torch.dtype:
    dtype = torch.promote_types(x.dtype, alpha.dtype)  # what eager `weight * tanh(alpha * x) + bias` returns
    for p in (weight, bias):
        if p is not None:
            dtype = torch.promote_types(dtype, p.dtype)
    return dtype


def _vec(p: Optional[Tensor], c: int, fill: float, device) -> Tensor:
    if p is None:
        return torch.full((c,), fill, dtype=torch.float32, device=device)
    if p.dtype == torch.float32 and p.dim() == 1 and p.is_contiguous():
        return p  # the usual case, as is: kernels only read it (and autograd is off inside the op)
    return p.detach().reshape(-1).to(torch.float32).contiguous()


def _torch_fwd(x, a, w, b, shape3):
    x3 = x.float().reshape(shape3)
    return torch.tanh(a.float() * x3) * w.view(1, -1, 1) + b.view(1, -1, 1)


def _torch_bwd(g, x, a, w, shape3):
    x3, g3 = x.float().reshape(shape3), g.float().reshape(shape3)
    t = torch.tanh(a.float() * x3)
    d = 1 - t * t
    gw = g3 * w.view(1, -1, 1)
    return (gw * a.float() * d), (gw * x3 * d).sum().reshape(1), (g3 * t).sum((0, 2)), g3.sum((0, 2))


def _forward_impl(x: Tensor, alpha: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                  channels_last: bool) -> Tensor:
    outer, c, inner, fmt = _layout(x, channels_last, weight)
    x = x.contiguous(memory_format=fmt)
    y = torch.empty(x.shape, dtype=_out_dtype(x, alpha, weight, bias), device=x.device, memory_format=fmt)
    w, b = _vec(weight, c, 1.0, x.device), _vec(bias, c, 0.0, x.device)
    if x.numel() == 0:
        return y
    if x.device.type == "cpu" and cpu.supports(x.dtype, y.dtype):
        cpu.forward(x, y, float(alpha), w, b, outer, c, inner)
    elif x.device.type == "cuda" and triton_dyt is not None:
        triton_dyt.forward(x, y, alpha.detach().float(), w, b, outer, c, inner)
    else:
        y.copy_(_torch_fwd(x, alpha, w, b, (outer, c, inner)).reshape(x.shape))
    return y


@torch.library.custom_op("dyt::fused_fwd", mutates_args=())
def fused_fwd(x: Tensor, alpha: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
              channels_last: bool) -> Tensor:
    _check_dtypes("dyt::fused_fwd", x=x, alpha=alpha, weight=weight, bias=bias)
    return _forward_impl(x, alpha, weight, bias, channels_last)


@fused_fwd.register_fake
def _(x, alpha, weight, bias, channels_last):
    _check_dtypes("dyt::fused_fwd", x=x, alpha=alpha, weight=weight, bias=bias)
    fmt = _layout(x, channels_last, weight)[3]
    return torch.empty(x.shape, dtype=_out_dtype(x, alpha, weight, bias), device=x.device, memory_format=fmt)


def _backward_impl(grad: Tensor, x: Tensor, alpha: Tensor, weight: Optional[Tensor],
                   channels_last: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dx, d_alpha, d_weight, d_bias); the last three are fp32 sums, d_weight/d_bias flat of size C."""
    outer, c, inner, fmt = _layout(x, channels_last, weight)
    x, grad = x.contiguous(memory_format=fmt), grad.contiguous(memory_format=fmt)
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=fmt)
    w = _vec(weight, c, 1.0, x.device)
    if x.numel() == 0:
        zeros = torch.zeros(c, dtype=torch.float32, device=x.device)
        return dx, zeros.new_zeros(1), zeros, zeros.clone()
    if x.device.type == "cpu" and cpu.supports(x.dtype, grad.dtype):
        da, dw, db = cpu.backward(grad, x, dx, float(alpha), w, outer, c, inner)
    elif x.device.type == "cuda" and triton_dyt is not None:
        da, dw, db = triton_dyt.backward(grad, x, dx, alpha.detach().float(), w, outer, c, inner)
    else:
        dx3, da, dw, db = _torch_bwd(grad, x, alpha, w, (outer, c, inner))
        dx.copy_(dx3.reshape(x.shape))
    return dx, da, dw, db


@torch.library.custom_op("dyt::fused_bwd", mutates_args=())
def fused_bwd(grad: Tensor, x: Tensor, alpha: Tensor, weight: Optional[Tensor],
              channels_last: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    _check_dtypes("dyt::fused_bwd", grad=grad, x=x, alpha=alpha, weight=weight)
    return _backward_impl(grad, x, alpha, weight, channels_last)


@fused_bwd.register_fake
def _(grad, x, alpha, weight, channels_last):
    _, c, _, fmt = _layout(x, channels_last, weight)
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=fmt)
    return dx, x.new_empty(1, dtype=torch.float32), x.new_empty(c, dtype=torch.float32), \
        x.new_empty(c, dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    x, alpha, weight, bias, channels_last = inputs
    ctx.save_for_backward(x, alpha, weight)
    ctx.channels_last = channels_last
    ctx.has_bias = bias is not None
    ctx.bias_dtype = bias.dtype if bias is not None else None


def _param_grads(ctx, grad, bwd):
    x, alpha, weight = ctx.saved_tensors
    dx, da, dw, db = bwd(grad, x, alpha, weight, ctx.channels_last)
    d_weight = dw.view(weight.shape).to(weight.dtype) if weight is not None else None
    d_bias = db.view(weight.shape if weight is not None else db.shape).to(ctx.bias_dtype) if ctx.has_bias else None
    return dx, da.to(alpha.dtype), d_weight, d_bias, None


fused_fwd.register_autograd(lambda ctx, grad: _param_grads(ctx, grad, fused_bwd), setup_context=_setup_context)


class _EagerDyT(torch.autograd.Function):
    """The same kernels without the custom-op dispatch (tens of microseconds a call) when not compiling."""

    @staticmethod
    def forward(ctx, x, alpha, weight, bias, channels_last):
        _setup_context(ctx, (x, alpha, weight, bias, channels_last), None)
        return _forward_impl(x, alpha, weight, bias, channels_last)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        return _param_grads(ctx, grad, _backward_impl)


def dyt_fused(x: Tensor, alpha: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
              channels_last: bool = True) -> Tensor:
    """Fused DyT, same contract as ``dyt.nn.functional.dyt_forward``.

    Operands of a dtype outside ``FUSED_DTYPES`` (float64, ...) take that reference formula itself: the kernels
    compute in fp32 and would not match it.
    """
    if not dtypes_supported(x, alpha, weight, bias):
        return dyt_forward(x, alpha, weight, bias, channels_last)
    # Fake tensors (dyt.memtrace) take the custom op too: its fake implementation gives the output's shape, where
    # the kernels would read the data.
    if torch.compiler.is_compiling() or is_fake(x):
        return fused_fwd(x, alpha, weight, bias, channels_last)
    return _EagerDyT.apply(x, alpha, weight, bias, channels_last)
