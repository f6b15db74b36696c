"""Text renderings of a TableReport: Markdown (for people) and CSV (for programs; one line per cell and metric), and
the index README.md linking every table's files."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

from dyt.paper.report import (COMPLETED, CellResult, GridGroup, Report, TableReport, failures_text, fmt, mean_value,
                              shown_metrics)
from dyt.paper.schema import BENCHMARK, NOT_IMPLEMENTED, Metric, Table, Value

CELL_FIELDS = ["table", "row", "column", "metric", "paper", "paper_delta", "ours", "ours_delta", "n", "status", "note"]
GRID_FIELDS = ["table", "group", "alpha_attn", "alpha_ffn", "metric", "ours", "n", "status", "best", "paper_best",
               "baseline", "note"]


def _decimals(v: float) -> int:
    text = repr(float(v))
    return len(text.split(".")[1]) if "." in text and "e" not in text else 2


def paper_digits(table: Table, metric: str) -> int:
    """The digits the paper prints for a metric of a table (1.60 is stored as 1.6: its neighbours say 2)."""
    return max((_decimals(v) for _, _, c in table.cells() if isinstance(v := c.paper.get(metric), (int, float))),
               default=1)


def paper_text(v: Value, digits: int) -> str:
    return "" if v is None else f"{v:.{digits}f}" if isinstance(v, (int, float)) else str(v)


def paper_delta(a: Value, b: Value, digits: int) -> Optional[float]:
    """a - b for two paper numbers, rounded to the digits the paper gives."""
    if not all(isinstance(v, (int, float)) for v in (a, b)):
        return None
    return round(a - b, digits)


def _signed(d: Optional[float], digits: int) -> str:
    return "" if d is None else f"{d:+.{digits}f}"


def _reference(tr: TableReport, res: CellResult) -> Optional[CellResult]:
    ref = tr.table.reference
    if ref is None or res.column == ref or ref not in res.row.cells:
        return None
    return tr.result(res.row.label, ref)


def ours_text(res: CellResult, key: str) -> str:
    """Our mean over completed seeds (with how the others ended), or what to run when there is no run."""
    if not res.runs:
        if res.cell.status == NOT_IMPLEMENTED:
            return "not implemented"
        return f"`{res.cell.command}`" if res.cell.status == BENCHMARK else f"missing: `{res.cell.command}`"
    v, fails = res.ours(key), failures_text(res.runs)
    if v is None:
        return fails or "n/a"
    return fmt(v) + (f" ({fails})" if fails else "")


def origins(res: CellResult) -> str:
    """Where a cell's fine-tuning runs started: each one's pre-training run (its step) and the norm it was
    fine-tuned with (finetune_norm), each origin once with its count (Table 6's fine-tunings share one pre-training);
    empty for runs trained from scratch."""
    out: dict[str, int] = {}
    for r in res.runs:
        src = r.summary.get("init_from")
        if isinstance(src, dict):
            norm = (r.config.get("norm") or {}).get("name")
            how = r.config.get("finetune_norm")
            key = (f"from {Path(str(src.get('run_dir'))).name} @{src.get('step')}, fine-tuned with {norm}"
                   + (f" ({how})" if how else ""))
            out[key] = out.get(key, 0) + 1
    return "; ".join(k if n == 1 else f"{n} x {k}" for k, n in out.items())


def saturation(res: CellResult) -> str:
    """The mean over the cell's runs of their mean saturation at the end (summary.json `train/saturation`: the
    share of |alpha x| > 2 over norm sites, dyt.analysis), beside the run count; empty where no run logged it."""
    sats = [r.summary["train/saturation"] for r in res.runs if isinstance(r.summary.get("train/saturation"), float)]
    return f"sat {sum(sats) / len(sats):.2f}" if sats else ""


def _status(res: CellResult) -> str:
    if not res.runs:
        return {NOT_IMPLEMENTED: "not_implemented", BENCHMARK: "benchmark"}.get(res.cell.status, "missing")
    return ", ".join(s for s in ([COMPLETED] if any(r.status == COMPLETED for r in res.runs) else [])
                     + ([failures_text(res.runs)] if failures_text(res.runs) else []))


def _header(tr: TableReport) -> list[str]:
    t = tr.table
    lines = [f"## {t.id}: {t.title}", ""]
    metrics = {m.name: m for row in t.rows for m in t.metrics_of(row)} or {m.name: m for m in t.metrics}
    for m in metrics.values():
        keys = " and EMA ".join(f"`{k}`" for k in shown_metrics(tr, m))
        lines.append(f"- {m.label}: ours {keys}, {'higher' if m.higher_better else 'lower'} is better.")
    if t.reference:
        lines.append(f"- Δ: each column minus {t.columns[t.reference]}, within a row (paper and ours).")
    if t.paper_table:
        lines.append(f"- Mini version of the paper's {t.paper_table} (`--tables {t.paper_table}` renders it); paper "
                     "values are that table's. "
                     f"The paper's claim: {t.claim}")
    if t.notes:
        lines.append(f"- {t.notes}")
    return lines + [""]


def _cells_markdown(tr: TableReport) -> list[str]:
    t = tr.table
    several = len({m.name for row in t.rows for m in t.metrics_of(row)}) > 1
    ema = any(len(shown_metrics(tr, m)) > 1 for row in t.rows for m in t.metrics_of(row))
    head = ["row", "column"] + (["metric"] if several else []) + ["paper", "Δ paper", "ours", "Δ ours"]
    head += ["ours EMA", "Δ ours EMA"] if ema else []
    lines = ["| " + " | ".join(head + ["runs"]) + " |", "|---" * (len(head) + 1) + "|"]
    for res in tr.cells:
        ref = _reference(tr, res)
        label = res.row.label + (f" (paper: {res.row.paper_ref})" if res.row.paper_ref else "")
        for m in t.metrics_of(res.row):
            p, pref = res.cell.paper.get(m.name), ref.cell.paper.get(m.name) if ref else None
            line = [label, t.columns[res.column]] + ([m.label] if several else [])
            digits = paper_digits(t, m.name)
            line += [paper_text(p, digits), _signed(paper_delta(p, pref, digits), digits)]
            for i, key in enumerate((m.name, m.ema) if ema else (m.name,)):
                if key is None:  # this row's metric has no EMA twin (T13's wav2vec loss beside top-1)
                    line += ["", ""]
                    continue
                ours, base = res.ours(key), ref.ours(key) if ref else None
                shown = i == 0 or (res.runs and key in shown_metrics(tr, m))  # what to run: said once
                line += [ours_text(res, key) if shown else "",
                         _signed(ours - base if ours is not None and base is not None else None,
                                 2 if ours is not None and abs(ours) >= 1 else 4)]  # as fmt() shows the values
            notes = "; ".join(n for n in (origins(res), saturation(res)) if n)
            runs = (str(len(res.runs)) + (f" ({notes})" if notes else "")) if res.runs else ""
            lines.append("| " + " | ".join(line + [runs]) + " |")
    missing: dict[str, list[str]] = {}  # reason -> rows, in reading order
    for res in (r for r in tr.cells if r.cell.status == NOT_IMPLEMENTED):
        rows = missing.setdefault(res.cell.reason, [])
        rows += [] if res.row.label in rows else [res.row.label]
    if missing:
        lines += ["", "Not implemented (the paper's numbers are listed for reference):"]
        lines += [f"- {reason}: {', '.join(rows)}" for reason, rows in missing.items()]
    return lines


def _alpha(point: Optional[tuple]) -> str:
    return "" if point is None else " / ".join("default" if a is None else f"{a:g}" for a in point)


def _baseline_name(tr: TableReport) -> str:
    return str(tr.table.grid.baseline.get("norm.name", "baseline"))


def _grid_markdown(tr: TableReport) -> list[str]:
    t, metric = tr.table, tr.table.metrics[0]
    base = [f"{_baseline_name(tr)} {metric.name}"] if t.grid.baseline else []
    head = [t.grid.label, "paper best alpha0 (attention / other)", "ours best alpha0", f"ours best {metric.name}",
            *base, "grid points (runs)", "diverged points"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for g in tr.groups:
        paper = _alpha(g.cell.best_alpha) if g.cell else "- (not a width of the paper's)"
        baseline = [ours_or_failures(g.baseline, metric.name)] if t.grid.baseline else []
        if not g.points:
            cmd = g.cell.command if g.cell else t.grid.command
            lines.append("| " + " | ".join([g.label, paper, f"missing: `{cmd}`", "", *baseline, "", ""]) + " |")
            continue
        best = g.best(metric)
        runs = sum(len(rs) for rs in g.points.values())
        diverged = sum(1 for p in g.points if g.value(p, metric.name) is None)
        cells = [g.label, paper, _alpha(best), fmt(g.value(best, metric.name)) if best else "", *baseline,
                 f"{len(g.points)} ({runs})", str(diverged)]
        lines.append("| " + " | ".join(cells) + " |")
    if not tr.groups:
        lines.append("| " + " | ".join(["(no runs)", "", f"missing: `{t.grid.command}`"] + [""] * (len(head) - 3))
                     + " |")
    for g in (g for g in tr.groups if g.points):
        lines += ["", *_grid_points(g, metric, t.grid.axes)]
    return lines


def ours_or_failures(runs: list, metric: str) -> str:
    """The mean of the completed runs, else how they ended (empty without runs)."""
    v = mean_value(runs, metric)[0]
    return fmt(v) if v is not None else failures_text(runs)


def _grid_points(g: GridGroup, metric: Metric, axes: tuple[str, str]) -> list[str]:
    """The grid of one group: mean metric per (attention, other) alpha0, the best in bold; a sweep that tied the
    two alpha0 (every point on the diagonal) as one row, not a mostly empty square."""
    rows = sorted({p[0] for p in g.points}, key=_sort_key)
    cols = sorted({p[1] for p in g.points}, key=_sort_key)
    best = g.best(metric)
    if len(rows) > 1 and all(a == c for a, c in g.points):
        def text(p):
            runs = g.points[p]
            v = g.value(p, metric.name) if runs else None
            shown = fmt(v) if v is not None else failures_text(runs)
            return f"**{shown}**" if p == best else shown
        points = sorted(g.points, key=lambda p: _sort_key(p[0]))
        return [f"{g.label}: {metric.name} by alpha0, {axes[0]} = {axes[1]} (tied in this sweep), mean over seeds:",
                "", "| alpha0 | " + " | ".join(_alpha((p[0],)) for p in points) + " |",
                "|---" * (len(points) + 1) + "|", f"| {metric.name} | " + " | ".join(map(text, points)) + " |"]
    lines = [f"{g.label}: {metric.name} over {axes[0]} (rows) x {axes[1]} (columns), mean over seeds:", "",
             "| " + " | ".join([f"{axes[0]} \\ {axes[1]}", *(_alpha((c,)) for c in cols)]) + " |",
             "|---" * (len(cols) + 1) + "|"]
    for a in rows:
        cells = []
        for c in cols:
            runs = g.points.get((a, c), [])
            v = g.value((a, c), metric.name) if runs else None
            text = fmt(v) if v is not None else failures_text(runs)
            cells.append(f"**{text}**" if (a, c) == best else text)
        lines.append("| " + " | ".join([_alpha((a,)), *cells]) + " |")
    return lines


def _sort_key(v):
    return (v is not None, v if isinstance(v, (int, float)) else 0)


def markdown(tr: TableReport) -> str:
    body = _grid_markdown(tr) if tr.table.grid else _cells_markdown(tr)
    return "\n".join(_header(tr) + body)


# CSV -----------------------------------------------------------------------------------------------------

def csv_rows(tr: TableReport) -> list[dict]:
    """One dict per (row, column, metric) of a cells table, or per (group, grid point) of an alpha0 grid."""
    return _grid_rows(tr) if tr.table.grid else _cell_rows(tr)


def _cell_rows(tr: TableReport) -> list[dict]:
    t, out = tr.table, []
    for res in tr.cells:
        ref = _reference(tr, res)
        note = res.cell.reason if res.cell.status == NOT_IMPLEMENTED else origins(res) if res.runs else res.cell.command
        for m in t.metrics_of(res.row):
            p, pref = res.cell.paper.get(m.name), ref.cell.paper.get(m.name) if ref else None
            p_delta = paper_delta(p, pref, paper_digits(t, m.name))
            for key in shown_metrics(tr, m):
                ours, n = res.mean(key)
                base = ref.ours(key) if ref else None
                delta = ours - base if ours is not None and base is not None else None
                out.append({"table": t.id, "row": res.row.label, "column": res.column, "metric": key,
                            "paper": _blank(p), "paper_delta": _blank(p_delta), "ours": _blank(ours),
                            "ours_delta": _blank(delta), "n": n, "status": _status(res), "note": note})
    return out


def _grid_rows(tr: TableReport) -> list[dict]:
    t, metric, out = tr.table, tr.table.metrics[0], []
    for g in tr.groups:
        paper = _alpha(g.cell.best_alpha) if g.cell else "- (not a width of the paper's)"
        best = g.best(metric)
        base = {"table": t.id, "group": g.label, "metric": metric.name, "paper_best": paper,
                "baseline": _blank(mean_value(g.baseline, metric.name)[0])}
        if not g.points:
            out.append({**base, "alpha_attn": "", "alpha_ffn": "", "ours": "", "n": 0, "status": "missing",
                        "best": "", "note": g.cell.command if g.cell else t.grid.command})
        for point, runs in sorted(g.points.items(), key=lambda pr: [_sort_key(a) for a in pr[0]]):
            v, n = mean_value(runs, metric.name)
            out.append({**base, "alpha_attn": _blank(point[0]), "alpha_ffn": _blank(point[1]), "ours": _blank(v),
                        "n": n, "status": COMPLETED if v is not None else failures_text(runs),
                        "best": point == best, "note": ""})
    return [{k: r[k] for k in GRID_FIELDS} for r in out]


def _blank(v):
    return "" if v is None else v


def write_csv(tr: TableReport, path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=GRID_FIELDS if tr.table.grid else CELL_FIELDS)
        w.writeheader()
        w.writerows(csv_rows(tr))


# Index ---------------------------------------------------------------------------------------------------

def index(report: Report, written: dict[str, list[Path]], out: Path) -> str:
    lines = ["# The paper's tables beside our runs", "",
             f"{len(report.runs)} runs read; {len(report.runs) - len(report.unmatched)} matched a paper cell, "
             f"{len(report.unmatched)} matched none. Regenerate: `python scripts/report.py <run dirs> --out {out}`.",
             "", "| table | title | runs | cells run | missing | not implemented | files |", "|---" * 7 + "|"]
    for tr in report.tables:
        t = tr.table
        links = " ".join(f"[{f.suffix.lstrip('.') if not f.stem.endswith('_curves') else 'curves'}]({f.name})"
                         for f in written.get(t.id, []))
        if t.grid:
            done = sum(1 for g in tr.groups if g.points)
            cells, missing, ni = f"{done}/{len(tr.groups)} groups", sum(1 for g in tr.groups if not g.points), 0
        else:
            runnable = [c for c in tr.cells if c.cell.status not in (NOT_IMPLEMENTED, BENCHMARK)]
            done = sum(1 for c in runnable if c.runs)
            cells, missing = f"{done}/{len(runnable)}", len(runnable) - done
            ni = sum(1 for c in tr.cells if c.cell.status == NOT_IMPLEMENTED)
        lines.append(f"| [{t.id}]({t.id}.md) | {t.title} | {len(tr.runs)} | {cells} | {missing} | {ni} | {links} |")
    if report.unmatched:
        lines += ["", "## Unmatched runs", "", "Runs whose config matches no cell of any table (their `table`, "
                  "model, norm are shown):", "", "| run | table | model | norm | status | source |", "|---" * 6 + "|"]
        for r in report.unmatched:
            c = r.config
            lines.append(f"| {r.name} | {c.get('table')} | {c.get('model', {}).get('name')} | "
                         f"{c.get('norm', {}).get('name')} | {r.status} | {r.source} |")
    return "\n".join(lines)
