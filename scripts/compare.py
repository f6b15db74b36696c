"""Compare runs side by side (LN vs RMSNorm vs DyT) from their run records, next to the paper's numbers.

    python scripts/compare.py multirun/sweep                     # every run under a folder
    python scripts/compare.py runs/a runs/b --out docs/compare    # chosen runs; writes compare.md + compare.png

Reads summary.json and metrics.jsonl (the source of truth; wandb only mirrors them). Rows are runs grouped by
what they share except the norm, one row per metric: the best of the summary metric and, for runs that keep an
EMA, the best of the EMA's (the official trainer reports both); columns are the norms. The plot shows training
loss and the summary metric over steps, one colour per norm.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dyt.logging import read_jsonl  # noqa: E402
from dyt.paper import compare_reference  # noqa: E402

# The paper's values, (table, model name) -> (metric, {norm: value}); one source of paper numbers: dyt/paper/.
PAPER = compare_reference()
EVAL_METRICS = ("val/fid", "val_ema/fid", "val/is", "val_ema/is")  # eval.py's (eval.json), beside the bests
NORM_ORDER = ["layernorm", "rmsnorm", "dyt"]  # columns as the paper reads: baseline -> DyT


def find_runs(paths: list[Path]) -> list[Path]:
    runs = []
    for p in paths:
        runs += [s.parent for s in sorted(p.rglob("summary.json"))] if p.is_dir() else []
    return runs


def load(run: Path) -> dict:
    import yaml
    cfg = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").exists() else {}
    summary = json.loads((run / "summary.json").read_text())
    if (run / "eval.json").exists():  # FID / IS of a DiT run (eval.py --fid)
        ev = json.loads((run / "eval.json").read_text())
        summary.update({k: ev[k] for k in EVAL_METRICS if k in ev})
    return {"dir": run, "summary": summary, "cfg": cfg, "events": read_jsonl(run / "metrics.jsonl")}


def cell(r: dict) -> str:
    """What a run shares with its LN/DyT counterparts: the run name without the norm."""
    c = r["cfg"]
    return r["dir"].name.replace(f"-{c.get('norm', {}).get('name', '')}-", "-*-", 1)


def metrics_of(runs: list[dict]) -> list[str]:
    """The summary metric, and its EMA twin when any run kept an EMA (the paper's recipe reports both)."""
    metric = runs[0]["summary"].get("metric", "val/loss")
    ema = metric.replace("val/", "val_ema/", 1)
    extra = [m for m in EVAL_METRICS if any(m in r["summary"] for r in runs)]
    return [metric] + ([ema] if any(f"best/{ema}" in r["summary"] or ema in r["summary"] for r in runs) else []) + extra


def value(s: dict, metric: str) -> str:
    """A run's best value of `metric` (its last one for runs recorded without bests), or how it ended."""
    if s["status"] != "completed":
        return f"{s['status']} @{s['step']}"
    v = s.get(f"best/{metric}", s.get(metric))
    if not isinstance(v, (int, float)):
        return ""
    return f"{v:.2f}" if abs(v) >= 1 else f"{v:.4f}"  # losses below 1 need more digits than accuracies


def table(runs: list[dict]) -> str:
    groups, norms = defaultdict(dict), []
    for r in runs:
        n = r["summary"].get("norm", "?")
        groups[cell(r)][n] = r
        norms += [n] if n not in norms else []
    norms.sort(key=lambda n: NORM_ORDER.index(n) if n in NORM_ORDER else len(NORM_ORDER))  # baselines first
    lines = ["| run (norm = *) | metric | " + " | ".join(norms) + " | paper |", "|---" * (len(norms) + 3) + "|"]
    for name, by_norm in sorted(groups.items()):
        c = next(iter(by_norm.values()))["cfg"]
        paper_metric, paper = PAPER.get((c.get("table"), c.get("model", {}).get("name")), (None, {}))
        for metric in metrics_of(list(by_norm.values())):
            vals = [value(by_norm[n]["summary"], metric) if n in by_norm else "" for n in norms]
            same = paper_metric in (metric, metric.replace("val_ema/", "val/", 1))
            ref = ", ".join(f"{k} {v}" for k, v in paper.items()) if same else "-"
            label = metric if metric in EVAL_METRICS else f"best {metric}"
            lines.append(f"| {name} | {label} | " + " | ".join(vals) + f" | {ref} |")
    return "\n".join(lines)


def plot(runs: list[dict], out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.5 + 0.15 * len(runs)))
    colours = {}
    for r in runs:
        norm = r["summary"].get("norm", "?")
        colour = colours.setdefault(norm, f"C{len(colours)}")
        metric = r["summary"].get("metric", "val/loss")
        tr = [(e["step"], e["train/loss"]) for e in r["events"] if e["split"] == "train" and isinstance(e.get("train/loss"), float)]
        va = [(e["step"], e[metric]) for e in r["events"] if e["split"] == "val" and metric in e]
        label = f"{r['dir'].name}"
        if tr:
            a.plot(*zip(*tr), color=colour, alpha=0.8, label=label)
        if va:
            b.plot(*zip(*va), color=colour, marker="o", alpha=0.8, label=label)
        b.set_ylabel(metric)
    a.set(xlabel="step", ylabel="train/loss", yscale="log", title="training loss")
    b.set(xlabel="step", title="validation")
    handles, labels = a.get_legend_handles_labels() or b.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.035 * ((len(labels) + 1) // 2), 1, 1))
    fig.savefig(out, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", type=Path, help="run directories or folders holding them")
    p.add_argument("--out", type=Path, default=None, help="write <out>.md and <out>.png")
    args = p.parse_args(argv)
    runs = [load(r) for r in find_runs(args.paths)]
    if not runs:
        print(f"error: no run (summary.json) under {', '.join(map(str, args.paths))}", file=sys.stderr)
        return 2
    md = table(runs)
    print(md)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(md + "\n")
        plot(runs, args.out.with_suffix(".png"))
        print(f"wrote {args.out.with_suffix('.md')} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
