"""Benchmark normalization layers: LayerNorm, RMSNorm and DyT (eager, torch.compile, ours, Liger) in one run.

For every shape and dtype: forward and forward+backward time (median), effective GB/s (bytes a fused kernel must
move: fwd reads x and writes y; fwd+bwd adds reading grad and x and writing dx) as a fraction of the measured
`y.copy_(x)` bandwidth at the same size, and the time ratio against nn.LayerNorm. Writes a markdown table and a
PNG plot into docs/BENCHMARKS.md (section `bench_norms_<device>`).

    python scripts/bench/norms.py                 # the full run on whatever device is present (cuda if any)
    python scripts/bench/norms.py --quick         # a few shapes, short timings (a smoke test)
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from dyt.nn import DynamicTanh, LayerNorm2d, RMSNorm2d  # noqa: E402
from dyt.nn.kernels import cpu  # noqa: E402
from record import DOC, machine, write_section  # noqa: E402 - scripts/bench/record.py

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _liger_dyt():
    try:
        from liger_kernel.transformers import LigerDyT
        return LigerDyT
    except ImportError:
        return None


def layers(c: int, channels_last: bool, device, dtype) -> dict[str, nn.Module]:
    """The contenders at one size; every module gets the same parameter dtype as its input."""
    mk = {"device": device, "dtype": dtype}
    out = {
        "layernorm": (nn.LayerNorm(c, **mk) if channels_last else LayerNorm2d(c, **mk)),
        "rmsnorm": (nn.RMSNorm(c, **mk) if channels_last else RMSNorm2d(c, **mk)),
        "dyt-eager": DynamicTanh(c, channels_last=channels_last, impl="eager", **mk),
        "dyt-compile": torch.compile(DynamicTanh(c, channels_last=channels_last, impl="eager", **mk)),
        "dyt-ours": DynamicTanh(c, channels_last=channels_last, impl="auto", **mk),
    }
    liger = _liger_dyt()
    if liger is not None and channels_last and device.type == "cuda":
        out["dyt-liger"] = liger(c).to(**mk)
    return out


def interleaved_medians(stmts: dict[str, callable], min_run_time: float, device) -> dict[str, float]:
    """Median seconds per call of each statement, timed in interleaved rounds.

    Round-robin rather than one statement after another, so that a busy machine (other jobs on shared cores)
    slows every contender alike and the ratios stay meaningful.
    """
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    number = {}
    for name, fn in stmts.items():
        fn(), fn()  # warm up (and compile) outside the timing
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        number[name] = max(1, int(0.02 / max(time.perf_counter() - t0, 1e-7)))  # ~20 ms per sample
    rounds = max(5, int(min_run_time / 0.02))
    samples: dict[str, list[float]] = {name: [] for name in stmts}
    for _ in range(rounds):
        for name, fn in stmts.items():
            sync()
            t0 = time.perf_counter()
            for _ in range(number[name]):
                fn()
            sync()
            samples[name].append((time.perf_counter() - t0) / number[name])
    return {name: statistics.median(v) for name, v in samples.items()}


def closures(m: nn.Module, x: torch.Tensor, g: torch.Tensor):
    """(forward, forward+backward) calls of m on x; the backward gets upstream gradient g."""
    params = list(m.parameters())
    xg = x.detach().requires_grad_()

    def fwd():
        with torch.no_grad():
            m(x)

    def fwd_bwd():
        xg.grad = None
        for p in params:
            p.grad = None
        m(xg).backward(g)

    return fwd, fwd_bwd


def shapes(device, quick: bool) -> list[tuple[tuple[int, ...], bool]]:
    """(shape, channels_last): tokens x hidden (1024..8192) and NCHW (ConvNeXt stem/downsample sizes)."""
    if quick:
        return [((4, 1024, 1024), True), ((8, 96, 56, 56), False)]
    tokens = [4096, 8192, 16384] if device.type == "cuda" else [1024]
    hidden = [1024, 2048, 4096, 8192]
    rows = [((t, h), True) for t in tokens for h in hidden]
    rows.insert(0, ((4, 1024, 1024), True))  # the CPU target shape
    batch = 64 if device.type == "cuda" else 8
    return rows + [((batch, 96, 56, 56), False), ((batch, 384, 14, 14), False)]


def run(device, dtypes, quick: bool, min_run_time: float) -> list[dict]:
    results = []
    torch._dynamo.config.cache_size_limit = 256  # one compiled graph per shape and dtype
    for dname in dtypes:
        dtype = DTYPES[dname]
        for shape, cl in shapes(device, quick):
            if device.type == "cuda" and dname == "fp32" and shape == (4, 1024, 1024):
                continue
            x = torch.randn(shape, device=device, dtype=dtype)
            g = torch.randn(shape, device=device, dtype=dtype)
            gb = x.numel() * x.element_size() / 1e9
            dst = torch.empty_like(x)
            c = shape[-1] if cl else shape[1]
            stmts = {"copy": lambda: dst.copy_(x)}
            for name, m in layers(c, cl, device, dtype).items():
                stmts[name + "/fwd"], stmts[name + "/fwdbwd"] = closures(m, x, g)
            t0 = time.time()
            med = interleaved_medians(stmts, min_run_time, device)
            copy_s = med.pop("copy")
            copy_bw = 2 * gb / copy_s
            for name in dict.fromkeys(k.split("/")[0] for k in med):
                f, fb = med[name + "/fwd"], med[name + "/fwdbwd"]
                results.append({"dtype": dname, "shape": "x".join(map(str, shape)) + ("" if cl else " NCHW"),
                                "impl": name, "fwd_ms": f * 1e3, "fwdbwd_ms": fb * 1e3, "copy_ms": copy_s * 1e3,
                                "fwd_bw": 2 * gb / f / copy_bw, "fwdbwd_bw": 5 * gb / fb / copy_bw,
                                "copy_gbs": copy_bw})
                print(f"{dname} {results[-1]['shape']:>16} {name:12} fwd {f * 1e3:8.3f} ms  fwd+bwd "
                      f"{fb * 1e3:8.3f} ms  (copy {copy_s * 1e3:.3f} ms)", flush=True)
            print(f"  ({time.time() - t0:.0f} s)", flush=True)
    for r in results:  # ratios against LayerNorm at the same shape and dtype
        ln = next(q for q in results if q["impl"] == "layernorm" and q["shape"] == r["shape"]
                  and q["dtype"] == r["dtype"])
        r["fwd_vs_ln"], r["fwdbwd_vs_ln"] = r["fwd_ms"] / ln["fwd_ms"], r["fwdbwd_ms"] / ln["fwdbwd_ms"]
    return results


def cpu_kernel_floor(c: int = 1024, rows: int = 128) -> str:
    """The C kernel alone on one thread: no allocation, no dispatch, 1 MiB of data that stays in L2.

    Its ns per element is the arithmetic cost of the kernel, the floor under every CPU figure above.
    """
    lib = cpu.load()
    if lib is None:
        return ""
    x, g = torch.randn(rows, c) * 3, torch.randn(rows, c)
    y, dx, w, b = torch.empty_like(x), torch.empty_like(x), torch.randn(c), torch.randn(c)
    sums = [torch.empty(n) for n in (c, c, 1)]
    calls = {"forward": lambda: lib.dyt_fwd_f32_f32(x.data_ptr(), y.data_ptr(), 0.8, w.data_ptr(), b.data_ptr(),
                                                    rows, c, 1, 1),
             "backward": lambda: lib.dyt_bwd_f32_f32(g.data_ptr(), x.data_ptr(), dx.data_ptr(), 0.8, w.data_ptr(),
                                                     rows, c, 1, *(t.data_ptr() for t in sums), 1)}
    med = interleaved_medians(calls, 1.0, torch.device("cpu"))
    lanes = cpu.simd_lanes()
    build = {16: "AVX-512 spans", 8: "AVX2 spans"}.get(lanes, "portable spans")
    return (f"C kernel alone ({build}; one thread, fp32 {rows}x{c} in L2, no allocation or dispatch): forward "
            f"{med['forward'] * 1e9 / x.numel():.3f} ns/element, backward {med['backward'] * 1e9 / x.numel():.3f} "
            f"ns/element per thread.")


def call_overhead(device) -> str:
    """Fixed cost per call, on a 2x16 tensor where the arithmetic is nil: Python, dispatch, autograd, allocation."""
    x, g = torch.randn(2, 16, device=device), torch.randn(2, 16, device=device)
    stmts = {}
    for name, m in (("layernorm", nn.LayerNorm(16, device=device)), ("dyt-ours", DynamicTanh(16, device=device))):
        stmts[name + "/fwd"], stmts[name + "/fwdbwd"] = closures(m, x, g)
    med = interleaved_medians(stmts, 1.0, device)
    us = {k: v * 1e6 for k, v in med.items()}
    return (f"Fixed cost per call (2x16 input, {device.type}): forward {us['dyt-ours/fwd']:.1f} us for DyT vs "
            f"{us['layernorm/fwd']:.1f} us for nn.LayerNorm, forward+backward {us['dyt-ours/fwdbwd']:.1f} vs "
            f"{us['layernorm/fwdbwd']:.1f} us (DyT's kernels are called from a Python autograd.Function).")


def table(results: list[dict]) -> str:
    head = ("| dtype | shape | impl | fwd ms | fwd x LN | fwd % copy BW | fwd+bwd ms | fwd+bwd x LN | fwd+bwd % copy BW |\n"
            "|---|---|---|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in results:
        lines.append(f"| {r['dtype']} | {r['shape']} | {r['impl']} | {r['fwd_ms']:.3f} | {r['fwd_vs_ln']:.2f} | "
                     f"{100 * r['fwd_bw']:.0f}% | {r['fwdbwd_ms']:.3f} | {r['fwdbwd_vs_ln']:.2f} | "
                     f"{100 * r['fwdbwd_bw']:.0f}% |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path, title: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
        return False
    dtypes = list(dict.fromkeys(r["dtype"] for r in results))
    impls = [i for i in dict.fromkeys(r["impl"] for r in results) if i != "layernorm"]
    fig, axes = plt.subplots(len(dtypes), 1, figsize=(12, 4 * len(dtypes)), squeeze=False)
    for ax, dname in zip(axes[:, 0], dtypes):
        rows = [r for r in results if r["dtype"] == dname]
        shapes_ = list(dict.fromkeys(r["shape"] for r in rows))
        width = 0.8 / len(impls)
        for k, impl in enumerate(impls):
            vals = [next((r["fwdbwd_vs_ln"] for r in rows if r["shape"] == s and r["impl"] == impl), 0)
                    for s in shapes_]
            ax.bar([i + k * width for i in range(len(shapes_))], vals, width, label=impl)
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(shapes_))], shapes_, rotation=20, fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("fwd+bwd time / LayerNorm")
        ax.set_title(f"{title} — {dname} (lower is better)", fontsize=9)
        ax.legend(fontsize=8, ncol=len(impls))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--min-run-time", type=float, default=None, help="seconds of timing per measurement")
    ap.add_argument("--no-write", action="store_true", help="print only, leave docs/ alone")
    args = ap.parse_args()
    device = torch.device(args.device)
    min_run_time = args.min_run_time or (0.2 if args.quick else 1.0)
    desc_start = machine(device)
    results = run(device, args.dtypes, args.quick, min_run_time)
    desc = f"{desc_start} at start, {os.getloadavg()[0]:.1f} at end" if hasattr(os, "getloadavg") else desc_start
    md = table(results)
    notes = " ".join(filter(None, [cpu_kernel_floor() if device.type == "cpu" else "", call_overhead(device)]))
    print(md + "\n\n" + notes)
    if args.no_write:
        return
    png = DOC.parent / f"bench_norms_{device.type}.png"
    has_plot = plot(results, png, desc)
    cmd = "python scripts/bench/norms.py " + " ".join(sys.argv[1:])
    body = (f"### Norm layers on {device.type}\n\nMachine: {desc}. Command: `{cmd.strip()}`.\n"
            f"Median over interleaved rounds (~{min_run_time:g} s per measurement, ~20 ms samples, after "
            f"warmup; all contenders of a shape alternate, so background load hits them alike); "
            f"copy bandwidth `y.copy_(x)` measured at each size: {min(r['copy_gbs'] for r in results):.1f}.."
            f"{max(r['copy_gbs'] for r in results):.1f} GB/s. `x LN`: time / nn.LayerNorm time (lower is "
            f"faster). `% copy BW`: bytes a fused kernel must move (fwd 2, fwd+bwd 5 tensors) per second, "
            f"over the copy bandwidth.\n\n" + md + "\n\n" + notes + "\n")
    if has_plot:
        body += f"\n![norm benchmark]({png.name})\n"
    write_section(f"bench_norms_{device.type}", body)


if __name__ == "__main__":
    main()
