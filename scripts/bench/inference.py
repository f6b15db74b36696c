"""LLaMA inference (forward only): RMSNorm vs DyT vs folded DyT, side by side; Table 7's inference row on a GPU.

The paper's Table 7 times 100 forward passes of one 4096-token sequence through LLaMA 7B in BF16 (H100: RMSNorm
14.1 s, DyT 13.0 s). Its script (jiachenzhu/DyT other_tasks/Efficiency/benchmark.py) casts transformers' Llama-2-7B
to bf16, runs 100 warmup passes, then times 100 passes under no_grad, each a fresh random (1, 4096) sequence
followed by the cross-entropy of its logits. One measurement here is the same: ``--passes`` forward passes, each
on its own random ``--seq-len`` sequence plus the cross-entropy, then a device sync. Contenders, built by
``dyt.build_model`` from the Hydra configs:

* ``rmsnorm``: the baseline model;
* ``dyt``: the paper's DyT model (``weight * tanh(alpha x)``, our fused kernels);
* ``dyt-folded``: the same DyT model after ``dyt.nn.fold.fold_dyt`` (each DyT's weight folded into the Linears
  that read it: the norms compute ``tanh(alpha x)`` only). Its logits are checked against ``dyt``'s first.

Each contender's first measurement is a warmup (compilation, allocator); then ``--repeats`` rounds, the
contenders alternating within each round, and the median per contender. Results go to docs/BENCHMARKS.md
(section ``bench_inference_<device>``).

    python scripts/bench/inference.py                                   # CPU: llama_125m, 1 x 512 tokens
    python scripts/bench/inference.py --model llama_7b --seq-len 4096 --passes 100 --dtype bf16    # Table 7, GPU
    python scripts/bench/inference.py --modes eager compile             # + torch.compile of each model
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from dyt.nn import ElementwiseNorm  # noqa: E402
from dyt.nn.fold import fold_dyt  # noqa: E402
from models import build  # noqa: E402 - scripts/bench/models.py: a model exactly as training builds it
from record import machine, write_section  # noqa: E402 - scripts/bench/record.py

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def models_for(name: str, device, dtype, overrides: list[str]) -> dict:
    """{contender: model in eval mode, on device, in dtype}. Built on the device (a 7B on a CPU core takes
    minutes), folded in fp32, cast one at a time: peak memory two fp32 models (7B: 54 GB), then three in dtype."""
    out = {}
    for norm in ("dyt", "rmsnorm"):
        torch.manual_seed(0)
        with torch.device(device):
            model, _ = build(name, norm, "text_pydoc", overrides)
        if norm == "dyt":
            with torch.no_grad():  # trained-like norm weights (init is all ones): the fold check below then means something
                for m in model.modules():
                    if isinstance(m, ElementwiseNorm) and m.weight is not None:
                        m.weight.normal_(1.0, 0.2)
            out["dyt-folded"] = fold_dyt(copy.deepcopy(model)).to(dtype).eval()
        out[norm] = model.to(dtype).eval()
    return {k: out[k] for k in ("rmsnorm", "dyt", "dyt-folded")}


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default=None, help="default llama_7b on CUDA, llama_125m on CPU")
    ap.add_argument("--seq-len", type=int, default=None, help="tokens of the one sequence (default 4096 CUDA, 512 CPU)")
    ap.add_argument("--passes", type=int, default=None, help="forward passes per measurement (default 100 CUDA, 1 CPU)")
    ap.add_argument("--repeats", type=int, default=None, help="measurements per contender (median; default 3 CUDA, 5 CPU)")
    ap.add_argument("--dtype", choices=list(DTYPES), default=None, help="weights and activations (default bf16 CUDA, fp32 CPU)")
    ap.add_argument("--modes", nargs="+", default=["eager"], choices=["eager", "compile"])
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. model.n_layers=4")
    args = ap.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    name = args.model or ("llama_7b" if cuda else "llama_125m")
    seq_len, passes = args.seq_len or (4096 if cuda else 512), args.passes or (100 if cuda else 1)
    repeats, dtype_name = args.repeats or (3 if cuda else 5), args.dtype or ("bf16" if cuda else "fp32")
    dtype = DTYPES[dtype_name]

    desc = machine(device)
    models = models_for(name, device, dtype, args.overrides)
    vocab = models["rmsnorm"].vocab_size
    samples = torch.randint(0, vocab, (passes, 1, seq_len), device=device)  # a fresh sequence per pass, as the paper
    with torch.inference_mode():
        ref, folded = models["dyt"](samples[0]).float(), models["dyt-folded"](samples[0]).float()
    fold_err = ((folded - ref).norm() / ref.norm()).item()
    print(f"folded vs unfolded DyT logits: relative error {fold_err:.2e} ({dtype_name})", flush=True)
    del ref, folded

    rows = []
    for mode in args.modes:
        fns = {k: torch.compile(m) if mode == "compile" else m for k, m in models.items()}

        def measure(fn) -> float:
            with torch.inference_mode():
                sync(device)
                t0 = time.perf_counter()
                for sample in samples:
                    F.cross_entropy(fn(sample).view(-1, vocab), sample.view(-1))
                sync(device)
                return time.perf_counter() - t0

        first = {k: measure(fn) for k, fn in fns.items()}  # warmup: compilation, allocator, kernel builds
        times = {k: [] for k in fns}
        for _ in range(repeats):  # contenders alternate: background load hits all alike
            for k, fn in fns.items():
                times[k].append(measure(fn))
        for k in fns:
            sec = statistics.median(times[k])
            q1, _, q3 = statistics.quantiles(times[k], n=4) if repeats > 1 else (sec, sec, sec)
            rows.append({"norm": k, "mode": mode, "s": sec, "spread": (q3 - q1) / sec, "first": first[k]})
            print(f"{name} {k:10} {mode:8} {sec:9.3f} s per {passes} passes (warmup {first[k]:.2f} s)", flush=True)
    base = {r["mode"]: r["s"] for r in rows if r["norm"] == "rmsnorm"}
    table = [f"| model | tokens | dtype | norm | mode | s / {passes} passes | ms / pass | IQR | vs RMSNorm |",
             "|---|---|---|---|---|---:|---:|---:|---:|"]
    table += [f"| {name} | 1x{seq_len} | {dtype_name} | {r['norm']} | {r['mode']} | {r['s']:.3f} | "
              f"{1e3 * r['s'] / passes:.1f} | {100 * r['spread']:.1f}% | {r['s'] / base[r['mode']]:.3f}x |" for r in rows]
    md = "\n".join(table)
    print(md)
    if args.no_write:
        return
    cmd = ("python scripts/bench/inference.py " + " ".join(sys.argv[1:])).strip()
    body = (f"### Inference (forward only) on {device.type}\n\nMachine: {desc} at start. Command: `{cmd}`.\n"
            f"One measurement: {passes} forward pass(es), each of its own random {seq_len}-token sequence and the "
            f"cross-entropy of its logits (the paper's protocol); median of {repeats} "
            f"after one warmup, contenders alternating. `dyt-folded`: `fold_dyt` (norms compute tanh(alpha x) "
            f"only); its logits vs unfolded DyT: relative error {fold_err:.1e}. Time vs RMSNorm below 1 is "
            f"faster.\n\n{md}\n")
    write_section(f"bench_inference_{device.type}", body)


if __name__ == "__main__":
    main()
