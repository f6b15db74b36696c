"""Will a cell fit? Parameters, tokens or images per step, and memory per GPU, without allocating anything.

    python scripts/plan.py experiment=table4_70b launcher=slurm_128x8 [overrides] [--gpu-mem 80] [--mfu 0.5]
    python scripts/plan.py experiment=table1_vit_l launcher.nodes=4 launcher.nproc=8 --markdown

Any Hydra override of train.py applies (norm=, trainer.grad_accum=, data.seq_len=, ...). launcher.nodes and
launcher.gpus_per_node (or launcher.nproc) give the job's size; without them, the config's launcher section
(launcher=slurm_64x8: 64 x 8; the default: 1 x 1). Rows: DDP / HSDP / FSDP x activation checkpointing
none / selective / full; the formulas and their sources are in dyt/plan.py. Language models with a step count also
get a cost estimate: GPU-hours on A100s and H100s at an assumed model FLOPs utilisation.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dyt.errors import ConfigError  # noqa: E402
from dyt.plan import MFU, compose_with_launcher, format_plan, plan  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("overrides", nargs="*",
                    help="Hydra overrides, as for train.py (+ launcher.nodes=, launcher.gpus_per_node=)")
    ap.add_argument("--gpu-mem", type=float, default=80.0, help="GiB of memory per GPU (default 80)")
    ap.add_argument("--margin", type=float, default=0.1, help="fraction kept for the CUDA context and fragmentation")
    ap.add_argument("--mfu", type=float, default=MFU,
                    help=f"model FLOPs utilisation of the cost estimate (default {MFU}: fms-fsdp's published A100 "
                         "throughputs; see dyt/plan.py)")
    ap.add_argument("--markdown", action="store_true", help="print the table in Markdown")
    ap.add_argument("--json", action="store_true", help="print the plan as JSON (bytes)")
    args = ap.parse_args(argv)
    try:
        cfg, nodes, gpus = compose_with_launcher(args.overrides)
        p = plan(cfg, nodes, gpus, args.gpu_mem, args.margin, mfu=args.mfu)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(p, indent=1) if args.json else format_plan(p, markdown=args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
