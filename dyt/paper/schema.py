"""The shape of the paper-as-data: a table has rows, a row has one cell per column, a cell holds the paper's value
and how to run and recognise our run of it. Data lives in tables.py / mini.py; the report in report.py."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Union

Value = Union[float, str, None]  # a number, "diverged" (as the paper marks it), or None (not reported)

RUNNABLE = "runnable"  # configs/experiment has what runs it
NOT_IMPLEMENTED = "not_implemented"  # listed with its reason, never hidden
BENCHMARK = "benchmark"  # a speed cell: a benchmark script measures it, not a train run
CELLS, ALPHA_GRID, SPEED = "cells", "alpha_grid", "speed"  # kinds of table


@dataclass(frozen=True)
class Metric:
    """A metric as our runs record it: summary.json `best/<name>` (else `<name>`), or eval.json `<name>`."""
    name: str
    higher_better: bool
    ema: Optional[str] = None  # the EMA twin: the paper's vision recipes report the better of the two, we show both
    label: str = ""  # how the paper names it

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, self.ema) if self.ema else (self.name,)


@dataclass(frozen=True)
class Cell:
    """One (row, column) of a paper table."""
    paper: Mapping[str, Value] = field(default_factory=dict)  # metric name -> the paper's value
    overrides: tuple[str, ...] = ()  # `python train.py <overrides>` runs it (composed by the tests)
    match: Mapping[str, Any] = field(default_factory=dict)  # resolved-config path -> value (a tuple: any of)
    status: str = RUNNABLE
    reason: str = ""  # why it is not implemented
    sweep: bool = False  # a -m grid (alpha0 tables): the command gets -m
    command_text: str = ""  # the command when it is not train.py (benchmarks)
    best_alpha: Optional[tuple[float, float]] = None  # alpha grids: the paper's best (attention, other)
    launcher: str = ""  # configs/launcher/<name>: the paper's job size for this cell ("": one process)
    # A two-stage cell (Table 2: pre-train, then fine-tune): the pre-training run's cell. This cell's run names it
    # (trainer.init_from) and is recognised by the `init_from.*` of its match, what the run recorded of its source
    # (summary.json; dyt.init_from.describe).
    pretrain: Optional["Cell"] = None
    # runs -> the cell's number, when it is not the mean of its runs' metric (Table 6: an average over tasks of each
    # task's best setting, dyt.paper.suite.SuiteAverage)
    aggregate: Optional[Callable[[list], Optional[float]]] = None

    @property
    def command(self) -> str:
        if self.command_text or self.status == NOT_IMPLEMENTED:
            return self.command_text
        slurm = self.launcher.startswith("slurm_")  # Hydra's launcher (submitit) takes runs given with -m
        own = " ".join(["python train.py", *(["-m"] if self.sweep or slurm else []), *self.overrides,
                        *([f"launcher={self.launcher}"] if self.launcher else [])])
        if self.pretrain is None:
            return own
        return f"{self.pretrain.command}, then {own} trainer.init_from=<the first run's dir>"


@dataclass(frozen=True)
class Row:
    label: str
    cells: Mapping[str, Cell]  # column key -> cell, in the table's column order
    metrics: tuple[Metric, ...] = ()  # when the row's metric is not the table's (Derf: DiT FID, GPT-2 loss)
    paper_ref: str = ""  # a mini table's row: the paper row its paper values come from, e.g. "T1 ViT-B"


@dataclass(frozen=True)
class Grid:
    """An alpha0 grid (Tables 11, 12): runs grouped by `group_by` (model or width), points over `axes`; the best
    point of each group is the one with the best metric. Groups our runs have but the paper has not appear too."""
    group_by: str
    match: Mapping[str, Any]  # every run of the table
    command: str  # the sweep that fills a group the paper has no row for
    label: str = "group"  # what a group is, as a column header: model, width
    split_by: Optional[str] = None  # a group is also split by this (depth: the best is read per depth)
    axes: tuple[str, str] = ("model.alpha_attn", "model.alpha_ffn")
    baseline: Mapping[str, Any] = field(default_factory=dict)  # the runs each group's best is compared with


@dataclass(frozen=True)
class Table:
    id: str
    title: str
    metrics: tuple[Metric, ...]
    columns: Mapping[str, str]  # column key (a norm name, mostly) -> label, in order
    rows: tuple[Row, ...]
    reference: Optional[str] = None  # the column deltas are taken against (LayerNorm, RMSNorm, BatchNorm, tanh)
    kind: str = CELLS
    grid: Optional[Grid] = None
    paper_table: Optional[str] = None  # a mini table: the paper table it miniaturises
    claim: str = ""  # a mini table: what the paper found, in words
    notes: str = ""

    def row(self, label: str) -> Row:
        return next(r for r in self.rows if r.label == label)

    def cell(self, row: str, column: str) -> Cell:
        return self.row(row).cells[column]

    def metrics_of(self, row: Row) -> tuple[Metric, ...]:
        return row.metrics or self.metrics

    def cells(self):
        """(row, column key, cell) for every cell, in reading order."""
        for r in self.rows:
            for c in self.columns:
                if c in r.cells:
                    yield r, c, r.cells[c]


# Builders that keep the data files short -----------------------------------------------------------------

def values_of(metrics: tuple[Metric, ...], value) -> dict[str, Value]:
    """A paper value per metric: a scalar for one metric, a tuple in the metrics' order for several."""
    vals = value if isinstance(value, tuple) else (value,)
    return dict(zip((m.name for m in metrics), vals))


def run_cell(metrics: tuple[Metric, ...], value, experiment: str, match: Mapping[str, Any], norm: str,
             launcher: str = "") -> Cell:
    """A cell run by `experiment=<experiment> norm=<norm>` on `launcher`, recognised by `match` and its norm."""
    return Cell(paper=values_of(metrics, value), overrides=(f"experiment={experiment}", f"norm={norm}"),
                match={**match, "norm.name": norm}, launcher=launcher)


def run_row(label: str, metrics: tuple[Metric, ...], experiment: str, match: Mapping[str, Any],
            values: Mapping[str, Any], launcher: str = "") -> Row:
    """A row whose cells differ only by norm= (the column key): paper values by norm name."""
    return Row(label, {norm: run_cell(metrics, v, experiment, match, norm, launcher) for norm, v in values.items()},
               metrics)


def not_implemented(reason: str, metrics: tuple[Metric, ...], value: Any = None) -> Cell:
    return Cell(paper=values_of(metrics, value) if value is not None else {}, status=NOT_IMPLEMENTED, reason=reason)


def not_implemented_row(label: str, reason: str, metrics: tuple[Metric, ...], values: Mapping[str, Any]) -> Row:
    return Row(label, {col: not_implemented(reason, metrics, v) for col, v in values.items()}, metrics)
