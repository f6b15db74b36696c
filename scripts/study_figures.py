"""The follow-up studies' figures, from a sweep directory of finished runs (their summary.json and config.yaml).

    python scripts/study_figures.py norm-optim multirun/mini_norm_optim       # arXiv 2604.01563
    python scripts/study_figures.py token-budget multirun/mini_token_budget   # arXiv 2604.23434

norm-optim: each norm's final val/loss minus RMSNorm's under the same optimizer, bars grouped by norm, one bar per
optimizer (experiment=norm_optim_grid / mini_norm_optim). token-budget: DyT's final val/loss minus LayerNorm's at
the same model and budget, against tokens per parameter (steps x batch x seq_len / the LayerNorm run's parameters,
embeddings included), one line per model size (experiment=token_budget / mini_token_budget). Losses of several
seeds are averaged. Each prints its table (markdown) and writes <sweep>/figures/<name>.png unless --out.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from statistics import mean

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from dyt.errors import ConfigError  # noqa: E402
from dyt.rundir import RunDir, read_config, read_summary  # noqa: E402

METRIC = "val/loss"


def finished_runs(sweep: Path) -> list[tuple[dict, dict]]:
    """(config, summary) of every completed run under `sweep` that has a final val/loss."""
    runs = []
    for run in RunDir(sweep).find_runs():
        summary, cfg = read_summary(run.path), read_config(run.path)
        if cfg and summary and summary.get("status") == "completed" and METRIC in summary:
            runs.append((cfg, summary))
    if not runs:
        raise ConfigError(f"no completed run with a {METRIC} under {sweep}")
    return runs


def norm_optim_gaps(runs) -> dict[str, dict[str, float]]:
    """{optimizer: {norm: mean val/loss - RMSNorm's mean val/loss under that optimizer}}."""
    losses = defaultdict(list)
    for cfg, summary in runs:
        losses[cfg["optim"]["name"], cfg["norm"]["name"]].append(summary[METRIC])
    gaps = defaultdict(dict)
    for (optim, norm), values in sorted(losses.items()):
        if norm != "rmsnorm" and (optim, "rmsnorm") in losses:
            gaps[optim][norm] = mean(values) - mean(losses[optim, "rmsnorm"])
    if not gaps:
        raise ConfigError("no optimizer has both an RMSNorm run and another norm's run to compare")
    return dict(gaps)


def token_budget_gaps(runs) -> dict[str, list[tuple[float, float]]]:
    """{model size: [(tokens per parameter, DyT mean val/loss - LayerNorm's), ...] by budget}."""
    cells = defaultdict(lambda: defaultdict(list))  # (size, budget) -> norm -> [(loss, params)]
    for cfg, summary in runs:
        size = json.dumps(cfg["model"], sort_keys=True)
        tokens = summary["max_steps"] * cfg["trainer"]["batch_size"] * cfg["data"]["seq_len"]
        cells[size, tokens][cfg["norm"]["name"]].append((summary[METRIC], summary["params"]))
    lines = defaultdict(list)
    for (size, tokens), by_norm in cells.items():
        if "layernorm" in by_norm and "dyt" in by_norm:
            ln_params = by_norm["layernorm"][0][1]
            label = f"{json.loads(size)['name']} ({ln_params / 1e6:.2f}M params)"
            gap = mean(v for v, _ in by_norm["dyt"]) - mean(v for v, _ in by_norm["layernorm"])
            lines[label].append((tokens / ln_params, gap))
    if not lines:
        raise ConfigError("no (model, budget) cell has both a LayerNorm and a DyT run")
    return {label: sorted(points) for label, points in sorted(lines.items())}


def norm_optim(args) -> Path:
    gaps = norm_optim_gaps(finished_runs(Path(args.sweep)))
    norms = sorted({n for by_norm in gaps.values() for n in by_norm})
    print("| norm | " + " | ".join(f"{o}: {METRIC} - RMSNorm" for o in gaps) + " |")
    print("|---|" + "---|" * len(gaps))
    for n in norms:
        print(f"| {n} | " + " | ".join(f"{gaps[o][n]:+.4f}" if n in gaps[o] else "-" for o in gaps) + " |")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(norms), 3.6))
    width = 0.8 / len(gaps)
    for i, (optim, by_norm) in enumerate(gaps.items()):
        xs = [j + (i - (len(gaps) - 1) / 2) * width for j, n in enumerate(norms) if n in by_norm]
        ax.bar(xs, [by_norm[n] for n in norms if n in by_norm], width, label=optim)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(norms)), norms)
    ax.set_ylabel(f"{METRIC} gap to RMSNorm (nats)")
    ax.set_title("norm x optimizer: gap to RMSNorm per optimizer")
    ax.legend()
    return save(fig, args, "norm_optim")


def token_budget(args) -> Path:
    lines = token_budget_gaps(finished_runs(Path(args.sweep)))
    print(f"| model | tokens / parameter | DyT - LayerNorm {METRIC} |\n|---|---|---|")
    for label, points in lines.items():
        for tpp, gap in points:
            print(f"| {label} | {tpp:.3g} | {gap:+.4f} |")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for label, points in lines.items():
        ax.plot(*zip(*points), marker="o", label=label)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("training tokens per parameter")
    ax.set_ylabel(f"{METRIC}: DyT - LayerNorm (nats)")
    ax.set_title("token budget: below 0 DyT is better")
    ax.legend(fontsize=8)
    return save(fig, args, "token_budget")


def save(fig, args, name: str) -> Path:
    out = Path(args.out) if args.out else Path(args.sweep) / "figures" / f"{name}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name, make, help_ in (("norm-optim", norm_optim, "loss gap to RMSNorm per optimizer (arXiv 2604.01563)"),
                              ("token-budget", token_budget, "DyT - LN loss vs tokens per parameter (arXiv 2604.23434)")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("sweep", help="the sweep directory (multirun/<sweep_name>)")
        s.add_argument("--out", default=None, help="the figure's path (default <sweep>/figures/<name>.png)")
        s.set_defaults(make=make)
    args = p.parse_args(argv)
    import matplotlib  # the Agg backend, chosen before pyplot loads
    matplotlib.use("Agg")
    try:
        out = args.make(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
