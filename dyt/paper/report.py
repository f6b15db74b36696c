"""The report: our runs matched to the paper's cells, beside the paper's values, per table.

    runs = load_run_dirs([Path("multirun")])          # dyt.paper.runs; or load_wandb("entity/project")
    report = build_report(runs, ["table1", "mini_t12"])
    write_report(report, Path("docs/report"))         # dyt.paper.output: <table>.md / .csv / .png + README.md

A run belongs to every cell whose `match` its resolved config satisfies (T10's LayerNorm ViT-B is T1's run); runs of
one cell (seeds) are averaged over the completed ones; a diverged or failed run is shown as `diverged @<step>`.
Runs that match no cell of any table are listed as unmatched, never dropped.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from statistics import mean
from typing import Any, Optional

from dyt.paper.catalog import TABLES
from dyt.paper.match import MISSING, get_path, matches, same_value
from dyt.paper.runs import Run
from dyt.paper.schema import ALPHA_GRID, Cell, Metric, Row, Table

COMPLETED = "completed"


def fmt(v: Optional[float]) -> str:
    """Our numbers: two decimals, four below 1 (losses, zero-shot scores)."""
    return "" if v is None else f"{v:.2f}" if abs(v) >= 1 else f"{v:.4f}"


def failures_text(runs: list[Run]) -> str:
    """How the runs that did not complete ended, as the paper marks them: `diverged @1200`."""
    return ", ".join(f"{r.status} @{r.step}" for r in sorted(runs, key=lambda r: r.step or 0) if r.status != COMPLETED)


def mean_value(runs: list[Run], metric: str) -> tuple[Optional[float], int]:
    """(mean over the completed runs that have `metric`, how many they are)."""
    vals = [v for r in runs if r.status == COMPLETED and (v := r.value(metric)) is not None]
    return (mean(vals) if vals else None), len(vals)


@dataclass
class CellResult:
    row: Row
    column: str
    cell: Cell
    runs: list[Run] = field(default_factory=list)

    def ours(self, metric: str) -> Optional[float]:
        return self.mean(metric)[0]

    def mean(self, metric: str) -> tuple[Optional[float], int]:
        """(our number, how many completed runs it is of): the mean of `metric`, or the cell's own aggregate."""
        if self.cell.aggregate is not None:
            return self.cell.aggregate(self.runs), sum(r.status == COMPLETED for r in self.runs)
        return mean_value(self.runs, metric)


@dataclass
class GridGroup:
    """One model / width of an alpha0 grid: our runs by (attention, other) alpha0, and the paper's best."""
    label: str
    key: Any  # the group_by value
    cell: Optional[Cell]  # the paper's row (None: a group only our runs have)
    points: dict[tuple, list[Run]] = field(default_factory=dict)
    baseline: list[Run] = field(default_factory=list)  # e.g. the RMSNorm runs of this width

    def value(self, point: tuple, metric: str) -> Optional[float]:
        return mean_value(self.points[point], metric)[0]

    def best(self, metric: Metric) -> Optional[tuple]:
        scored = [(v, p) for p in self.points if (v := self.value(p, metric.name)) is not None]
        if not scored:
            return None
        pick = max if metric.higher_better else min
        return pick(scored, key=lambda vp: vp[0])[1]


@dataclass
class TableReport:
    table: Table
    cells: list[CellResult] = field(default_factory=list)  # cells / speed tables
    groups: list[GridGroup] = field(default_factory=list)  # alpha0 grids

    @property
    def runs(self) -> list[Run]:
        seen = {id(r): r for c in self.cells for r in c.runs}
        seen.update({id(r): r for g in self.groups for rs in [*g.points.values(), g.baseline] for r in rs})
        return list(seen.values())

    def result(self, row: str, column: str) -> CellResult:
        return next(c for c in self.cells if c.row.label == row and c.column == column)

    def group(self, label: str) -> GridGroup:
        return next(g for g in self.groups if g.label == label)


def shown_metrics(tr: TableReport, metric: Metric) -> tuple[str, ...]:
    """The metric, and its EMA twin when one of our runs recorded it."""
    return tuple(k for k in metric.names if k == metric.name or any(r.value(k) is not None for r in tr.runs))


@dataclass
class Report:
    tables: list[TableReport]
    runs: list[Run]
    unmatched: list[Run]  # runs that match no cell of any table


def _config_value(run: Run, path: Optional[str]) -> Any:
    return None if path is None or (v := get_path(run.config, path)) is MISSING else v


def _grid_report(table: Table, runs: list[Run]) -> TableReport:
    """Groups by model / width, and by depth where a width has several (Table 12 sweeps depth; the paper reads the
    best alpha0 per depth)."""
    grid = table.grid
    paper = [(r.label, r.cells["best"].match[grid.group_by], r.cells["best"]) for r in table.rows]
    found: dict[tuple, GridGroup] = {}

    def group_of(run: Run) -> GridGroup:
        key, split = _config_value(run, grid.group_by), _config_value(run, grid.split_by)
        if (key, split) not in found:  # a model / width the paper has no row for gets its own
            label, cell = next(((lb, c) for lb, k, c in paper if same_value(key, k)), (str(key), None))
            found[key, split] = GridGroup(label, key, cell)
        return found[key, split]

    for run in runs:
        if matches(run.config, grid.match):
            group_of(run).points.setdefault(tuple(_config_value(run, a) for a in grid.axes), []).append(run)
        elif matches(run.config, grid.baseline):
            group_of(run).baseline.append(run)
    for (key, split), g in found.items():
        if split is not None and sum(same_value(key, k) for k, _ in found) > 1:
            g.label += f", {grid.split_by.rsplit('.', 1)[-1]} {split}"
    groups = list(found.values()) + [GridGroup(lb, k, c) for lb, k, c in paper
                                     if not any(same_value(k, g.key) for g in found.values())]
    order = {k: i for i, (_, k, _) in enumerate(paper)}
    numeric = all(isinstance(g.key, (int, float)) for g in groups)  # widths: in order, the paper's and ours
    groups.sort(key=lambda g: (g.key if numeric else order.get(g.key, len(order)), g.label))
    return TableReport(table, groups=groups)


def table_report(table: Table, runs: list[Run]) -> TableReport:
    if table.kind == ALPHA_GRID:
        return _grid_report(table, runs)
    return TableReport(table, cells=[CellResult(row, col, cell, [r for r in runs if matches(r.fields, cell.match)])
                                     for row, col, cell in table.cells()])


def run_matches_any(run: Run) -> bool:
    for table in TABLES.values():
        if table.kind == ALPHA_GRID and (matches(run.config, table.grid.match) or
                                         matches(run.config, table.grid.baseline)):
            return True
        if any(matches(run.fields, cell.match) for _, _, cell in table.cells()):
            return True
    return False


def build_report(runs: list[Run], table_ids: Optional[list[str]] = None) -> Report:
    """Every table of `table_ids` (all by default: the paper's, then the mini-suite's) against `runs`."""
    tables = [TABLES[t] for t in (table_ids or TABLES)]
    return Report([table_report(t, runs) for t in tables], runs, [r for r in runs if not run_matches_any(r)])
