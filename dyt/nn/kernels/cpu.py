"""Build, cache and call the C DyT kernels (dyt_cpu.c) through ctypes.

The library is compiled on first use with the system C compiler (``$CC``, else ``cc``/``gcc``) into
``$DYT_KERNEL_CACHE`` (default ``~/.cache/dyt/kernels``), keyed by the source, the flags and the CPU, so it
is built once per machine. ``$DYT_KERNEL_CFLAGS`` appends compiler flags: ``-mno-avx512f`` builds the AVX2
spans, ``-mno-avx2`` the portable ones, on a CPU that has more. If it cannot be built, ``load()`` returns
``None`` after one warning and callers fall back to the eager formula.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch

_SOURCE = Path(__file__).with_name("dyt_cpu.c")
# Fast-math pieces, compile step only (linking with them would pull in crtfastmath.o, which flushes denormals
# process-wide): they let the division of the rational tanh use rcp + Newton. NaN is handled on the bits.
_CFLAGS = ["-O3", "-march=native", "-fPIC", "-fopenmp", "-ffp-contract=fast", "-fno-math-errno",
           "-funsafe-math-optimizations", "-fno-associative-math", "-ffinite-math-only", "-fno-trapping-math"]
if platform.machine().lower() in ("x86_64", "amd64"):
    _CFLAGS += ["-mrecip", "-mprefer-vector-width=512"]  # 512-bit only where -march=native has AVX-512
_LDFLAGS = ["-shared", "-fopenmp"]
_CTYPE = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}
_MIN_PER_THREAD = 65536  # elements per extra thread: below, a fork-join costs more than it saves (and on
# shared cores a parallel region waits for a descheduled thread)

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False


def _cpu_id() -> str:
    try:  # -march=native: a library built on one CPU may not run on another sharing the cache
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), platform.processor())
    except OSError:
        return platform.processor()


def _build() -> Path:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler found (set $CC)")
    cflags = _CFLAGS + os.environ.get("DYT_KERNEL_CFLAGS", "").split()
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join([cc, *cflags, _cpu_id()]).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("DYT_KERNEL_CACHE", Path.home() / ".cache" / "dyt" / "kernels"))
    target = cache / f"dyt_cpu_{key}.so"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:  # build aside, then rename: safe under parallel tests
        obj, out = Path(tmp) / "dyt_cpu.o", Path(tmp) / target.name
        for cmd in ([cc, *cflags, "-c", str(_SOURCE), "-o", str(obj)], [cc, *_LDFLAGS, str(obj), "-o", str(out)]):
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-2000:]}")
        os.replace(out, target)
    return target


def _declare(lib: ctypes.CDLL) -> None:
    p, f, i64, i = ctypes.c_void_p, ctypes.c_float, ctypes.c_int64, ctypes.c_int
    names = [a + "_" + b for a in ("f32", "bf16", "f16") for b in ("f32", "bf16", "f16")]
    for name in names:
        if hasattr(lib, "dyt_fwd_" + name):
            getattr(lib, "dyt_fwd_" + name).argtypes = [p, p, f, p, p, i64, i64, i64, i]
            getattr(lib, "dyt_bwd_" + name).argtypes = [p, p, p, f, p, i64, i64, i64, p, p, p, i]
    lib.dyt_tanh_f32.argtypes = [p, p, i64]
    lib.dyt_simd_lanes.restype = i


def load() -> ctypes.CDLL | None:
    """The compiled library, or ``None`` (warned once) when it cannot be built or loaded here."""
    global _lib, _tried
    if _tried:
        return _lib
    with _lock:
        if not _tried:
            try:
                if os.environ.get("DYT_DISABLE_CPU_KERNEL") == "1":
                    raise RuntimeError("disabled by DYT_DISABLE_CPU_KERNEL=1")
                lib = ctypes.CDLL(str(_build()))
                _declare(lib)
                _lib = lib
            except Exception as err:  # noqa: BLE001 - any failure means: use the eager formula
                warnings.warn(f"dyt: fused CPU DyT kernel unavailable, using eager DyT ({err})", RuntimeWarning,
                              stacklevel=2)
            _tried = True
    return _lib


def supports(x_dtype: torch.dtype, y_dtype: torch.dtype) -> bool:
    lib = load()
    return (lib is not None and x_dtype in _CTYPE and y_dtype in _CTYPE
            and hasattr(lib, f"dyt_fwd_{_CTYPE[x_dtype]}_{_CTYPE[y_dtype]}"))


def _threads(numel: int) -> int:
    return max(1, min(torch.get_num_threads(), numel // _MIN_PER_THREAD))


def forward(x: torch.Tensor, y: torch.Tensor, alpha: float, w: torch.Tensor, b: torch.Tensor,
            outer: int, channels: int, inner: int) -> None:
    """y = w * tanh(alpha * x) + b over contiguous [outer, channels, inner] buffers; w, b fp32 of size C."""
    fn = getattr(load(), f"dyt_fwd_{_CTYPE[x.dtype]}_{_CTYPE[y.dtype]}")
    fn(x.data_ptr(), y.data_ptr(), alpha, w.data_ptr(), b.data_ptr(), outer, channels, inner, _threads(x.numel()))


def backward(g: torch.Tensor, x: torch.Tensor, dx: torch.Tensor, alpha: float, w: torch.Tensor,
             outer: int, channels: int, inner: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fills dx; returns fp32 (d_alpha (1,), d_weight (C,), d_bias (C,)) from the same single pass."""
    dw = torch.empty(channels, dtype=torch.float32)
    db = torch.empty(channels, dtype=torch.float32)
    da = torch.empty(1, dtype=torch.float32)
    fn = getattr(load(), f"dyt_bwd_{_CTYPE[x.dtype]}_{_CTYPE[g.dtype]}")
    fn(g.data_ptr(), x.data_ptr(), dx.data_ptr(), alpha, w.data_ptr(), outer, channels, inner,
       dw.data_ptr(), db.data_ptr(), da.data_ptr(), _threads(x.numel()))
    return da, dw, db


def simd_lanes() -> int:
    """Vector lanes of the built spans: 16 (AVX-512), 8 (AVX2) or 1 (portable, compiler-vectorised C)."""
    return load().dyt_simd_lanes()


def tanh(x: torch.Tensor) -> torch.Tensor:
    """The kernel's rational tanh on an fp32 tensor (used to test its accuracy bound)."""
    x = x.contiguous()
    y = torch.empty_like(x)
    load().dyt_tanh_f32(x.data_ptr(), y.data_ptr(), x.numel())
    return y
