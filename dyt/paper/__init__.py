"""The paper as data (its tables, cells and values; the CPU mini-suite) and the report that matches our runs to it.

    from dyt.paper import TABLES
    TABLES["table1"].cell("ViT-B", "dyt").paper     # {'val/top1': 82.5}

Floors, each importing only those below it: schema, match -> tables, mini -> catalog (TABLES, paper_by_norm);
runs (our run records) -> report (runs matched to cells) -> render (Markdown, CSV), plots (PNGs), sweep (norms
side by side) -> output (files, wandb). `python scripts/report.py <run dirs>` renders the report.
"""
from __future__ import annotations

from dyt.paper.catalog import TABLES, paper_by_norm
from dyt.paper.schema import Cell, Metric, Row, Table

__all__ = ["TABLES", "Cell", "Metric", "Row", "Table", "paper_by_norm"]
