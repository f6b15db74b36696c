"""Every table by id (the paper's, then the mini-suite's), and the paper's values of the cell a run belongs to."""
from __future__ import annotations

from typing import Mapping

from dyt.paper.match import matches
from dyt.paper.mini import MINI_TABLES
from dyt.paper.schema import Metric, Table, Value
from dyt.paper.tables import PAPER_TABLES

TABLES: dict[str, Table] = {t.id: t for t in (*PAPER_TABLES, *MINI_TABLES)}
NORM = "norm.name"


def paper_by_norm(config: Mapping) -> dict[Metric, dict[str, Value]]:
    """The paper's values, per metric and norm, of the cells of the run's own table (its config's `table`) that
    its resolved config matches in everything but the norm: what a sweep over norms shows beside its runs.
    A cell another table re-uses (T10's LayerNorm ViT-B is T1's) names that table in its match, so it counts there."""
    table = TABLES.get(config.get("table")) if isinstance(config.get("table"), str) else None
    found: dict[Metric, dict[str, Value]] = {}
    for row, _, cell in table.cells() if table else ():
        if NORM in cell.match and matches(config, {k: v for k, v in cell.match.items() if k != NORM}):
            for metric in table.metrics_of(row):
                if metric.name in cell.paper:
                    found.setdefault(metric, {})[cell.match[NORM]] = cell.paper[metric.name]
    return found
