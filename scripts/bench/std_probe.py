"""Cost of the norm-input std probe (`dyt.analysis.InputStdProbe`: the `std/<layer>` metrics of Fig. 8) on a
logged training step, the baseline norm and DyT side by side.

The trainer opens the probe on log steps only (every `trainer.log_every`), on every norm site whatever its kind.
For each model and norm this runs scripts/bench/models.py's training step (forward, cross-entropy, backward, AdamW
on random inputs) with and without the probe, alternating, and records:

- the median step time without and with the probe, and their ratio (on a noisy machine the step-to-step spread can
  exceed the probe's cost: then read the next column);
- probe ms: the probe's own time, median, as the trainer logs it (`train/probe_ms`);
- probe bytes: the largest new tensor the probe's ops create in one forward (probed forward minus plain one,
  counted at the dispatcher: what the probe allocates, whatever the device), and on CUDA the difference of the
  steps' peak allocated memory.

Results go to docs/BENCHMARKS.md (section ``bench_std_probe_<device>[_bf16]``):

    python scripts/bench/std_probe.py                  # vit_s (LayerNorm vs DyT), llama_125m (RMSNorm vs DyT)
    python scripts/bench/std_probe.py --models llama_125m --model-dtype bf16   # bf16 weights: bf16 norm inputs
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts/bench")]  # also when imported (the smoke test calls main in-process)
from dyt.analysis import InputStdProbe, norm_layers  # noqa: E402
from dyt.families import compose  # noqa: E402
from models import BASELINE, DEFAULT_DATA, batch_for, build, train_step  # noqa: E402 - scripts/bench/models.py
from record import machine, write_section  # noqa: E402 - scripts/bench/record.py


class NewTensors(TorchDispatchMode):
    """How many tensors of each (op, bytes) the ops run while open create (views of an input are not new)."""

    def __init__(self):
        super().__init__()
        self.made = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        given = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if torch.is_tensor(t)}
        for t in tree_leaves(out):
            if torch.is_tensor(t) and t.untyped_storage().data_ptr() not in given:
                self.made[str(func), t.numel() * t.element_size()] += 1
        return out


def probe_bytes(model, inputs) -> int:
    """Bytes of the largest tensor the probe's ops create in one forward (probed forward minus plain forward): the
    saturation count's chunk masks (at most `dyt.analysis.CHUNK` bytes), never a copy of an activation."""
    with torch.no_grad(), NewTensors() as plain:
        model(inputs)
    with torch.no_grad(), NewTensors() as probed, InputStdProbe(model):
        model(inputs)
    return max((size for (_, size) in probed.made - plain.made), default=0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", nargs="+", default=["vit_s", "llama_125m"])
    ap.add_argument("--batch", type=int, default=None, help="default 8 on CPU, 128 on GPU (LLaMA: 4 and 16)")
    ap.add_argument("--seq-len", type=int, default=None, help="LLaMA sequence length (default 256 CPU, 2048 GPU)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per variant (median); default 10 CPU, 30 GPU")
    ap.add_argument("--model-dtype", choices=["fp32", "bf16"], default="fp32",
                    help="bf16: weights and so norm inputs in bf16, as under FSDP's bf16 mixed precision")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    steps = args.steps or (30 if cuda else 10)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.model_dtype]
    desc = machine(device)
    rows = []
    for model_name in args.models:
        family = compose([f"model={model_name}"]).model.family
        lm = family == "llama"
        batch = args.batch or ((16 if cuda else 4) if lm else (128 if cuda else 8))
        seq_len = args.seq_len or (2048 if cuda else 256)
        for norm in (BASELINE.get(family, "layernorm"), "dyt"):
            torch.manual_seed(0)
            model, cfg = build(model_name, norm, DEFAULT_DATA.get(family, "imagenet"), args.overrides)
            model = model.to(device, dtype)
            inputs, labels, items, unit = batch_for(model, cfg, batch, seq_len if lm else None, device, False)
            inputs = inputs if lm else inputs.to(dtype)
            step = train_step(model, inputs, labels, compiled=False, amp=None)
            step(), step()  # warmup: allocator, kernels built on first use
            times, probe_ms, peaks = {False: [], True: []}, [], {False: 0, True: 0}
            for _ in range(steps):
                for on in (False, True):
                    if cuda:
                        torch.cuda.reset_peak_memory_stats(device)
                    t = time.perf_counter()
                    with InputStdProbe(model, on) as probe:
                        step()
                    logged = probe.metrics()  # the trainer reads them on the logged step too
                    times[on].append(time.perf_counter() - t)
                    if on:
                        probe_ms.append(logged.get("train/probe_ms", float("nan")))
                    if cuda:
                        peaks[on] = max(peaks[on], torch.cuda.max_memory_allocated(device))
            off, on = (statistics.median(times[k]) * 1e3 for k in (False, True))
            row = {"model": model_name, "norm": norm, "sites": len(norm_layers(model)), "off": off, "on": on,
                   "probe_ms": statistics.median(probe_ms), "bytes": probe_bytes(model, inputs),
                   "peak": (peaks[True] - peaks[False]) if cuda else None,
                   "shape": f"{batch}x{seq_len}" if lm else f"{batch}x{cfg.data.image_size}px"}
            rows.append(row)
            print(f"{model_name:12} {norm:10} {row['sites']:3} sites: step {off:.1f} ms without the probe, {on:.1f} ms "
                  f"with it ({on / off:.3f}x); probe {row['probe_ms']:.2f} ms, largest tensor it creates {row['bytes']} B", flush=True)
            del model, step
    table = ["| model | batch | norm | sites | step ms, probe off | probe on | on / off | probe ms (train/probe_ms) "
             "| largest tensor the probe creates | peak memory on - off |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    table += [f"| {r['model']} | {r['shape']} | {r['norm']} | {r['sites']} | {r['off']:.1f} | {r['on']:.1f} | "
              f"{r['on'] / r['off']:.3f}x | {r['probe_ms']:.2f} | {r['bytes']:,} B | "
              f"{'n/a (CPU)' if r['peak'] is None else format(r['peak'], ',') + ' B'} |" for r in rows]
    md = "\n".join(table)
    print(md)
    if args.no_write:
        return 0
    cmd = "python scripts/bench/std_probe.py " + " ".join(argv if argv is not None else sys.argv[1:])
    body = (f"### Std probe on {device.type}, {args.model_dtype} weights\n\nMachine: {desc} at start. Command: "
            f"`{cmd.strip()}`.\nMedian of {steps} steps per variant after 2 warmup steps, probe off and on "
            f"alternating; one step = forward, cross-entropy, backward, AdamW, plus reading the probe's metrics (one "
            f"host sync). Probe ms: the probe's reductions alone, as logged in `train/probe_ms`. Largest tensor: "
            f"the biggest tensor the probe's ops create in one forward (a saturation-count mask of at most one chunk).\n\n{md}\n")
    write_section(f"bench_std_probe_{device.type}" + ("_bf16" if dtype == torch.bfloat16 else ""), body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
