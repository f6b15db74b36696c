"""Fused DyT kernels (dyt.nn.kernels) against the eager reference ``dyt_forward``.

Accuracy guarantee of the CPU kernel (fp32 math whatever the storage type): its rational tanh is within
``TANH_ABS_ERR = 5e-7`` of exact tanh for every fp32 input (measured exhaustively over every fp32 in [0, 9.5]
for each build: see docs/BENCHMARKS.md; the approximation is odd, never exceeds 1 in magnitude and is exactly
+-1 for large |x|), NaN propagates and +-inf map to +-1. So the fp32 forward is within ``|weight| * 5e-7`` plus rounding of eager, and
gradients within the tolerances asserted below. The Triton
kernels compute tanh from exp2 in fp32 (abs error ~1e-7).
"""
from __future__ import annotations

import collections
import copy
import os
import platform
import subprocess
import sys
import textwrap

import pytest
import torch

from dyt.nn import DynamicTanh, norms
from dyt.nn.kernels import cpu, dyt_fused, ops
from dyt.nn.norms import dyt_forward

TANH_ABS_ERR = 5e-7
FP32_TOL = {"atol": 2e-6, "rtol": 1e-5}
U32 = 2.0 ** -24  # fp32 unit roundoff

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
FUSED_DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=[pytest.mark.gpu, gpu])]


def _layer(c, channels_last=True, impl="auto", affine=True, bias=True, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    m = DynamicTanh(c, channels_last=channels_last, elementwise_affine=affine, bias=bias, impl=impl, dtype=dtype)
    with torch.no_grad():
        m.alpha.fill_(0.8)
        if m.weight is not None:
            m.weight.normal_()
        if m.bias is not None:
            m.bias.normal_()
    return m


def _run(m, x, g):
    """Output and gradients (x, alpha, weight, bias) of m on x for upstream gradient g."""
    x = x.detach().requires_grad_()
    for p in m.parameters():
        p.grad = None
    y = m(x)
    y.backward(g)
    return [y.detach(), x.grad] + [p.grad for p in (m.alpha, m.weight, m.bias) if p is not None]


def _compare(shape, channels_last, x_fn=lambda x: x, affine=True, bias=True):
    c = shape[-1] if channels_last else shape[1]
    fused, eager = _layer(c, channels_last, "fused", affine, bias), _layer(c, channels_last, "eager", affine, bias)
    x = x_fn(torch.randn(shape) * 3)
    g = torch.randn(x.shape)
    got, want = _run(fused, x, g), _run(eager, x, g)
    assert got[0].shape == want[0].shape and got[0].dtype == want[0].dtype
    for name, a, b in zip(["y", "dx", "d_alpha", "d_weight", "d_bias"], got, want):
        scale = max(1.0, b.abs().max().item())  # reductions: tolerance grows with the summed magnitude
        torch.testing.assert_close(a, b, atol=FP32_TOL["atol"] * scale * (x.numel() ** 0.5 if a.numel() < x.numel() else 1),
                                   rtol=FP32_TOL["rtol"], msg=lambda m: f"{name}: {m}")


def test_rational_tanh_accuracy():
    x = torch.cat([torch.linspace(-12, 12, 2_000_001), torch.randn(1_000_000) * 4,
                   torch.tensor([0.0, -0.0, 1e-30, 9.0, -9.0, 8.99, 1e30, -1e30])])
    err = (cpu.tanh(x).double() - torch.tanh(x.double())).abs().max().item()
    assert err <= TANH_ABS_ERR, err
    special = cpu.tanh(torch.tensor([float("nan"), float("inf"), -float("inf")]))
    assert special[0].isnan() and special[1] == 1 and special[2] == -1


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 17), (2, 3, 4, 31), (1, 1025), (64, 96)])
def test_channels_last_matches_eager(shape):
    _compare(shape, True)


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 4, 1, 1), (3, 6, 9, 2), (2, 5, 11, 13)])
def test_channels_first_matches_eager(shape):
    _compare(shape, False)


@pytest.mark.parametrize("channels_last,make", [
    (True, lambda x: x.transpose(0, 1)),                                  # permuted, dense
    (True, lambda x: x[:, ::2]),                                          # strided slice
    (False, lambda x: x.contiguous(memory_format=torch.channels_last)),  # NCHW stored NHWC
    (False, lambda x: x[:, :, 1:, ::2]),
])
def test_non_contiguous_inputs(channels_last, make):
    _compare((4, 6, 5, 8), channels_last, make)


@pytest.mark.parametrize("affine,bias", [(False, False), (True, False)])
@pytest.mark.parametrize("channels_last", [True, False])
def test_without_affine_or_bias(affine, bias, channels_last):
    _compare((3, 8, 5, 6), channels_last, affine=affine, bias=bias)


def test_multi_dim_normalized_shape():
    fused, eager = _layer((4, 6), impl="fused"), _layer((4, 6), impl="eager")
    x, g = torch.randn(3, 4, 6), torch.randn(3, 4, 6)
    for a, b in zip(_run(fused, x, g), _run(eager, x, g)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("x_dtype,p_dtype", [(torch.bfloat16, torch.bfloat16), (torch.bfloat16, torch.float32),
                                             (torch.float16, torch.float16)])
def test_low_precision_storage(x_dtype, p_dtype):
    fused, eager = _layer(33, impl="fused", dtype=p_dtype), _layer(33, impl="eager", dtype=p_dtype)
    x = (torch.randn(5, 7, 33) * 3).to(x_dtype)
    g = torch.randn(5, 7, 33).to(torch.promote_types(x_dtype, p_dtype))
    got, want = _run(fused, x, g), _run(eager, x, g)
    # eager rounds tanh to bf16/fp16 before scaling: allow a few units of the storage type's precision
    for a, b in zip(got, want):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a.float(), b.float(), atol=0.05 * max(1.0, b.abs().max().item() ** 0.5),
                                   rtol=0.02)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nan_propagates(dtype):
    m = _layer(8, impl="fused", dtype=dtype)
    x = torch.randn(3, 8, dtype=dtype)
    x[1, 2] = float("nan")
    y = m(x)
    assert y[1, 2].isnan() and not y[0].isnan().any()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_store_rounds_like_torch(dtype):
    """The kernel's fp32 -> bf16/fp16 store is torch's round-to-nearest-even, NaN and overflow included."""
    high = _layer(40, impl="fused")
    with torch.no_grad():  # parameters exactly representable in the low type, so both layers hold the same values
        high.alpha.fill_(0.75)
        high.weight.copy_((high.weight * 3e4).to(dtype))  # some outputs overflow fp16
        high.bias.copy_(high.bias.to(dtype))
    low = copy.deepcopy(high).to(dtype)
    x = (torch.randn(6, 40) * 3).to(dtype)
    x[2, 5] = float("nan")
    got = low(x)
    assert got.dtype == dtype
    assert torch.equal(got.float().nan_to_num(7.0), high(x.float()).to(dtype).float().nan_to_num(7.0))


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 flags")
@pytest.mark.parametrize("flags,lanes", [("-mno-avx512f", 8), ("-mno-avx2", 1)], ids=["avx2", "portable"])
def test_other_builds_pass_kernel_tests(tmp_path, flags, lanes):
    """The same kernel tests against the AVX2 spans and the portable ones, built in a fresh process."""
    env = dict(os.environ, DYT_KERNEL_CFLAGS=flags, DYT_KERNEL_CACHE=str(tmp_path))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    got = subprocess.run([sys.executable, "-c", "from dyt.nn.kernels import cpu; print(cpu.simd_lanes())"],
                         env=env, capture_output=True, text=True, cwd=root, timeout=120)
    if lanes == 8 and got.stdout.strip() == "1":
        pytest.skip("this CPU has no AVX2/FMA/F16C")
    assert got.stdout.strip() == str(lanes), got.stderr[-2000:]
    select = ("accuracy or matches_eager or non_contiguous or affine or low_precision or nan_propagates or collapse"
              " or float64_reference")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", select],
                          env=env, capture_output=True, text=True, cwd=root, timeout=600)
    assert proc.returncode == 0 and " passed" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-2000:]


def test_bf16_gradient_does_not_collapse_in_saturation():
    m = _layer(8, impl="fused", dtype=torch.bfloat16)
    x = torch.full((4, 8), 5.0, dtype=torch.bfloat16)  # alpha*x = 4: 1 - tanh^2 = 1.3e-3, 0 if tanh is bf16
    dx = _run(m, x, torch.ones(4, 8, dtype=torch.bfloat16))[1]
    want = (m.weight.detach().float() * 0.8 * (1 - torch.tanh(torch.tensor(4.0)) ** 2)).expand(4, 8)
    torch.testing.assert_close(dx.float(), want, rtol=2e-2, atol=0)


def test_autocast_bf16_matches_eager():
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 24)
    fused, eager = _layer(24, impl="auto"), _layer(24, impl="eager")
    x, outs = torch.randn(6, 16), []
    for m in (fused, eager):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(lin(x))
        y.float().square().sum().backward()
        outs.append((y.detach(), m.alpha.grad.clone(), m.weight.grad.clone()))
    for a, b in zip(*outs):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    model = torch.nn.Sequential(torch.nn.Linear(12, 20), _layer(20), torch.nn.GELU(), torch.nn.Linear(20, 4))
    ref = torch.nn.Sequential(*[m for m in model])  # same parameters, run uncompiled
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    x = torch.randn(3, 5, 12)
    y = compiled(x)
    y.sum().backward()
    grad = model[1].alpha.grad.clone()
    model.zero_grad()
    ref(x).sum().backward()
    torch.testing.assert_close(y, ref(x), **FP32_TOL)
    torch.testing.assert_close(grad, model[1].alpha.grad, atol=1e-5, rtol=1e-5)


def test_opcheck_schema_fake_and_autograd():
    x = torch.randn(3, 4, 5, 6, requires_grad=True)
    alpha, w, b = torch.tensor([0.5], requires_grad=True), torch.randn(4, requires_grad=True), torch.randn(4)
    torch.library.opcheck(ops.fused_fwd, (x, alpha, w, b, False))
    torch.library.opcheck(ops.fused_fwd, (x.contiguous(memory_format=torch.channels_last), alpha, w, None, False))
    torch.library.opcheck(ops.fused_fwd, (x, alpha, None, None, True))


def test_auto_dispatch_and_contract():
    m = DynamicTanh(8)
    assert m.impl == "auto" and set(m.state_dict()) == {"alpha", "weight", "bias"}
    assert "impl" not in repr(m) and "impl='eager'" in repr(DynamicTanh(8, impl="eager"))
    with pytest.raises(ValueError, match="auto, eager, fused"):
        DynamicTanh(8, impl="cuda")
    with torch.device("meta"):  # meta -> eager path; to_empty + reset_parameters still initialise
        meta = DynamicTanh(8, channels_last=False)
    assert meta(torch.empty(2, 8, 3, 3, device="meta")).device.type == "meta"
    meta.to_empty(device="cpu").reset_parameters()
    assert meta.alpha.item() == 0.5 and meta.weight.sum().item() == 8
    double = DynamicTanh(5, dtype=torch.float64)  # float64 stays exact (eager): gradcheck passes
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(double, (x,))


@pytest.mark.parametrize("shape,channels_last", [((3, 4, 5), True), ((2, 5, 3, 4), False)])
@pytest.mark.parametrize("affine,bias", [(True, True), (True, False), (False, False)])
def test_fused_impl_float64_is_the_reference(shape, channels_last, affine, bias):
    """impl="fused" on float64 is the reference formula, not fp32 kernel math (which is off by ~4e-8)."""
    c = shape[-1] if channels_last else shape[1]
    fused = _layer(c, channels_last, "fused", affine, bias, dtype=torch.float64)
    eager = _layer(c, channels_last, "eager", affine, bias, dtype=torch.float64)
    x, g = torch.randn(shape, dtype=torch.float64) * 3, torch.randn(shape, dtype=torch.float64)
    for name, a, b in zip(["y", "dx", "d_alpha", "d_weight", "d_bias"], _run(fused, x, g), _run(eager, x, g)):
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, b, atol=1e-15, rtol=1e-15, msg=lambda m: f"{name}: {m}")
    assert torch.autograd.gradcheck(fused, (x.clone().requires_grad_(),))


@pytest.mark.parametrize("x_dtype,p_dtype", [(torch.float64, torch.float64), (torch.float32, torch.float64),
                                             (torch.float64, torch.float32)])
def test_dyt_fused_with_float64_operands_is_the_reference(x_dtype, p_dtype):
    """The public functional entry point, eager and under torch.compile: any float64 operand -> dyt_forward."""
    torch.manual_seed(0)
    x = torch.randn(2, 6, 3, 5, dtype=x_dtype) * 3
    operands = (x, torch.tensor([0.8], dtype=p_dtype), torch.randn(6, dtype=p_dtype), torch.randn(6, dtype=p_dtype))
    g = torch.randn(x.shape, dtype=torch.promote_types(x_dtype, p_dtype))
    results = []
    for fn in (dyt_forward, dyt_fused, torch.compile(dyt_fused, backend="eager", fullgraph=True)):
        leaves = [t.clone().requires_grad_() for t in operands]
        y = fn(*leaves, False)
        y.backward(g)
        results.append([y.detach()] + [t.grad for t in leaves])
    for got in results[1:]:
        for name, a, b in zip(["y", "dx", "d_alpha", "d_weight", "d_bias"], got, results[0]):
            assert a.dtype == b.dtype
            torch.testing.assert_close(a, b, atol=1e-15, rtol=1e-15, msg=lambda m: f"{name}: {m}")


def test_fused_ops_refuse_dtypes_they_cannot_compute_exactly():
    x, a, w = torch.randn(3, 4), torch.tensor([0.5]), torch.randn(4)
    with pytest.raises(TypeError, match=r"x has dtype float64; .*accept float32, bfloat16, float16"):
        ops.fused_fwd(x.double(), a, w, None, True)
    with pytest.raises(TypeError, match="weight has dtype float64"):
        ops.fused_fwd(x, a, w.double(), None, True)
    with pytest.raises(TypeError, match="grad has dtype float64"):
        ops.fused_bwd(x.double(), x, a, w, True)


# Fused fp32 gradients against the formula in float64 on the same values. Error bounds (u = 2^-24, fp32 unit
# roundoff; dt = TANH_ABS_ERR + u bounds |t - tanh(alpha x)| including the rounding of alpha*x, whose effect on
# tanh is at most 0.45 u): y: |w| dt + 2u(|w t| + |y|). dx = g w alpha (1 - t^2): |1 - t^2| is off by at most
# 2 dt + 2u (+ dt^2), then three products: |g w alpha| (2 dt + 8u). Reductions of n fp32 terms in ANY order
# (SIMD lanes, row tiles, threads, Triton partials) add at most gamma_n = n u / (1 - n u) times the sum of the
# terms' magnitudes, on top of the summed per-term errors; the final fp32 rounding adds u |result|. Sizes stay
# below ~1500 elements so that gamma_n bound is tight enough to notice even a single dropped term.
_GRAD_CASES = [  # odd sizes and SIMD tails, > 64 rows (the CPU row tile), channels-first planes, NHWC storage
    pytest.param((7,), True, None, id="cl-7"),
    pytest.param((3, 5, 17), True, None, id="cl-3x5x17"),
    pytest.param((130, 9), True, None, id="cl-130x9"),
    pytest.param((1, 1025), True, None, id="cl-1x1025"),
    pytest.param((2, 3, 5, 7), False, None, id="cf-2x3x5x7"),
    pytest.param((1, 2, 23, 29), False, None, id="cf-1x2x23x29"),
    pytest.param((1, 1, 33, 35), False, None, id="cf-1x1x33x35"),  # a plane longer than the CPU's 1024 chunk
    pytest.param((2, 6, 5, 7), False, torch.channels_last, id="cf-nhwc-2x6x5x7"),
]


def _gamma(n: int) -> float:
    return n * U32 / (1 - n * U32)


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the device kernels' calls; every other DyT path (the eager formula, the torch fallback) raises."""
    calls = collections.Counter()

    def spy(module, name):
        real = getattr(module, name)

        def counted(*args, **kwargs):
            calls[f"{module.__name__.rsplit('.', 1)[-1]}.{name}"] += 1
            return real(*args, **kwargs)
        monkeypatch.setattr(module, name, counted)

    def fail(*args, **kwargs):
        raise AssertionError("a non-kernel DyT path ran")

    for module in (m for m in (cpu, ops.triton_dyt) if m is not None):
        spy(module, "forward")
        spy(module, "backward")
    monkeypatch.setattr(ops, "_torch_fwd", fail)
    monkeypatch.setattr(ops, "_torch_bwd", fail)
    monkeypatch.setattr(norms, "dyt_forward", fail)  # this module keeps the real one as `dyt_forward`
    return calls


def _assert_within(name, got, want, bound):
    err = (got.detach().cpu().double() - want).abs()
    assert got.shape == want.shape, name
    worst = (err / bound.clamp_min(1e-300)).max().item()
    assert bool((err <= bound).all()), f"{name}: max error {err.max().item():.3g}, {worst:.3g}x its fp32 bound"


@pytest.mark.parametrize("device", FUSED_DEVICES)
@pytest.mark.parametrize("entry", ["module", "custom_op"])
@pytest.mark.parametrize("affine,bias", [(True, True), (True, False), (False, False)],
                         ids=["affine", "no_bias", "no_affine"])
@pytest.mark.parametrize("shape,channels_last,memory_format", _GRAD_CASES)
def test_fused_fp32_grads_match_float64_reference(kernel_calls, device, entry, affine, bias, shape, channels_last,
                                                  memory_format):
    if device == "cpu" and cpu.load() is None:
        pytest.skip("no C compiler here: the CPU kernel cannot be built")
    gen = torch.Generator().manual_seed(0)
    c = shape[-1] if channels_last else shape[1]
    x = torch.randn(shape, generator=gen) * 3  # alpha x up to ~10: linear and saturated tanh both
    g = torch.randn(shape, generator=gen)
    if memory_format is not None:
        x, g = x.contiguous(memory_format=memory_format), g.contiguous(memory_format=memory_format)
    alpha = torch.tensor([0.8])
    w = torch.randn(c, generator=gen) if affine else None
    b = torch.randn(c, generator=gen) if bias else None

    ref = [t.double().requires_grad_() if t is not None else None for t in (x, alpha, w, b)]
    y_ref = dyt_forward(*ref, channels_last)
    y_ref.backward(g.double())

    if entry == "module":
        m = DynamicTanh(c, channels_last=channels_last, elementwise_affine=affine, bias=bias, impl="fused",
                        device=device)
        with torch.no_grad():
            for p, v in ((m.alpha, alpha), (m.weight, w), (m.bias, b)):
                if p is not None:
                    p.copy_(v)
        x_in = x.detach().to(device).requires_grad_()
        y, node = m(x_in), "_EagerDyTBackward"
        leaves = [x_in, m.alpha, m.weight, m.bias]
    else:
        leaves = [t.detach().to(device).requires_grad_() if t is not None else None for t in (x, alpha, w, b)]
        y, node = ops.fused_fwd(*leaves, channels_last), "GeneratedBackwardFor_dyt_fused_fwd_defaultBackward"
    assert y.grad_fn.name() == node and y.dtype == torch.float32
    y.backward(g.to(device))
    kernel = "cpu" if device == "cpu" else "triton_dyt"
    assert dict(kernel_calls) == {f"{kernel}.forward": 1, f"{kernel}.backward": 1}

    xd, gd, ad = x.double(), g.double(), alpha.double()
    view = (-1,) if channels_last else (-1, 1, 1)
    wd = w.double().view(view) if w is not None else torch.ones((), dtype=torch.float64)
    t = torch.tanh(ad * xd)
    dt = TANH_ABS_ERR + U32
    channel_dim = x.dim() - 1 if channels_last else 1
    red = tuple(i for i in range(x.dim()) if i != channel_dim)

    def per_channel(v):
        return v.sum(red) if red else v

    n, n_c = x.numel(), x.numel() // c
    term_a = (gd * wd * xd).abs() * (2 * dt + 8 * U32)  # per-term error bound of d_alpha's terms
    bounds = {
        "y": wd.abs() * dt + 2 * U32 * ((wd * t).abs() + y_ref.detach().abs()),
        "dx": (gd * wd * ad).abs() * (2 * dt + 8 * U32),
        "d_alpha": (term_a.sum() + _gamma(n + 2) * ((gd * wd * xd * (1 - t * t)).abs() + term_a).sum()).view(1),
    }
    if w is not None:
        term_w = gd.abs() * (dt + U32)
        bounds["d_weight"] = per_channel(term_w) + _gamma(n_c + 1) * per_channel((gd * t).abs() + term_w)
    if b is not None:
        bounds["d_bias"] = _gamma(n_c + 1) * per_channel(gd.abs())
    got = {"y": y, "dx": leaves[0].grad, "d_alpha": leaves[1].grad, "d_weight": w is not None and leaves[2].grad,
           "d_bias": b is not None and leaves[3].grad}
    want = {"y": y_ref.detach(), "dx": ref[0].grad, "d_alpha": ref[1].grad,
            "d_weight": w is not None and ref[2].grad, "d_bias": b is not None and ref[3].grad}
    for name, bound in bounds.items():
        _assert_within(name, got[name], want[name], bound + U32 * want[name].abs())


def test_torch_fallback_when_kernel_unavailable(monkeypatch):
    monkeypatch.setattr(cpu, "_tried", True)
    monkeypatch.setattr(cpu, "_lib", None)
    _compare((2, 3, 9), True)
    _compare((2, 3, 4, 5), False)


_TRITON_SCRIPT = textwrap.dedent("""
    import torch
    from dyt.nn.kernels import ops, triton_dyt
    torch.manual_seed(0)
    for shape, cl in [((5, 7, 33), True), ((37, 1100), True), ((2, 3, 5, 7), False), ((1, 2, 70, 70), False)]:
        for dtype in (torch.float32, torch.bfloat16):
            x = (torch.randn(shape) * 3).to(dtype)
            c = shape[-1] if cl else shape[1]
            outer, c, inner, _ = ops._layout(x, cl, None)
            w, b, a = torch.randn(c), torch.randn(c), torch.tensor([0.8])
            g = torch.randn(shape).to(dtype)
            y = torch.empty(shape, dtype=dtype)
            triton_dyt.forward(x, y, a, w, b, outer, c, inner)
            dx = torch.empty_like(x)
            da, dw, db = triton_dyt.backward(g, x, dx, a, w, outer, c, inner)
            ry = ops._torch_fwd(x, a, w, b, (outer, c, inner)).reshape(shape)
            rdx, rda, rdw, rdb = ops._torch_bwd(g, x, a, w, (outer, c, inner))
            tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=3e-2, rtol=1e-2)
            torch.testing.assert_close(y.float(), ry.to(dtype).float(), **tol)
            torch.testing.assert_close(dx.float(), rdx.reshape(shape).to(dtype).float(), **tol)
            for got, want in ((da, rda), (dw, rdw), (db, rdb)):
                torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-4)
    print("ok")
""")


def test_triton_kernels_in_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", _TRITON_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape,channels_last", [((4, 257, 1000), True), ((8192, 4096), True),
                                                 ((2, 96, 56, 56), False), ((3, 5, 7, 9), False)])
def test_cuda_matches_eager_fp32_math(dtype, shape, channels_last):
    c = shape[-1] if channels_last else shape[1]
    fused = _layer(c, channels_last, "auto", dtype=dtype).cuda()
    ref = _layer(c, channels_last, "eager").cuda()  # fp32 math on the same values: what we promise
    ref.load_state_dict({k: v.float() for k, v in fused.state_dict().items()})
    x = (torch.randn(shape, device="cuda") * 3).to(dtype)
    g = torch.randn(shape, device="cuda").to(dtype)
    got, want = _run(fused, x, g), _run(ref, x.float(), g.float())
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=1e-2)
    torch.testing.assert_close(got[0], want[0].to(dtype), **tol)
    torch.testing.assert_close(got[1], want[1].to(dtype), **tol)
    for a, b in zip(got[2:], want[2:]):  # parameter grads: fp32 sums, rounded once to the parameter dtype
        torch.testing.assert_close(a.float(), b, atol=1e-3 * max(1, b.abs().max().item()),
                                   rtol=1e-3 if dtype == torch.float32 else 1e-2)


@pytest.mark.gpu
@gpu
def test_cuda_compile_and_autocast():
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), _layer(128), torch.nn.Linear(128, 8)).cuda()
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(16, 64, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = compiled(x)
        ref = torch.nn.Sequential(model[0], _layer(128, impl="eager").cuda(), model[2])(x)
    torch.testing.assert_close(y.float(), ref.float(), atol=5e-2, rtol=5e-2)
    y.float().sum().backward()
