"""Our runs beside the paper's numbers, in two views of the same runs.

The paper's tables (default): Markdown, CSV and PNGs per table, and an index README.md, under --out.
    python scripts/report.py multirun/                                  # every run under multirun/ -> docs/report/
    python scripts/report.py multirun/ runs/ --out docs/report --tables table1,table8,mini_t12
    python scripts/report.py --wandb entity/project                     # runs read through the wandb API
    python scripts/report.py multirun/ --wandb-log                      # also log the tables to wandb (job_type report)

A sweep side by side (--sweep): the runs that differ only by their norm on one row per metric, a column per norm,
the paper's values of that cell beside them; with --out, <out>.md and a plot of the curves, <out>.png.
    python scripts/report.py --sweep multirun/sweep                     # print the table
    python scripts/report.py --sweep multirun/sweep --out docs/my_sweep # and write docs/my_sweep.md + .png

A run is a directory with summary.json and config.yaml (eval.json / lm_eval.json beside them add FID and zero-shot
scores). Tables: each run is matched to paper cells by its resolved config; seeds of one cell are averaged; missing
cells show the command that runs them; runs that match no cell are listed in the index. Sweep: the best of the
summary metric and, for runs that keep an EMA, of the EMA's; a DiT run's FIDs. Paper values: dyt/paper/.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dyt.files import os_error  # noqa: E402
from dyt.paper import TABLES  # noqa: E402
from dyt.paper.output import log_to_wandb, write_report  # noqa: E402
from dyt.paper.render import markdown  # noqa: E402
from dyt.paper.report import build_report  # noqa: E402
from dyt.paper.runs import Run, load_run_dirs, load_wandb  # noqa: E402
from dyt.paper.sweep import plot_sweep, sweep_markdown  # noqa: E402

DEFAULT_OUT = Path("docs/report")


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def tables_report(args, runs: list[Run], table_ids) -> int:
    out = args.out or DEFAULT_OUT
    report = build_report(runs, table_ids)
    if table_ids is None:  # every table: only those our runs fill (not a file of "missing" per paper table)
        report.tables = [tr for tr in report.tables if tr.runs]
        if not report.tables:
            print(f"none of the {len(runs)} runs matches a cell of the paper's tables: showing them side by side "
                  "(--sweep)" + ("; --wandb-log logs paper tables only, so nothing is logged" if args.wandb_log else ""))
            return sweep_report(args, runs)
    for tr in report.tables:
        if tr.runs:
            print(markdown(tr) + "\n")
    written = write_report(report, out, plots=not args.no_plots)
    print(f"{len(runs)} runs, {len(report.unmatched)} unmatched; wrote {out / 'README.md'} and "
          f"{sum(map(len, written.values()))} table files")
    if args.wandb_log:
        try:
            where = log_to_wandb(report, written, out, args.wandb, args.wandb_mode)
        except Exception as e:  # no login for online mode, a wrong entity/project (no common wandb error base)
            return fail(f"could not log the report to wandb ({args.wandb_mode}): {first_line(e)}; run `wandb login` "
                        "or use --wandb-mode offline")
        print(f"wandb: logged the report in {where}")
    return 0


def sweep_report(args, runs: list[Run]) -> int:
    md = sweep_markdown(runs)
    print(md)
    if args.out:
        md_path, png = args.out.with_suffix(".md"), args.out.with_suffix(".png")
        md_path.parent.mkdir(parents=True, exist_ok=True)
        md_path.write_text(md + "\n")
        if args.no_plots:
            print(f"wrote {md_path}")
        else:
            plot_sweep(runs, png, source=", ".join(p.name for p in args.paths))
            print(f"wrote {md_path} and {png}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*", type=Path, help="run directories or folders holding them")
    p.add_argument("--sweep", action="store_true",
                   help="one table of the runs, norms side by side (instead of the paper's tables)")
    p.add_argument("--out", type=Path, default=None,
                   help=f"tables: output folder (default {DEFAULT_OUT}); --sweep: writes <out>.md and <out>.png")
    p.add_argument("--wandb", metavar="ENTITY/PROJECT", default=None, help="also read the runs of a wandb project")
    p.add_argument("--wandb-log", action="store_true",
                   help="log the tables and PNGs as one wandb run (job_type report) of --wandb's project (default dyt)")
    p.add_argument("--wandb-mode", choices=("online", "offline"), default=os.environ.get("WANDB_MODE") or "online",
                   help="for --wandb-log (default $WANDB_MODE, else online); offline writes a run folder to sync later")
    p.add_argument("--tables", default=None, help=f"comma-separated table ids (default all: {', '.join(TABLES)})")
    p.add_argument("--no-plots", action="store_true", help="Markdown and CSV only")
    args = p.parse_args(argv)

    if not args.paths and not args.wandb:
        return fail("give run directories and/or --wandb entity/project")
    if args.sweep and (args.tables or args.wandb_log):
        return fail(f"--sweep shows the runs side by side: {'--tables' if args.tables else '--wandb-log'} is for "
                    "the paper's tables (drop --sweep)")
    for path in args.paths:
        if not path.exists():
            return fail(f"no such path: {path}")
    table_ids = [t.strip() for t in args.tables.split(",") if t.strip()] if args.tables else None
    unknown = [t for t in table_ids or [] if t not in TABLES]
    if unknown:
        return fail(f"unknown table {', '.join(unknown)}; the tables are: {', '.join(TABLES)}")

    runs = load_run_dirs(args.paths)
    if args.wandb:
        try:
            runs += load_wandb(args.wandb)
        except Exception as e:  # no login, no network, a wrong entity/project: wandb's errors have no common base
            return fail(f"could not read wandb project {args.wandb}: {first_line(e)}")
    if not runs:
        where = ", ".join([*map(str, args.paths), *([f"wandb {args.wandb}"] if args.wandb else [])])
        return fail(f"no run (summary.json + config.yaml) found in {where}")
    try:
        return sweep_report(args, runs) if args.sweep else tables_report(args, runs, table_ids)
    except OSError as e:  # --out somewhere that cannot be written
        return fail(f"could not write {e.filename or args.out}: {os_error(e)}")


if __name__ == "__main__":
    sys.exit(main())
