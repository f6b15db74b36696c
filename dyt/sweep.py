"""How a run or a sweep point ends, as the command line sees it (exit codes, the sweep's closing report).

- A config error in a single run: one line, exit 2, and the directory Hydra made for it is removed when it holds
  nothing of a run. In a sweep (`-m`) the point is recorded as `failed` (its summary.json keeps the one line) and
  the sweep goes on; `SweepReport` lists the failed points at the end and exits non-zero.
- A run stopped by a signal (Ctrl-C, SIGTERM: SLURM preemption, a torchrun agent) has checkpointed; it exits
  128 + the signal number, so schedulers requeue it and a sweep stops there (re-running the command resumes).
- A diverged run is a result, not an error: exit 0, said in its line and in the sweep report.
"""
from __future__ import annotations

import shutil
import signal
import sys
import time
from pathlib import Path

from hydra.experimental.callback import Callback

from dyt.files import write_json
from dyt.rundir import RunDir, RunDirInUse, read_summary


IN_USE: list[str] = []  # this process's sweep points that another process held (SweepReport lists them)


def record_config_error(run_dir: Path, error: Exception, in_sweep: bool) -> None:
    """A sweep point that could not start: summary.json says so (a re-run retries it). A single run: its empty
    directory goes away. A directory that holds a run (or is another process's) is left as it is."""
    rd = RunDir(run_dir)
    previous = read_summary(rd.path)
    if isinstance(error, RunDirInUse):
        IN_USE.append(rd.path.name)
        return
    if previous is not None and not previous.get("config_error"):
        return
    message = str(error)
    if in_sweep:
        rd.path.mkdir(parents=True, exist_ok=True)
        write_json(rd.summary, {"status": "failed", "step": 0, "reason": message, "config_error": True})
    elif rd.path.is_dir() and not rd.is_run():
        shutil.rmtree(rd.path, ignore_errors=True)


def exit_code(summary: dict) -> int:
    """0 for completed and diverged runs; 128 + signal for an interrupted one."""
    if summary.get("status") == "interrupted":
        return 128 + signal.Signals[summary["signal"]].value
    return 0


class SweepReport(Callback):
    """At the end of a `-m` sweep: each point completed in it with its best metric (stdout), one line per point
    that failed, diverged or was held by another process (a second sweep on the same folder; stderr), exit 1 if any
    failed or was held.

    Points are found on disk (summary.json written since the sweep started), so it works with any launcher.
    """

    def on_multirun_start(self, config, **kwargs) -> None:
        self.start = time.time()

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        start = getattr(self, "start", 0.0) - 1.0  # file times have coarse resolution on some file systems
        points = []
        for rd in [RunDir(p) for p in sorted(sweep_dir.iterdir()) if p.is_dir()] if sweep_dir.is_dir() else []:
            if rd.summary.exists() and rd.summary.stat().st_mtime >= start:
                s = read_summary(rd.path)
                points.append((rd.path.name, s or {"status": "failed", "reason": f"unreadable {rd.summary.name}"}))
        failed = [(n, s) for n, s in points if s.get("status") == "failed"]
        diverged = [(n, s) for n, s in points if s.get("status") == "diverged"]
        in_use = [(n, {"status": "in use", "reason": "another process held it; re-run this sweep when it is done"})
                  for n in IN_USE]  # not trained here: the sweep is not done (two sweeps on one folder)
        failed += in_use
        completed = [(n, s) for n, s in points if s.get("status") == "completed"]
        if completed:  # the results, also where the points ran elsewhere (submitit's processes, a cluster)
            print(f"[dyt] sweep {sweep_dir}: {len(completed)} point(s) completed", flush=True)
            for name, s in completed:
                metric = s.get("metric")
                value = s.get(f"best/{metric}", s.get(metric)) if metric else None
                shown = f"best {metric}={value:.4g}" if isinstance(value, (int, float)) else f"step {s.get('step')}"
                print(f"[dyt]   completed: {name}: {shown}", flush=True)
        if not (failed or diverged):
            return
        print(f"[dyt] sweep {sweep_dir}: {len(points)} points, {len(failed) - len(in_use)} failed, "
              f"{len(diverged)} diverged" + (f", {len(in_use)} in use by another process" if in_use else ""),
              file=sys.stderr)
        for name, s in failed + diverged:
            print(f"[dyt]   {s['status']}: {name}: {s.get('reason')}", file=sys.stderr)
        if failed:
            sys.exit(1)
