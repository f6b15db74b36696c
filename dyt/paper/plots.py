"""PNG figures of a TableReport (matplotlib, Agg): paper-vs-ours bars per row, training-loss curves per row (one
line per run, one colour per column: LN vs DyT), and for alpha0 grids a heatmap per group with the best marked."""
from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np

from dyt.paper.report import CellResult, TableReport, mean_value, shown_metrics

PAPER_COLOUR = "0.7"


def pyplot():
    """matplotlib.pyplot on the Agg backend, imported on first use: the Markdown-only paths never pay for it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _subplots(n: int, width: float = 4.4, height: float = 3.3):
    plt = pyplot()
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return plt, fig, list(axes.flat)


def plot_table(tr: TableReport, out: Path) -> list[Path]:
    """The table's PNGs under `out`: <id>.png (bars or heatmaps) and, when runs logged losses, <id>_curves.png."""
    t = tr.table
    if t.grid:
        made = [plot_grid(tr, out / f"{t.id}.png")]
    else:
        made = [plot_bars(tr, out / f"{t.id}.png"), plot_curves(tr, out / f"{t.id}_curves.png")]
    return [p for p in made if p]


def plot_bars(tr: TableReport, path: Path) -> Path | None:
    """One panel per (row, metric). With a reference column (LN, RMSNorm, BatchNorm...), each other column's
    difference to it, the paper's next to ours (our Fashion-MNIST numbers and the paper's ImageNet ones are never
    on one absolute axis); without one, absolute values from zero. Every bar is labelled with its value."""
    t = tr.table
    panels = [(row, m) for row in t.rows for m in t.metrics_of(row)
              if any(isinstance(c.paper.get(m.name), (int, float)) for c in row.cells.values())
              or any(r.row is row and r.runs for r in tr.cells)]
    if not panels:
        return None
    plt, fig, axes = _subplots(len(panels))
    for ax, (row, m) in zip(axes, panels):
        cols = [c for c in t.columns if c in row.cells]
        ref = t.reference if t.reference in cols else None
        shown = [c for c in cols if c != ref] if ref else cols
        series = [("paper", PAPER_COLOUR, [row.cells[c].paper.get(m.name) for c in cols])]
        series += [(f"ours {k}", f"C{i}", [_ours(tr.result(row.label, c), k) for c in cols])
                   for i, k in enumerate(shown_metrics(tr, m))]
        if ref:  # differences to the reference column of the same source
            i_ref = cols.index(ref)
            series = [(name, colour, [_delta(vals[cols.index(c)], vals[i_ref]) for c in shown])
                      for name, colour, vals in series]
        width = 0.8 / len(series)
        for j, (name, colour, vals) in enumerate(series):
            for i, v in enumerate(vals):
                x = i + (j - (len(series) - 1) / 2) * width
                if isinstance(v, (int, float)):
                    bar = ax.bar(x, v, width, color=colour, label=name)
                    ax.bar_label(bar, [f"{v:+.3g}" if ref else f"{v:.3g}"], fontsize=6, padding=1)
                elif v:  # "diverged" (the paper's mark, or how all our runs of the cell ended), "no baseline"
                    ax.text(x, 0.5, v, rotation=90, ha="center", va="center", fontsize=7, color=colour if j else "k",
                            transform=ax.get_xaxis_transform())
        ax.axhline(0, color="k", lw=0.6)  # zero always on the axis: bar lengths compare
        ax.margins(y=0.15)
        if not any(isinstance(v, (int, float)) and v for _, _, vals in series for v in vals):
            ax.set_ylim(-1, 1)  # only zero differences: a readable axis around them
        ax.set_xlim(-0.6, len(shown) - 0.4)  # room for a text-only (diverged) first column
        # long column names (Table 2's "DyT (fine-tuned as released: LayerNorm)") wrap instead of overlapping
        width_chars = max(12, 44 // len(shown))
        ax.set_xticks(range(len(shown)), [textwrap.fill(t.columns[c] + (f" - {t.columns[ref]}" if ref else ""),
                                                        width_chars) for c in shown], fontsize=8)
        ax.set_title(f"{row.label}" + (f" (paper: {row.paper_ref})" if row.paper_ref else ""), fontsize=9)
        ax.set_ylabel(f"{m.label}, difference" if ref else m.label, fontsize=8)
        by_label = dict(zip(*reversed(ax.get_legend_handles_labels())))  # one entry per series
        if by_label:
            ax.legend(by_label.values(), by_label.keys(), fontsize=6, loc="best")
    title = f"{t.id}: {t.title}" + (f" (difference to {t.columns[t.reference]}; ours and the paper's each on "
                                    "its own data)" if t.reference in t.columns else "")
    fig.suptitle(textwrap.fill(title, int(fig.get_figwidth() * 14)), fontsize=9)  # ~14 characters an inch at 9 pt
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _delta(v, ref):
    """v - ref when both are numbers; otherwise what to write instead (v's own mark, or that the baseline is missing)."""
    if isinstance(v, (int, float)) and isinstance(ref, (int, float)):
        return round(v - ref, 9)  # 84.4 - 84.4 is 0, not 1e-14
    return "no baseline" if isinstance(v, (int, float)) else v


def _ours(res: CellResult, key: str):
    """Our mean, or how our runs ended when none completed (no text when there is no run)."""
    v = res.ours(key)
    return v if v is not None else (res.runs[0].status if res.runs else None)


def plot_curves(tr: TableReport, path: Path) -> Path | None:
    """Training loss over steps, one panel per row, one colour per column (every seed its own line)."""
    t = tr.table
    panels = []
    for row in t.rows:
        lines = [(c, r, curve) for c in t.columns for res in tr.cells if res.row is row and res.column == c
                 for r in res.runs if (curve := r.load_curve())]
        if lines:
            panels.append((row, lines))
    if not panels:
        return None
    plt, fig, axes = _subplots(len(panels))
    for ax, (row, lines) in zip(axes, panels):
        labelled = set()
        for col, run, curve in lines:
            colour = f"C{list(t.columns).index(col)}"
            ax.plot(*zip(*curve), color=colour, alpha=0.8, lw=1,
                    label=None if col in labelled else t.columns[col])
            labelled.add(col)
        ax.set(xlabel="step", ylabel="train/loss", title=row.label)
        ax.legend(fontsize=7)
    fig.suptitle(f"{t.id}: training loss", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_grid(tr: TableReport, path: Path) -> Path | None:
    """A heatmap per group of the metric over (attention, other) alpha0: ours' best boxed, the paper's ringed.
    A grid that ties the two (every point on the diagonal, as the mini-suite's) is one curve per group instead."""
    metric, axes_names = tr.table.metrics[0], tr.table.grid.axes
    groups = [g for g in tr.groups if g.points]
    if not groups:
        return None
    if all(a == f for g in groups for (a, f) in g.points):
        return plot_alpha_curves(tr, groups, path)
    plt, fig, axes = _subplots(len(groups))
    for ax, g in zip(axes, groups):
        rows = sorted({p[0] for p in g.points}, key=lambda v: (v is not None, v or 0))
        cols = sorted({p[1] for p in g.points}, key=lambda v: (v is not None, v or 0))
        grid = np.full((len(rows), len(cols)), np.nan)
        for (a, f) in g.points:
            v = g.value((a, f), metric.name)
            grid[rows.index(a), cols.index(f)] = np.nan if v is None else v
        im = ax.imshow(grid, cmap="viridis" if metric.higher_better else "viridis_r", aspect="auto")
        fig.colorbar(im, ax=ax, shrink=0.8, label=metric.name)
        for i in range(len(rows)):
            for j in range(len(cols)):
                text = "-" if (rows[i], cols[j]) not in g.points else (
                    "div" if np.isnan(grid[i, j]) else f"{grid[i, j]:.3g}")
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color="k" if np.isnan(grid[i, j]) else "w")
        best = g.best(metric)
        if best is not None:
            ax.add_patch(plt.Rectangle((cols.index(best[1]) - 0.5, rows.index(best[0]) - 0.5), 1, 1, fill=False,
                                       ec="red", lw=2.5, label="ours best"))
        paper = g.cell.best_alpha if g.cell else None
        if paper and paper[0] in rows and paper[1] in cols:
            ax.plot(cols.index(paper[1]), rows.index(paper[0]), "o", mfc="none", mec="w", ms=18, mew=2,
                    label="paper best")
        ax.set_xticks(range(len(cols)), [str(c) for c in cols], fontsize=7)
        ax.set_yticks(range(len(rows)), [str(r) for r in rows], fontsize=7)
        base = mean_value(g.baseline, metric.name)[0]
        ax.set(xlabel=axes_names[1], ylabel=axes_names[0], title=f"{tr.table.grid.label} {g.label}"
               + (f" ({tr.table.grid.baseline.get('norm.name', 'baseline')} {base:.3g})" if base is not None else ""))
        ax.legend(fontsize=6, loc="upper right")
    fig.suptitle(f"{tr.table.id}: {metric.name} over alpha0", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_alpha_curves(tr: TableReport, groups: list, path: Path) -> Path:
    """alpha0 sensitivity: the metric against one alpha0 for every site, a line per group (model / width), its
    baseline (e.g. RMSNorm) dashed in the same colour, each group's best circled; diverged points as x at the top."""
    metric = tr.table.metrics[0]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, g in enumerate(groups):
        colour = f"C{i}"
        alphas = sorted(a for a, _ in g.points)
        values = [g.value((a, a), metric.name) for a in alphas]
        ax.plot([a for a, v in zip(alphas, values) if v is not None], [v for v in values if v is not None], "o-",
                color=colour, label=f"{tr.table.grid.label} {g.label}")
        failed = [a for a, v in zip(alphas, values) if v is None]
        if failed:
            ax.plot(failed, [max(v for v in values if v is not None)] * len(failed), "x", color=colour, ms=9)
        best = g.best(metric)
        if best is not None:
            ax.plot(best[0], g.value(best, metric.name), "o", mfc="none", mec=colour, ms=16, mew=2)
        base = mean_value(g.baseline, metric.name)[0]
        if base is not None:
            ax.axhline(base, ls="--", color=colour, lw=1,
                       label=f"{tr.table.grid.baseline.get('norm.name', 'baseline')}, {tr.table.grid.label} {g.label}")
    ax.set_xscale("log", base=2)
    ticks = sorted({a for g in groups for a, _ in g.points})
    ax.set_xticks(ticks, [f"{a:g}" for a in ticks])
    ax.set(xlabel="alpha0 (every site)", ylabel=metric.name, title=f"{tr.table.id}: {metric.name} over alpha0 "
           "(circled: best per group)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
