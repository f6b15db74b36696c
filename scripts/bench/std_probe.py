"""Cost of the Fig. 8 logging (`std/<layer>` of each DyT layer's input) on a logged training step.

The trainer opens `dyt.analysis.InputStdProbe` only on log steps (every `trainer.log_every`). This times one
training step (forward, cross-entropy, backward, AdamW) of the default job's model with and without the probe,
alternating in one process, and prints the median of each and their ratio:

    python scripts/bench/std_probe.py [--steps 60] [--batch 64] [overrides ...]   # e.g. model=vit_s data=cifar10
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from dyt import build_model  # noqa: E402
from dyt.analysis import InputStdProbe  # noqa: E402
from dyt.families import compose  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("overrides", nargs="*", help="Hydra overrides of configs/train.yaml (default: the default job)")
    args = p.parse_args(argv)
    cfg = compose(args.overrides)
    model = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters())
    d = cfg.data
    x, y = torch.randn(args.batch, d.in_chans, d.image_size, d.image_size), torch.randint(0, d.num_classes, (args.batch,))

    def step(probe: bool) -> float:
        t = time.perf_counter()
        with InputStdProbe(model, probe) as pr:
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
        pr.metrics()
        return time.perf_counter() - t

    times = {False: [], True: []}
    for _ in range(args.steps):
        for probe in (False, True):
            times[probe].append(step(probe))
    med = {k: sorted(v)[len(v) // 2] * 1e3 for k, v in times.items()}
    print(f"{cfg.model.name} + {cfg.norm.name}, batch {args.batch}, {torch.get_num_threads()} threads: step "
          f"{med[False]:.2f} ms without the probe, {med[True]:.2f} ms with it ({med[True] / med[False]:.3f}x, "
          f"median of {args.steps} alternating steps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
