"""Whole-model training-step throughput, LayerNorm vs DyT, eager and torch.compile'd, for each model family.

Models come from the project's configs, exactly as training builds them: ``dyt.build_model(cfg)`` on a Hydra
composition of ``configs/train.yaml`` with ``model=<name> norm=<layernorm|dyt> data=<data>``. One step is
forward + cross-entropy + backward + AdamW on random images. Results go to docs/BENCHMARKS.md (section
``bench_models_<device>``).

    python scripts/bench_models.py                                # vit_s and convnext_t at 224px
    python scripts/bench_models.py --models vit_s --batch 64 --amp bf16
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_norms import machine, write_section  # noqa: E402


def build(model: str, norm: str, data: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    import dyt
    from dyt.config import setup
    setup()
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}", f"norm={norm}", f"data={data}", *overrides])
    return dyt.build_model(cfg), cfg.data.num_classes, cfg.data.image_size


def train_step(model, images, labels, compiled: bool, amp: str | None):
    """A closure doing one training step (forward, cross-entropy, backward, AdamW) of model."""
    device = images.device
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    fn = torch.compile(model) if compiled else model
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(fn(images), labels)
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
    ap.add_argument("--models", nargs="+", default=["vit_s", "convnext_t"])
    ap.add_argument("--norms", nargs="+", default=["layernorm", "dyt"])
    ap.add_argument("--data", default="imagenet", help="data config: fixes image size and class count")
    ap.add_argument("--batch", type=int, default=None, help="default 8 on CPU, 128 on GPU")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (median); default 5 CPU, 20 GPU")
    ap.add_argument("--amp", choices=["bf16", "fp16"], default=None)
    ap.add_argument("--modes", nargs="+", default=["eager", "compile"], choices=["eager", "compile"])
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. data.image_size=160")
    args = ap.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    batch, steps = args.batch or (128 if cuda else 8), args.steps or (20 if cuda else 5)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    desc_start = machine(device)
    rows = []
    for model_name in args.models:
        for mode in args.modes:
            steps_by_norm, first = {}, {}
            for norm in args.norms:
                torch.manual_seed(0)
                model, classes, size = build(model_name, norm, args.data, args.overrides)
                images = torch.randn(batch, 3, size, size, device=device)
                labels = torch.randint(0, classes, (batch,), device=device)
                steps_by_norm[norm] = train_step(model.to(device), images, labels, mode == "compile", args.amp)
                first[norm] = timed(steps_by_norm[norm])  # includes compilation
                timed(steps_by_norm[norm])  # second warmup step (allocator, autotuning)
            times = {norm: [] for norm in args.norms}
            for _ in range(steps):  # alternate the norms step by step: background load hits both alike
                for norm, step in steps_by_norm.items():
                    times[norm].append(timed(step))
            for norm in args.norms:
                sec = statistics.median(times[norm])
                rows.append({"model": model_name, "norm": norm, "mode": mode, "ms": sec * 1e3,
                             "ips": batch / sec, "first_s": first[norm]})
                print(f"{model_name:12} {norm:10} {mode:8} {sec * 1e3:9.1f} ms/step {batch / sec:8.1f} img/s "
                      f"(first step {first[norm]:.1f} s)", flush=True)
            del steps_by_norm
    for r in rows:
        ln = next((q for q in rows if q["model"] == r["model"] and q["mode"] == r["mode"]
                   and q["norm"] == "layernorm"), None)
        r["vs_ln"] = r["ips"] / ln["ips"] if ln else float("nan")
    table = ["| model | norm | mode | ms / step | images/s | throughput vs LN | first step s |",
             "|---|---|---|---:|---:|---:|---:|"]
    table += [f"| {r['model']} | {r['norm']} | {r['mode']} | {r['ms']:.1f} | {r['ips']:.1f} | {r['vs_ln']:.2f}x | "
              f"{r['first_s']:.1f} |" for r in rows]
    md = "\n".join(table)
    print(md)
    if args.no_write:
        return
    cmd = "python scripts/bench_models.py " + " ".join(sys.argv[1:])
    body = (f"### Training step on {device.type}\n\nMachine: {desc_start} at start. Command: `{cmd.strip()}`.\n"
            f"Batch {batch}, data={args.data}, amp={args.amp or 'off (fp32)'}, median of {steps} steps after 2 "
            f"warmup steps, LN and DyT steps alternating; one step = forward, cross-entropy, backward, AdamW. DyT uses `impl=auto` (the fused "
            f"kernels).\n\n{md}\n")
    write_section(f"bench_models_{device.type}", body)


if __name__ == "__main__":
    main()
