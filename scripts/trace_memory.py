"""The planner against a traced training step: per-GPU peak memory of scripts/plan.py and of dyt.memtrace.

    python scripts/trace_memory.py experiment=table4_7b launcher=slurm_64x8 [--parallel ddp fsdp hsdp]
        [--ac none selective full] [--accum 1 2] [--markdown] [--save traced.json | --load traced.json]

Each combination traces one optimizer step (forward, backward, clip, AdamW) of the composed config at its real world
size, on this CPU, with fake tensors and a fake process group (dyt/memtrace.py; a 7B step takes ~40 s, 70B longer),
and prints the traced peak beside the planner's total. --save keeps the traces; --load prints the table again from
them with the current planner (no tracing). The table in docs/PLAN.md comes from this script.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dyt.errors import ConfigError  # noqa: E402
from dyt.plan import GIB, compose_with_launcher, plan  # noqa: E402


def combinations(args) -> list[tuple[str, str, int]]:
    return [(par, ac, accum) for accum in args.accum for par in args.parallel for ac in args.ac]


def compare(overrides: list[str], par: str, ac: str, accum: int, traced: dict | None) -> dict:
    """One row: the planner's total for this setting, and the trace's peak (traced now unless given)."""
    argv = [*overrides, f"trainer.parallel={par}", f"trainer.activation_checkpointing={ac}",
            f"trainer.grad_accum={accum}"]
    cfg, nodes, gpus = compose_with_launcher(argv)
    p = plan(cfg, nodes, gpus)
    row = next(r for r in p["rows"] if (r["strategy"], r["ac"]) == (par, ac))
    if traced is None:
        from dyt.memtrace import trace_step  # torch's distributed tools: imported only to trace
        traced = trace_step(cfg, nodes, gpus)
    return {"model": p["model"], "world": p["world"], "parallel": par, "ac": ac, "grad_accum": accum,
            "micro_batch": p["micro_batch"], "plan": row["total"], "traced": traced}


def table(rows: list[dict], markdown: bool) -> str:
    unit, name = (GIB, "GiB") if max(r["traced"]["peak"] for r in rows) >= GIB else (2**20, "MiB")
    head = ("model", "GPUs", "parallel", "AC", "accum", "micro", f"traced {name}", f"plan {name}", "plan/traced")
    body = [(r["model"], str(r["world"]), r["parallel"].upper(), r["ac"], str(r["grad_accum"]), str(r["micro_batch"]),
             f"{r['traced']['peak'] / unit:.1f}", f"{r['plan'] / unit:.1f}", f"{r['plan'] / r['traced']['peak']:.2f}")
            for r in rows]
    if markdown:
        return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * 6,
                          *("| " + " | ".join(b) + " |" for b in body)])
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    return "\n".join("  ".join(x.rjust(w) for x, w in zip(r, widths)) for r in (head, *body))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, as for scripts/plan.py")
    ap.add_argument("--parallel", nargs="+", default=["ddp", "fsdp", "hsdp"])
    ap.add_argument("--ac", nargs="+", default=["none", "selective", "full"])
    ap.add_argument("--accum", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--save", type=Path, help="write the traces (JSON) here")
    ap.add_argument("--load", type=Path, help="read traces saved by --save instead of tracing")
    args = ap.parse_args(argv)
    saved = json.loads(args.load.read_text()) if args.load else {}
    rows = []
    try:
        for par, ac, accum in combinations(args):
            key = f"{par}/{ac}/{accum}"
            if args.load and key not in saved:
                continue
            rows.append(compare(args.overrides, par, ac, accum, saved.get(key)))
            saved[key] = rows[-1]["traced"]
            print(table(rows[-1:], False).splitlines()[-1], file=sys.stderr, flush=True)  # progress
            if args.save:
                args.save.write_text(json.dumps(saved, indent=1))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table(rows, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
