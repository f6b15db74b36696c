"""The README's promise for the default job, measured: `python train.py` end to end (imports, data, 600 steps,
evaluations, checkpoint) with its wall time and test accuracy. Results go to docs/BENCHMARKS.md (section
``default_job``); the test suite checks the accuracy, never the time.

    python scripts/bench/default_job.py                  # 3 runs of the default job, median time
    python scripts/bench/default_job.py --repeats 1 --no-write trainer.max_steps=20   # any train.py overrides
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from dyt.logging import read_summary  # noqa: E402
from record import write_section  # noqa: E402 - scripts/bench/record.py


def run_once(overrides: list[str]) -> dict:
    """One `python train.py` in a fresh run directory: process wall time, the loop's own time, the summary."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        out = subprocess.run([sys.executable, str(ROOT / "train.py"), *overrides, f"hydra.run.dir={tmp}/run"],
                             cwd=tmp, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if out.returncode != 0:
            sys.exit(f"train.py failed ({out.returncode}):\n{out.stderr[-2000:]}")
        summary = read_summary(Path(tmp) / "run")
    return {"wall": wall, "loop": summary["wall_time_s"], "steps": summary["step"], "top1": summary["val/top1"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    p.add_argument("overrides", nargs="*", help="train.py overrides (none: the default job exactly)")
    args = p.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    runs = [run_once(args.overrides) for _ in range(args.repeats)]
    command = " ".join(["python train.py", *args.overrides])
    lines = [f"## The default job (`{command}`)", "",
             f"{os.cpu_count()} CPU cores, torch {torch.__version__} ({torch.get_num_threads()} threads), 1-min load "
             f"average {load:.1f} at start; {args.repeats} run(s), measured by `scripts/bench/default_job.py`.", "",
             "| run | process wall time (s) | training loop (s) | steps | steps/s | val/top1 |", "|---|---|---|---|---|---|"]
    for i, r in enumerate(runs, 1):
        lines.append(f"| {i} | {r['wall']:.1f} | {r['loop']:.1f} | {r['steps']} | {r['steps'] / r['loop']:.1f} | "
                     f"{r['top1']:.2f} |")
    lines += ["", f"Median process wall time: **{statistics.median(r['wall'] for r in runs):.1f} s** "
              f"(the README says about a minute)."]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("default_job", body)


if __name__ == "__main__":
    main()
