"""Triton DyT kernels for CUDA tensors: fp32 math for fp32/bf16/fp16 storage.

The backward recomputes ``t = tanh(alpha * x)`` from the saved input in fp32 (``1 - t*t`` from a bf16-rounded
tanh is 0 for |alpha*x| > ~3.4) and writes dx plus per-program partial sums of d_weight, d_bias and d_alpha in
one pass over (grad, x); the partials (a few hundred rows of C floats) are summed by torch afterwards.
Launchers take contiguous [outer, C, inner] buffers: inner == 1 is channels-last (2-D row x column tiles),
inner > 1 is channels-first (one program range per (n, c) plane, the channel's affine is a scalar).
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl


@triton.jit
def _tanh(z):
    # tanh from exp2 of a non-positive argument: no overflow, abs error ~1e-7 in fp32
    e = tl.exp2(-2.8853900817779268 * tl.abs(z))  # exp(-2|z|)
    t = (1.0 - e) / (1.0 + e)
    return tl.where(z < 0, -t, t)


@triton.jit
def _fwd_rows(X, Y, W, B, A, M, C, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    mask = (rows[:, None] < M) & cmask[None, :]
    offs = rows[:, None] * C + cols[None, :]
    a = tl.load(A)
    w = tl.load(W + cols, mask=cmask, other=1.0)
    b = tl.load(B + cols, mask=cmask, other=0.0)
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + offs, _tanh(a * x) * w[None, :] + b[None, :], mask=mask)


@triton.jit
def _fwd_planes(X, Y, W, B, A, C, INNER, BLOCK: tl.constexpr):
    plane = tl.program_id(0)
    idx = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < INNER
    offs = plane.to(tl.int64) * INNER + idx
    a = tl.load(A)
    w = tl.load(W + plane % C)
    b = tl.load(B + plane % C)
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + offs, _tanh(a * x) * w + b, mask=mask)


@triton.jit
def _bwd_rows(G, X, DX, W, A, PW, PB, PA, M, C, ROW_PROGS, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    pid_m, pid_c = tl.program_id(0), tl.program_id(1)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    a = tl.load(A)
    w = tl.load(W + cols, mask=cmask, other=0.0)
    acc_w = tl.zeros((BLOCK_M, BLOCK_C), tl.float32)
    acc_b = tl.zeros((BLOCK_M, BLOCK_C), tl.float32)
    acc_a = tl.zeros((BLOCK_M, BLOCK_C), tl.float32)
    for start in range(pid_m * BLOCK_M, M, ROW_PROGS * BLOCK_M):  # grid-stride over row tiles
        rows = start + tl.arange(0, BLOCK_M).to(tl.int64)
        mask = (rows[:, None] < M) & cmask[None, :]
        offs = rows[:, None] * C + cols[None, :]
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
        t = _tanh(a * x)
        d = 1.0 - t * t
        gw = g * w[None, :]
        tl.store(DX + offs, gw * a * d, mask=mask)
        acc_w += g * t
        acc_b += g
        acc_a += gw * x * d
    tl.store(PW + pid_m * C + cols, tl.sum(acc_w, axis=0), mask=cmask)
    tl.store(PB + pid_m * C + cols, tl.sum(acc_b, axis=0), mask=cmask)
    tl.store(PA + pid_m * tl.num_programs(1) + pid_c, tl.sum(tl.sum(acc_a, axis=1), axis=0))


@triton.jit
def _bwd_planes(G, X, DX, W, A, PW, PB, PA, C, INNER, SPLITS, BLOCK: tl.constexpr):
    plane, split = tl.program_id(0), tl.program_id(1)
    a = tl.load(A)
    w = tl.load(W + plane % C)
    acc_w = tl.zeros((BLOCK,), tl.float32)
    acc_b = tl.zeros((BLOCK,), tl.float32)
    acc_a = tl.zeros((BLOCK,), tl.float32)
    for start in range(split * BLOCK, INNER, SPLITS * BLOCK):
        idx = start + tl.arange(0, BLOCK)
        mask = idx < INNER
        offs = plane.to(tl.int64) * INNER + idx
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
        t = _tanh(a * x)
        d = 1.0 - t * t
        tl.store(DX + offs, g * w * a * d, mask=mask)
        acc_w += g * t
        acc_b += g
        acc_a += g * x * d
    out = plane * SPLITS + split
    tl.store(PW + out, tl.sum(acc_w, axis=0))
    tl.store(PB + out, tl.sum(acc_b, axis=0))
    tl.store(PA + out, tl.sum(acc_a, axis=0) * w)


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # Triton interpreter (tests on CPU)


def _row_tiles(c: int, budget: int) -> tuple[int, int]:
    block_c = min(triton.next_power_of_2(c), 1024)
    return max(1, budget // block_c), block_c


def _on_device(x):
    # Triton launches on torch's current CUDA device: make it x's (no-op for the CPU interpreter)
    return torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext()


def forward(x, y, alpha, w, b, outer: int, c: int, inner: int) -> None:
    with _on_device(x):
        _forward(x, y, alpha, w, b, outer, c, inner)


def _forward(x, y, alpha, w, b, outer: int, c: int, inner: int) -> None:
    if inner == 1:
        block_m, block_c = _row_tiles(c, 4096)
        grid = (triton.cdiv(outer, block_m), triton.cdiv(c, block_c))
        _fwd_rows[grid](x, y, w, b, alpha, outer, c, BLOCK_M=block_m, BLOCK_C=block_c, num_warps=8)
    else:
        block = min(triton.next_power_of_2(inner), 4096)
        grid = (outer * c, triton.cdiv(inner, block))
        _fwd_planes[grid](x, y, w, b, alpha, c, inner, BLOCK=block, num_warps=8 if block >= 2048 else 4)


def backward(g, x, dx, alpha, w, outer: int, c: int, inner: int):
    """Fills dx; returns fp32 (d_alpha (1,), d_weight (C,), d_bias (C,))."""
    with _on_device(x):
        return _backward(g, x, dx, alpha, w, outer, c, inner)


def _backward(g, x, dx, alpha, w, outer: int, c: int, inner: int):
    f32 = {"dtype": torch.float32, "device": x.device}
    if inner == 1:
        block_m, block_c = _row_tiles(c, 2048)
        col_progs = triton.cdiv(c, block_c)
        row_progs = max(1, min(triton.cdiv(outer, block_m), 4 * _sm_count(x.device) // col_progs))
        pw, pb = torch.empty(row_progs, c, **f32), torch.empty(row_progs, c, **f32)
        pa = torch.empty(row_progs * col_progs, **f32)
        _bwd_rows[(row_progs, col_progs)](g, x, dx, w, alpha, pw, pb, pa, outer, c, row_progs,
                                          BLOCK_M=block_m, BLOCK_C=block_c, num_warps=8)
        return pa.sum().reshape(1), pw.sum(0), pb.sum(0)
    block = min(triton.next_power_of_2(inner), 2048)
    planes = outer * c
    splits = max(1, min(triton.cdiv(inner, block), 4 * _sm_count(x.device) // planes))
    pw, pb, pa = (torch.empty(planes * splits, **f32) for _ in range(3))
    _bwd_planes[(planes, splits)](g, x, dx, w, alpha, pw, pb, pa, c, inner, splits, BLOCK=block,
                                  num_warps=8 if block >= 2048 else 4)
    return pa.sum().reshape(1), pw.view(outer, c, splits).sum((0, 2)), pb.view(outer, c, splits).sum((0, 2))
