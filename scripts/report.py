"""The paper's tables beside our runs: Markdown, CSV and PNGs per table, and an index README.md.

    python scripts/report.py multirun/                                  # every run under multirun/ -> docs/report/
    python scripts/report.py multirun/ runs/ --out docs/report --tables table1,table8,mini_t12
    python scripts/report.py --wandb entity/project                     # runs read through the wandb API
    python scripts/report.py multirun/ --wandb-log                      # also log the tables to wandb (job_type report)

A run is a directory with summary.json and config.yaml (eval.json / lm_eval.json beside them add FID and zero-shot
scores). Each run is matched to paper cells by its resolved config; seeds of one cell are averaged; missing cells
show the command that runs them; runs that match no cell are listed in the index. Paper values: dyt/paper/.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dyt.paper import TABLES  # noqa: E402
from dyt.paper.render import markdown  # noqa: E402
from dyt.paper.report import build_report, log_to_wandb, write_report  # noqa: E402
from dyt.paper.runs import load_run_dirs, load_wandb  # noqa: E402


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*", type=Path, help="run directories or folders holding them")
    p.add_argument("--out", type=Path, default=Path("docs/report"), help="output folder (default docs/report)")
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
            why = (str(e).strip().splitlines() or [type(e).__name__])[0]
            return fail(f"could not read wandb project {args.wandb}: {why}")
    if not runs:
        where = ", ".join([*map(str, args.paths), *([f"wandb {args.wandb}"] if args.wandb else [])])
        return fail(f"no run (summary.json + config.yaml) found in {where}")

    report = build_report(runs, table_ids)
    for tr in report.tables:
        if tr.runs:
            print(markdown(tr) + "\n")
    written = write_report(report, args.out, plots=not args.no_plots)
    print(f"{len(runs)} runs, {len(report.unmatched)} unmatched; wrote {args.out / 'README.md'} and "
          f"{sum(map(len, written.values()))} table files")
    if args.wandb_log:
        try:
            where = log_to_wandb(report, written, args.out, args.wandb, args.wandb_mode)
        except Exception as e:  # no login for online mode, a wrong entity/project (no common wandb error base)
            why = (str(e).strip().splitlines() or [type(e).__name__])[0]
            return fail(f"could not log the report to wandb ({args.wandb_mode}): {why}; run `wandb login` or use "
                        "--wandb-mode offline")
        print(f"wandb: logged the report in {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
