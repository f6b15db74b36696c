"""Whole-model training-step throughput, normalization vs DyT, eager and torch.compile'd, for each model family.

Models come from the project's configs, exactly as training builds them: ``dyt.build_model(cfg)`` on a Hydra
composition of ``configs/train.yaml`` with ``model=<name> norm=<norm> data=<data>``. One step is forward +
cross-entropy + backward + AdamW on random inputs: images for ViT / ConvNeXt (images/s), token sequences for
LLaMA (tokens/s). The baseline is the norm the paper compares against: LayerNorm for the vision families,
RMSNorm for LLaMA. Results go to docs/BENCHMARKS.md (section ``bench_models_<device>``).

    python scripts/bench/models.py                                # vit_s, convnext_t (224 px), llama_125m
    python scripts/bench/models.py --models convnext_t --channels-last
    python scripts/bench/models.py --models vit_s --batch 64 --amp bf16
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from dyt import build_model  # noqa: E402
from dyt.families import compose  # noqa: E402
from record import machine, write_section  # noqa: E402 - scripts/bench/record.py


BASELINE = {"llama": "rmsnorm"}  # per family; LayerNorm otherwise
DEFAULT_DATA = {"llama": "text_pydoc"}  # a data config only fixes input shapes and vocabulary here


def build(model: str, norm: str, data: str, overrides: list[str]):
    cfg = compose([f"model={model}", f"norm={norm}", f"data={data}", *overrides])
    return build_model(cfg), cfg


def batch_for(model, cfg, batch: int, seq_len: int | None, device, channels_last: bool):
    """Random (inputs, labels, items per step, unit) shaped like the data config: images or token sequences."""
    if "seq_len" in cfg.data:
        t = seq_len or cfg.data.seq_len
        tokens = torch.randint(0, model.vocab_size, (batch, t + 1), device=device)
        return tokens[:, :-1], tokens[:, 1:], batch * t, "tokens"
    size = cfg.data.image_size
    images = torch.randn(batch, 3, size, size, device=device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, torch.randint(0, cfg.data.num_classes, (batch,), device=device), batch, "images"


def train_step(model, inputs, labels, compiled: bool, amp: str | None):
    """A closure doing one training step (forward, cross-entropy, backward, AdamW) of model."""
    device = inputs.device
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    fn = torch.compile(model) if compiled else model
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = fn(inputs)
            loss = F.cross_entropy(logits.flatten(0, -2), labels.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", nargs="+", default=["vit_s", "convnext_t", "llama_125m"])
    ap.add_argument("--norms", nargs="+", default=None,
                    help="default: the family's baseline (layernorm; rmsnorm for llama) and dyt")
    ap.add_argument("--data", default=None,
                    help="data config, fixes image size and classes or vocabulary (default imagenet; text_pydoc for llama)")
    ap.add_argument("--batch", type=int, default=None, help="default 8 on CPU, 128 on GPU (LLaMA: 4 and 16)")
    ap.add_argument("--seq-len", type=int, default=None, help="LLaMA sequence length (default 256 CPU, 2048 GPU)")
    ap.add_argument("--channels-last", action="store_true", help="image models and inputs in channels_last memory")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (median); default 5 CPU, 20 GPU")
    ap.add_argument("--amp", choices=["bf16", "fp16"], default=None)
    ap.add_argument("--modes", nargs="+", default=["eager", "compile"], choices=["eager", "compile"])
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. data.image_size=160")
    args = ap.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    steps = args.steps or (20 if cuda else 5)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    desc_start = machine(device)
    rows = []
    for model_name in args.models:
        family = compose([f"model={model_name}"]).model.family
        norms = args.norms or [BASELINE.get(family, "layernorm"), "dyt"]
        data = args.data or DEFAULT_DATA.get(family, "imagenet")
        lm = family == "llama"
        batch = args.batch or ((16 if cuda else 4) if lm else (128 if cuda else 8))
        seq_len = args.seq_len or (2048 if cuda else 256)
        for mode in args.modes:
            steps_by_norm, first = {}, {}
            for norm in norms:
                torch.manual_seed(0)
                with torch.device(device):  # initialised where it runs, not on the CPU first (llama_350m: 7.7 s on a CPU core)
                    model, cfg = build(model_name, norm, data, args.overrides)
                model = model.to(device)
                if args.channels_last and not lm:
                    model = model.to(memory_format=torch.channels_last)
                inputs, labels, items, unit = batch_for(model, cfg, batch, seq_len if lm else None, device,
                                                        args.channels_last)
                steps_by_norm[norm] = train_step(model, inputs, labels, mode == "compile", args.amp)
                first[norm] = timed(steps_by_norm[norm])  # includes compilation
                timed(steps_by_norm[norm])  # second warmup step (allocator, autotuning)
            times = {norm: [] for norm in norms}
            for _ in range(steps):  # alternate the norms step by step: background load hits both alike
                for norm, step in steps_by_norm.items():
                    times[norm].append(timed(step))
            for norm in norms:
                sec = statistics.median(times[norm])
                q1, _, q3 = statistics.quantiles(times[norm], n=4) if len(times[norm]) > 1 else (sec, sec, sec)
                rows.append({"model": model_name, "norm": norm, "mode": mode, "ms": sec * 1e3, "rate": items / sec,
                             "spread": (q3 - q1) / sec,
                             "unit": unit, "first_s": first[norm], "baseline": norms[0],
                             "shape": f"{batch}x{seq_len}" if lm else f"{batch}x{cfg.data.image_size}px"})
                print(f"{model_name:12} {norm:10} {mode:8} {sec * 1e3:9.1f} ms/step {items / sec:10.1f} {unit}/s "
                      f"(first step {first[norm]:.1f} s)", flush=True)
            del steps_by_norm
    for r in rows:
        base = next(q for q in rows if q["model"] == r["model"] and q["mode"] == r["mode"]
                    and q["norm"] == r["baseline"])
        r["vs_base"] = r["rate"] / base["rate"]
    table = ["| model | batch | norm | mode | ms / step | step IQR | throughput | vs baseline norm | first step s |",
             "|---|---|---|---|---:|---:|---:|---:|---:|"]
    table += [f"| {r['model']} | {r['shape']} | {r['norm']} | {r['mode']} | {r['ms']:.1f} | {100 * r['spread']:.1f}% | "
              f"{r['rate']:.1f} {r['unit']}/s | {r['vs_base']:.2f}x | {r['first_s']:.1f} |" for r in rows]
    md = "\n".join(table)
    print(md)
    if args.no_write:
        return
    cmd = "python scripts/bench/models.py " + " ".join(sys.argv[1:])
    fmt = "channels_last" if args.channels_last else ""
    body = (f"### Training step on {device.type}{f' ({fmt})' if fmt else ''}\n\nMachine: {desc_start} at start. "
            f"Command: `{cmd.strip()}`.\namp={args.amp or 'off (fp32)'}, memory format {fmt or 'default (NCHW)'}"
            f", median of {steps} steps after 2 warmup steps (step IQR: interquartile range over the median, the noise), "
            f"baseline and DyT steps alternating; one step = forward, "
            f"cross-entropy, backward, AdamW. DyT uses `impl=auto` (the fused kernels).\n\n{md}\n")
    write_section(f"bench_models_{device.type}" + (f"_{fmt}" if fmt else ""), body)


if __name__ == "__main__":
    main()
