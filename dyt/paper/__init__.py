"""The paper as data (its tables, cells and values; the CPU mini-suite) and the report that matches our runs to it.

    from dyt.paper import TABLES
    TABLES["table1"].cell("ViT-B", "dyt").paper     # {'val/top1': 82.5}

`python scripts/report.py <run dirs>` renders the report (dyt/paper/report.py).
"""
from __future__ import annotations

from dyt.paper.mini import MINI_TABLES
from dyt.paper.schema import Cell, Metric, Row, Table, Value
from dyt.paper.tables import PAPER_TABLES

TABLES: dict[str, Table] = {t.id: t for t in (*PAPER_TABLES, *MINI_TABLES)}


def compare_reference() -> dict[tuple[str, str], tuple[str, dict[str, Value]]]:
    """(table, model name) -> (metric, {norm: paper value}): what scripts/compare.py prints beside a run, taken from
    the cells a table's own runs fill (a cell that re-uses another table's run is listed under that table)."""
    ref: dict[tuple[str, str], tuple[str, dict[str, Value]]] = {}
    for table in TABLES.values():
        for row, _, cell in table.cells():
            m, metric = cell.match, table.metrics_of(row)[0].name
            tables = m.get("table") if isinstance(m.get("table"), tuple) else (m.get("table"),)
            if table.id in tables and "model.name" in m and "norm.name" in m and metric in cell.paper:
                ref.setdefault((table.id, m["model.name"]), (metric, {}))[1][m["norm.name"]] = cell.paper[metric]
    return ref


__all__ = ["TABLES", "Cell", "Metric", "Row", "Table", "compare_reference"]
