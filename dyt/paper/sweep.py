"""A sweep over norms side by side: runs that differ only by their norm share one row per metric, a column per
norm, with the paper's values of their cell beside them (`paper_by_norm`); and a plot of their curves, one colour
per norm. What `scripts/report.py --sweep` prints and writes."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Optional

from dyt.paper.catalog import paper_by_norm
from dyt.paper.match import MISSING, get_path
from dyt.paper.plots import pyplot
from dyt.paper.report import COMPLETED, failures_text, fmt
from dyt.paper.runs import TRAIN_LOSS, Run
from dyt.paper.schema import Value

EVAL_METRICS = ("val/fid", "val_ema/fid", "val/is", "val_ema/is")  # eval.py's (eval.json), beside the bests
NORM_ORDER = ("layernorm", "rmsnorm", "dyt")  # columns as the paper reads: baseline -> DyT
DEFAULT_METRIC = "val/loss"  # the summary metric of a run that names none


def norm_of(run: Run) -> str:
    """The run's norm; for a point that never started (no config.yaml), the norm part of its name
    (``<model>-<norm>-<data>-s<seed>``)."""
    norm = get_path(run.config, "norm.name")
    if norm is not MISSING:
        return str(norm)
    parts = run.name.split("-")
    return parts[1] if len(parts) >= 4 else "?"


def cell_name(run: Run) -> str:
    """What a run shares with its LN / DyT counterparts: its name without the norm."""
    return run.name.replace(f"-{norm_of(run)}-", "-*-", 1)


def metrics_of(runs: list[Run]) -> list[str]:
    """The summary metric, its EMA twin when any run kept an EMA (the paper's recipe reports both), and eval.py's."""
    metric = next((r.summary["metric"] for r in runs if r.summary.get("metric")), DEFAULT_METRIC)  # a failed
    ema = metric.replace("val/", "val_ema/", 1)  # point has none: the metric is its cell's
    has_ema = ema != metric and any(f"best/{ema}" in r.summary or ema in r.summary for r in runs)
    return [metric] + ([ema] if has_ema else []) + [m for m in EVAL_METRICS if any(m in r.summary for r in runs)]


def run_text(run: Run, metric: str) -> str:
    """A run's best value of `metric` (its last one for runs recorded without bests), or how it ended."""
    if run.status != COMPLETED:
        return failures_text([run])
    v = run.value(metric)
    return "" if v is None else fmt(v)


def paper_text(values: Optional[dict[str, Value]]) -> str:
    return ", ".join(f"{norm} {v}" for norm, v in values.items()) if values else "-"


def sweep_markdown(runs: list[Run]) -> str:
    """One row per (cell, metric): `best <metric>` of each norm's run and the paper's values of that metric."""
    groups: dict[str, dict[str, Run]] = defaultdict(dict)
    for r in runs:
        groups[cell_name(r)][norm_of(r)] = r
    norms = _ordered_norms(runs)  # baselines first
    lines = ["| run (norm = *) | metric | " + " | ".join(norms) + " | paper |", "|---" * (len(norms) + 3) + "|"]
    for name, by_norm in sorted(groups.items()):
        group = list(by_norm.values())
        paper = paper_by_norm(group[0].config)
        for metric in metrics_of(group):
            ref = next((values for m, values in paper.items() if metric in m.names), None)  # the EMA twin's too
            cells = [run_text(by_norm[n], metric) if n in by_norm else "" for n in norms]
            label = metric if metric in EVAL_METRICS else f"best {metric}"
            lines.append(f"| {name} | {label} | " + " | ".join(cells) + f" | {paper_text(ref)} |")
    return "\n".join(lines)


def plot_sweep(runs: list[Run], path: Path, source: str = "") -> Path:
    """Training loss (left) and each cell's summary metric (right) over steps, steps shared: a colour per cell
    (what the runs share but their norm), a line style per norm (solid = the first norm, the baseline)."""
    plt = pyplot()
    fig, (train_ax, val_ax) = plt.subplots(1, 2, figsize=(11, 4.5 + 0.15 * len(runs)), sharex=True)
    cells, norms = sorted({cell_name(r) for r in runs}), _ordered_norms(runs)
    styles = ["-", "--", ":", "-."]
    metric_of = {c: metrics_of([r for r in runs if cell_name(r) == c])[0] for c in cells}  # each cell's summary metric
    for r in runs:
        colour = f"C{cells.index(cell_name(r)) % 10}"
        style = styles[norms.index(norm_of(r)) % len(styles)]
        metric = metric_of[cell_name(r)]
        train, val = r.load_curve(TRAIN_LOSS), r.load_curve(metric)
        label = r.name if r.status == COMPLETED else f"{r.name} ({r.status})"
        if train:
            train_ax.plot(*zip(*train), color=colour, ls=style, alpha=0.85, label=label)
        if val:  # a single evaluation is a marker at its step, on the training curve's step axis
            val_ax.plot(*zip(*val), color=colour, ls=style, marker="o", ms=4, alpha=0.85, label=label)
    val_ax.set_ylabel(", ".join(sorted(set(metric_of.values()))))
    train_ax.set(xlabel="step", ylabel=TRAIN_LOSS, yscale="log", title="training loss")
    val_ax.set(xlabel="step", title="validation")
    legend: dict[str, object] = {}  # every run once, from whichever panel drew it (a run may have no train curve)
    for ax in (train_ax, val_ax):
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    fig.suptitle((f"{source}: " if source else "") + f"{len(runs)} runs, {len(cells)} cell(s) x norms "
                 f"{', '.join(norms)} (colour = cell, line style = norm)", fontsize=10)
    fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=2, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.035 * ((len(legend) + 1) // 2), 1, 0.95))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _ordered_norms(runs: list[Run]) -> list[str]:
    found = list(dict.fromkeys(norm_of(r) for r in runs))
    return sorted(found, key=lambda n: NORM_ORDER.index(n) if n in NORM_ORDER else len(NORM_ORDER))
