"""The report written out: a folder of per-table files with an index, and (optionally) one wandb run holding them."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from dyt.paper.plots import plot_table
from dyt.paper.render import csv_rows, index, markdown, write_csv
from dyt.paper.report import Report


def write_report(report: Report, out: Path, plots: bool = True) -> dict[str, list[Path]]:
    """<out>/<table>.md, .csv and (with `plots`) .png and _curves.png, and <out>/README.md linking them.
    Returns the files written per table id."""
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[Path]] = {}
    for tr in report.tables:
        tid = tr.table.id
        files = [out / f"{tid}.md", out / f"{tid}.csv"]
        files[0].write_text(markdown(tr) + "\n")
        write_csv(tr, files[1])
        if plots:
            files += plot_table(tr, out)
        written[tid] = files
    (out / "README.md").write_text(index(report, written, out) + "\n")
    return written


def log_to_wandb(report: Report, written: dict[str, list[Path]], out: Path, project: Optional[str],
                 mode: str = "online") -> str:
    """One wandb run (job_type report) of `entity/project` holding every table as a wandb.Table (the CSV's rows:
    paper and ours side by side) and the PNGs as images. Returns the run's directory."""
    import wandb  # optional and slow to import: only for --wandb-log

    entity, _, name = (project or "dyt").rpartition("/")
    # the mode explicitly: wandb's process-wide settings may hold another one from an earlier run in this process
    run = wandb.init(project=name, entity=entity or None, job_type="report", name="paper-report", dir=str(out),
                     mode=mode, config={"tables": [tr.table.id for tr in report.tables], "runs": len(report.runs)})
    try:
        for tr in report.tables:
            rows = csv_rows(tr)
            columns = list(rows[0]) if rows else ["empty"]
            data = [[None if r[c] == "" else r[c] for c in columns] for r in rows]
            run.log({f"tables/{tr.table.id}": wandb.Table(columns=columns, data=data, allow_mixed_types=True)})
            for png in (f for f in written.get(tr.table.id, []) if f.suffix == ".png"):
                run.log({f"plots/{png.stem}": wandb.Image(str(png))})
        return str(Path(run.dir).parent)
    finally:
        run.finish()
